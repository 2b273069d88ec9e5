"""The drills' TCP fault proxy on real sockets on 127.0.0.1: pass-through is byte-exact,
latency is measured and keeps the byte order, a reset is a ConnectionResetError, a
blackhole is a timeout that delivers what it held once healed; the control protocol
refuses what it must (no address outside 127.0.0.0/8); the hub's process exits on its
own; and the stack-side helpers (the Keepers' DB URL swap, the clock's environment,
the CPU hog's bounds) do what the drills rely on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import clock, cpuhog, links
from chaos.netfault import PASS, Fault, Hub, HubClient, NetfaultError, loopback
from infra.topology import Proc

ROOT = Path(__file__).resolve().parents[2]


# --- an echo server and a hub on a loop of its own ------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.accepted = 0

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class RunningHub:
    """A Hub serving its control socket on an event loop in a thread."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.loop = asyncio.new_event_loop()
        self.hub = Hub()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.hub.serve_control(control), self.loop).result(5)
        self.client = HubClient(control)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.hub.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def hub() -> Iterator[RunningHub]:
    short = Path(tempfile.mkdtemp(prefix="nf", dir="/tmp"))  # unix socket paths are short
    running = RunningHub(short / "c.sock")
    yield running
    running.close()
    shutil.rmtree(short, ignore_errors=True)


def connect(address: str, timeout_s: float = 2.0) -> socket.socket:
    host, port = loopback(address)
    return socket.create_connection((host, port), timeout=timeout_s)


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(min(65536, n - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def round_trip(s: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    s.sendall(payload)
    assert recv_exactly(s, len(payload)) == payload
    return time.monotonic() - started


def reset_within(s: socket.socket, seconds: float) -> bool:
    """Round trips on ``s`` until one raises ConnectionResetError (True) or ``seconds``
    pass (False); an RST may land between a send and its recv, so one is not enough."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            round_trip(s)
            time.sleep(0.05)
    except ConnectionResetError:
        return True
    return False


# --- the faults --------------------------------------------------------------------


def test_pass_through_is_byte_exact_both_ways(hub: RunningHub, echo: EchoServer) -> None:
    listen = hub.client.link("t", echo.address, "127.0.0.1:0")
    payload = os.urandom(1 << 20)
    with connect(listen, timeout_s=10) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        received = recv_exactly(s, len(payload))
        sender.join(10)
    assert received == payload
    [status] = hub.client.status()
    assert status["bytes_up"] == status["bytes_down"] == len(payload)
    assert status["fault"]["mode"] == "pass"
    assert echo.accepted == 1


def test_latency_is_added_each_way_and_keeps_the_byte_order(
    hub: RunningHub, echo: EchoServer
) -> None:
    listen = hub.client.link("t", echo.address, "127.0.0.1:0")
    with connect(listen) as s:
        baseline = min(round_trip(s) for _ in range(5))
        assert hub.client.set("t", Fault(mode="latency", latency_ms=100)) == 1
        slow = [round_trip(s) for _ in range(3)]
        # 100 ms each way is added to every round trip; the fastest of three shows that
        # little else is (one slow trip is the machine's load, not the fault's)
        assert all(t >= 0.2 for t in slow), slow
        assert min(slow) < baseline + 0.2 + 0.15, (baseline, slow)
        # with jitter each chunk's delay differs, yet nothing overtakes what was sent first
        hub.client.set("t", Fault(mode="latency", latency_ms=40, jitter_ms=40))
        sent = b"".join(f"<{i:04d}>".encode() for i in range(200))
        for i in range(200):
            s.sendall(sent[i * 6 : (i + 1) * 6])
        assert recv_exactly(s, len(sent)) == sent
        hub.client.set("t", PASS)
        assert min(round_trip(s) for _ in range(3)) < 0.2  # the 200 ms round trip is gone


def test_reset_is_a_connection_reset_for_open_and_new_connections(
    hub: RunningHub, echo: EchoServer
) -> None:
    listen = hub.client.link("t", echo.address, "127.0.0.1:0")
    with connect(listen) as s:
        round_trip(s)
        hub.client.set("t", Fault(mode="reset"))
        assert reset_within(s, 1.0)
    # a new connection is reset as soon as the proxy accepts it: at its first use, or,
    # when the client runs late (a loaded machine), already while connect() completes
    with pytest.raises(ConnectionResetError), connect(listen) as s:
        round_trip(s)
    hub.client.set("t", PASS)
    with connect(listen) as s:
        round_trip(s)  # answered: the link passes again
    [status] = hub.client.status()
    assert status["resets"] >= 2


def test_periodic_resets_let_new_connections_through_in_between(
    hub: RunningHub, echo: EchoServer
) -> None:
    listen = hub.client.link("t", echo.address, "127.0.0.1:0")
    hub.client.set("t", Fault(mode="reset", reset_every_s=0.3))
    with connect(listen) as s:
        round_trip(s)  # a new connection works between the resets
        assert reset_within(s, 2.0)


def test_a_blackhole_is_a_timeout_and_delivers_what_it_held_once_healed(
    hub: RunningHub, echo: EchoServer
) -> None:
    listen = hub.client.link("t", echo.address, "127.0.0.1:0")
    with connect(listen) as s:
        round_trip(s)
        hub.client.set("t", Fault(mode="blackhole"))
        s.settimeout(0.5)
        s.sendall(b"held")
        with pytest.raises(TimeoutError):
            s.recv(16)
        with connect(listen) as late:  # accepted, but never connected onwards
            late.settimeout(0.5)
            late.sendall(b"late")
            with pytest.raises(TimeoutError):
                late.recv(16)
            assert echo.accepted == 1
            hub.client.set("t", PASS)
            late.settimeout(2)
            assert recv_exactly(late, 4) == b"late"
        s.settimeout(2)
        assert recv_exactly(s, 4) == b"held"


# --- the control protocol -------------------------------------------------------------


def test_the_hub_refuses_addresses_outside_loopback_and_faults_that_do_not_fit(
    hub: RunningHub, echo: EchoServer
) -> None:
    with pytest.raises(NetfaultError, match=r"127\.0\.0\.0/8"):
        hub.client.link("t", "10.0.0.1:80", "127.0.0.1:0")
    with pytest.raises(NetfaultError, match=r"127\.0\.0\.0/8"):
        hub.client.link("t", echo.address, "0.0.0.0:0")
    with pytest.raises(NetfaultError):
        hub.client.link("Bad Group", echo.address, "127.0.0.1:0")
    with pytest.raises(NetfaultError, match="mode latency"):
        hub.client.request({"op": "set", "group": "t", "fault": {"mode": "pass", "latency_ms": 5}})
    with pytest.raises(NetfaultError):
        hub.client.request({"op": "shutdown"})
    with pytest.raises(ValueError, match="mode reset"):
        Fault(mode="latency", latency_ms=1, reset_every_s=1)


def test_a_group_fault_reaches_links_that_join_later_and_patterns_match(
    hub: RunningHub, echo: EchoServer
) -> None:
    a = hub.client.link("client-a", echo.address, "127.0.0.1:0")
    assert hub.client.link("client-a", echo.address, "127.0.0.1:0") == a  # idempotent
    assert hub.client.set("client-*", Fault(mode="latency", latency_ms=50)) == 1
    b = hub.client.link("client-b", echo.address, "127.0.0.1:0")
    other = hub.client.link("keeper-db", echo.address, "127.0.0.1:0")
    modes = {s["group"]: s["fault"]["mode"] for s in hub.client.status()}
    assert modes == {"client-a": "latency", "client-b": "latency", "keeper-db": "pass"}
    assert hub.client.set("client-a", PASS) == 1
    assert hub.client.set("nothing-*", Fault(mode="blackhole")) == 0
    with connect(a) as sa, connect(b) as sb, connect(other) as so:
        fastest = {
            name: min(round_trip(s) for _ in range(3))
            for name, s in (("a", sa), ("b", sb), ("other", so))
        }
    assert fastest["b"] >= 0.1  # 50 ms each way
    assert fastest["a"] < 0.1  # below what the fault would add: a is healed
    assert fastest["other"] < 0.1


def test_the_hub_process_exits_when_its_stack_goes_away(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="nf", dir="/tmp"))
    watched = tmp_path / "topology.json"
    watched.write_text('{"run_id": "run-1"}')
    control = short / "c.sock"
    argv = [
        sys.executable, "-m", "chaos.netfault", "--control", str(control),
        "--watch", str(watched), "--watch-text", "run-1", "--max-lifetime-s", "60",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = HubClient(control)
        deadline = time.monotonic() + 15
        while not client.ping():
            assert time.monotonic() < deadline, "the hub never answered"
            assert proc.poll() is None
            time.sleep(0.1)
        assert oct(control.stat().st_mode & 0o777) == oct(0o600)
        watched.write_text('{"run_id": "run-2"}')  # another stack in the same run dir
        assert proc.wait(10) == 0
        assert not control.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(short, ignore_errors=True)


def test_the_hub_process_is_bounded_in_time() -> None:
    short = Path(tempfile.mkdtemp(prefix="nf", dir="/tmp"))
    argv = [sys.executable, "-m", "chaos.netfault", "--control", str(short / "c.sock")]
    started = time.monotonic()
    try:
        done = subprocess.run(
            [*argv, "--max-lifetime-s", "1"], cwd=ROOT, capture_output=True, timeout=20, check=False
        )
        assert done.returncode == 0
        assert time.monotonic() - started < 15
        refused = subprocess.run(
            [*argv, "--max-lifetime-s", "999999"], cwd=ROOT, capture_output=True, check=False
        )
        assert refused.returncode == 2
    finally:
        shutil.rmtree(short, ignore_errors=True)


# --- the stack-side helpers ---------------------------------------------------------------


def _proc(argv: list[str], env: dict[str, str]) -> Proc:
    return Proc(pid=1, pgid=1, argv=argv, env=env, log=Path("/dev/null"))


def test_a_keepers_db_url_is_swapped_wherever_it_is_and_only_there() -> None:
    url = "mysql+pymysql://root@127.0.100.1:9306/ha_serving"
    keeper = _proc(["ha-serving", "keeper", "run", "--db-url", url], {"TTL": "3"})
    swapped = links._swapped(keeper, "127.0.100.1:9306", "127.0.100.3:9306")
    assert swapped is not None
    argv, env = swapped
    assert argv[-1] == "mysql+pymysql://root@127.0.100.3:9306/ha_serving"
    assert env == {"TTL": "3"}
    in_env = _proc(["ha-serving"], {"HA_SERVING_DB_URL": url})
    assert links._swapped(in_env, "127.0.100.1:9306", "127.0.100.3:9306") == (
        ["ha-serving"],
        {"HA_SERVING_DB_URL": "mysql+pymysql://root@127.0.100.3:9306/ha_serving"},
    )
    # a port that merely starts the same, or another host, is not the DB's address
    other = _proc(["--db-url", "mysql+pymysql://root@127.0.100.1:93061/x"], {})
    assert links._swapped(other, "127.0.100.1:9306", "127.0.100.3:9306") is None


def test_link_names_and_control_paths_stay_within_what_the_hub_and_unix_accept() -> None:
    assert links.client_group("a") == "client-a"
    assert links.client_group("Zone 1/ä") == "client-zone-1--"
    assert len(str(links.control_path(Path("/r")))) < 100
    deep = Path("/srv") / ("x" * 120)
    assert links.control_path(deep).parent == Path("/tmp")  # noqa: S108 - what it picks
    assert links.control_path(deep) == links.control_path(deep)


def test_the_clock_environment_round_trips_and_the_offset_file_is_whole_seconds(
    tmp_path: Path,
) -> None:
    env = {"HA_SERVING_KEEPER_TTL": "3", "PYTHONPATH": "/mine"}
    faked = clock.faked_env(env, Path("/lib/libfaketimeMT.so.1"), tmp_path / "k1.rc")
    assert clock.is_faked(faked)
    assert faked["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
    assert faked["PYTHONPATH"].split(os.pathsep) == [str(clock.SHIM), "/mine"]
    assert clock.real_env(faked) == env
    assert clock.real_env(clock.faked_env({}, Path("/l"), tmp_path / "x")) == {}
    clock.write_offset(tmp_path / "k1.rc", -90.4)
    assert (tmp_path / "k1.rc").read_text() == "-90\n"
    assert clock.read_offset(tmp_path / "k1.rc") == -90


@pytest.mark.skipif(clock.library() is None, reason="libfaketime is not installed")
def test_a_faked_process_sees_its_wall_clock_jump_and_its_monotonic_clock_not(
    tmp_path: Path,
) -> None:
    """The drill's mechanism, for real: a Python process under the drill's libfaketime
    environment, its offset file rewritten while it runs; its time.sleep (the shim) works."""
    lib = clock.library()
    assert lib is not None
    rc = tmp_path / "k.rc"
    clock.write_offset(rc, 0)
    script = (
        "import time, sys\n"
        "m0 = time.monotonic()\n"
        "for _ in range(40):\n"
        "    print(round(time.time() - float(sys.argv[1]), 1), round(time.monotonic() - m0, 1),"
        " flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    env = {**os.environ, **clock.faked_env({}, lib, rc)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "0"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    clock.write_offset(rc, 90)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    rows = [first, *(line.split() for line in out.splitlines())]
    real_now = time.time()
    wall = [float(r[0]) for r in rows]
    mono = [float(r[1]) for r in rows]
    assert abs(wall[0] - (real_now - 4)) < 10  # its clock was right before the jump
    assert abs(wall[-1] - (real_now + 90)) < 5  # 90 s ahead after it
    assert mono == sorted(mono)
    assert mono[-1] < 10  # the monotonic clock did not jump


def test_the_cpu_hog_is_bounded_and_prefers_stress_ng() -> None:
    assert cpuhog.argv(2, 30, stress_ng="/usr/bin/stress-ng") == [
        "/usr/bin/stress-ng", "--cpu", "2", "--timeout", "30s", "--quiet",
    ]  # fmt: skip
    assert cpuhog.argv(1, 0.5)[1:5] == ["-m", "chaos.cpuhog", "--workers", "1"]
    for workers, seconds in ((0, 1), (17, 1), (1, 0), (1, 601)):
        with pytest.raises(ValueError, match="workers"):
            cpuhog.argv(workers, seconds)
    started = time.monotonic()
    assert cpuhog.spin(time.monotonic() + 0.2) > 0
    assert time.monotonic() - started < 1

"""Issue 11's review of main at b03a1ea, one finding at a time, through APIs that commit
and today's code both have: each test here fails on b03a1ea (for the finding's reason,
not for a missing name) and passes now. docs/security.md maps every finding's bullets to
these and to the fuller tests elsewhere; run this file against b03a1ea as it says there.

The fuller tests (test_spec_input, test_keeper_api, test_analysis_scrape, ...) import
names the fixes added, so on b03a1ea they fail at import: no evidence of the defect."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from ha_serving._errors import ConflictError, InvalidSpec
from ha_serving._settings import ClientSettings, KeeperSettings
from ha_serving._spec import ServiceSpec, code_dir, load_spec, parse_spec
from ha_serving.appmaster import AppMasterCore, JobState, StaleInstruction
from ha_serving.appmaster._actor import worker_spec
from ha_serving.backend import make_package
from ha_serving.cli._app import app, main
from ha_serving.cli._services import ServiceOps
from ha_serving.client import CallError, Client
from ha_serving.keeper import KeeperClient, KeeperError, KeeperServer
from ha_serving.keeper._analysis import scrape
from ha_serving.keeper._control_api import deploy
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.runtime import ActorSpec
from ha_serving.store import ClusterRecord, Store
from ha_serving.testing import FakeProxy, FakeRuntime
from ha_serving.util.clock import FakeClock
from tests.unit.fixtures.dataplane import Stack, running_stack, seeded

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEEPER_LEADER = "keeper-leader"
TOKEN = "review-token"  # noqa: S105 - a test's operator credential
"""The Keepers' leadership lease (``ha_serving.store.KEEPER_LEADER`` today)."""
CLI_ERROR_CAP = 2000
"""``ha_serving.cli._app.MAX_ERROR_CHARS`` today (b03a1ea has no such name)."""


def _spec(**overrides: Any) -> ServiceSpec:
    data: dict[str, Any] = {
        "name": "echo",
        "version": "v1",
        "code": {"dir": "echo_v1", "import_path": "echo:Echo"},
        "instances": 2,
        "instances_per_worker": 2,
        "proxies": 1,
    }
    return parse_spec({**data, **overrides})


def _spec_json(**overrides: Any) -> str:
    return json.dumps(_spec(**overrides).model_dump(mode="json"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.connect(f"sqlite:///{tmp_path / 'state.db'}")
    s.register_cluster(ClusterRecord("a", "127.0.103.250:1", None, "z1"))
    try:
        yield s
    finally:
        s.close()


def _lease_at(store: Store, epoch: int) -> None:
    """The Keepers' leadership lease at ``epoch``, as that many terms would leave it."""
    lease = store.acquire_lease(KEEPER_LEADER, "k-test", 60)
    assert lease is not None
    while lease.epoch < epoch:
        store.release_lease(lease)
        lease = store.acquire_lease(KEEPER_LEADER, "k-test", 60)
        assert lease is not None


def _core(store: Store) -> AppMasterCore:
    def proxy(name: str, state: JobState) -> ActorSpec:
        return ActorSpec(name=name, cls=FakeProxy, args=(state.service,))

    return AppMasterCore(
        store=store,
        runtime=FakeRuntime(),
        cluster="a",
        service="echo",
        proxy_actor=proxy,
        worker_actor=worker_spec(),
        clock=FakeClock(),
    )


class KeeperThread:
    """A KeeperServer with the operator token ``TOKEN`` on its own loop in a thread."""

    def __init__(self, store: Store, address: str) -> None:
        self.address = address
        self.server = KeeperServer(store, "k-test", address, KeeperSettings(token=TOKEN))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._run(self.server.start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        stop = getattr(self.server, "stop", None)  # b03a1ea's KeeperServer has none
        self._run(stop(0) if stop is not None else self.server._server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextmanager
def running_keeper(store: Store, address: str) -> Iterator[KeeperThread]:
    keeper = KeeperThread(store, address)
    try:
        yield keeper
    finally:
        keeper.stop()


# --- 1. secrets: status masks the store's password ------------------------------------


def test_1_status_masks_the_password_of_a_stacks_store_url(tmp_path: Path) -> None:
    """A topology.json as b03a1ea wrote it (``db.url`` with its password): `status`
    printed the URL as it was; today it masks the password."""
    from infra import stack

    url = "mysql+pymysql://u:s3cret-pw@127.0.104.1:1/x"
    (tmp_path / "topology.json").write_text(
        json.dumps(
            {
                "run_dir": str(tmp_path),
                "run_id": "r1",
                "created_at": 0.0,
                "clusters": [],
                "db": {"kind": "external", "url": url},
                "redis": None,
            }
        )
    )
    report = stack.status(tmp_path)
    assert report is not None
    assert "s3cret-pw" not in json.dumps(report)
    assert report["db"]["url"] == "mysql+pymysql://u:***@127.0.104.1:1/x"  # type: ignore[index]


def _free(host: str) -> str:
    """``host:port`` with a port from the kernel (defined here, not taken from the
    fixtures, so the file runs on b03a1ea too): a fixed one would be shared with
    another test run on the machine."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return f"{host}:{probe.getsockname()[1]}"


# --- 2. credentials: no silent unauthenticated Keeper -----------------------------------


def test_2_a_keeper_without_credentials_refuses_to_start(store: Store) -> None:
    """b03a1ea served every RPC to anyone when no token was set, and said nothing."""
    keeper = KeeperServer(store, "k-bare", _free("127.0.104.10"), KeeperSettings())

    async def start() -> str:
        try:
            await keeper.start()
        except InvalidSpec as exc:
            return str(exc)
        await keeper._server.stop(0)  # b03a1ea's KeeperServer: started, and no stop()
        return "started with no authentication"

    assert "no credentials" in asyncio.run(start())


# --- 3. a wedged link; op_id unchecked -------------------------------------------------


def test_3_an_instruction_of_an_unexpected_kind_is_rejected_and_the_next_one_flows(
    store: Store,
) -> None:
    """A Deploy of kind "release" made an instruction without the release's fields:
    ``take_instruction`` raised KeyError, and the link resumed from it forever."""
    _lease_at(store, 1)
    core = _core(store)
    package = store.put_package(make_package(FIXTURES / "echo_v1").data)

    def body(kind: str, **changes: Any) -> dict[str, Any]:
        spec = _spec(**changes).model_dump(mode="json")
        return {"spec": spec, "package": package, "kind": kind, "generation": 2}

    async def scenario() -> None:
        take = core.take_instruction
        assert await take(1, body("deploy"), op_id="op-1@a", epoch=1) == "applied"
        assert await take(2, body("release"), op_id="op-2@a", epoch=1) == "rejected"
        nxt = body("config", config={"prefix": "next"})
        assert await take(3, nxt, op_id="op-3@a", epoch=1) == "applied"
        assert core.state is not None
        assert core.state.last_instruction == 3

    asyncio.run(scenario())


def test_3_an_op_id_the_store_cannot_hold_is_refused_before_any_write(store: Store) -> None:
    """b03a1ea took any op_id; one over 64 characters failed on MySQL's column."""
    package = make_package(FIXTURES / "echo_v1").data
    with pytest.raises(InvalidSpec, match="op_id"):
        deploy(store, _spec_json(), package, op_id="x" * 200, kind="deploy")
    assert store.list_operations() == []


# --- 4. user code runs twice -----------------------------------------------------------


PROXY_THAT_HANGS = """
import sys, time, grpc
from concurrent import futures
from ha_serving._wire import SERVING_SERVICE
from ha_serving.proto.serving_pb2 import CallReply, CallRequest

def call(request, context):
    with open(sys.argv[2], "a") as f:
        f.write("ran\\n")  # user code ran
    time.sleep(60)
    return CallReply()

server = grpc.server(futures.ThreadPoolExecutor(4))
handler = grpc.unary_unary_rpc_method_handler(
    call, request_deserializer=CallRequest.FromString,
    response_serializer=CallReply.SerializeToString)
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler(SERVING_SERVICE, {"Call": handler}),))
server.add_insecure_port(sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination(90)
"""


@pytest.fixture
def serving() -> Iterator[Stack]:
    with running_stack() as stack:
        stack.add("i1")
        yield stack


def test_4_a_proxy_killed_holding_a_call_is_not_retried_so_user_code_runs_once(
    serving: Stack, tmp_path: Path
) -> None:
    """The review's measurement in small (17 of 3,792 calls ran twice): the SDK took an
    UNAVAILABLE without a trailer on a connection it had made as "never started" and
    sent the call to another proxy. (The same as test_client's, which needs names
    b03a1ea lacks.)"""
    ran = tmp_path / "ran"
    address = "127.0.77.249:17453"
    proxy = subprocess.Popen(
        [sys.executable, "-c", PROXY_THAT_HANGS, address, str(ran)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.stdout is not None
        assert proxy.stdout.readline().strip() == "ready"
        fast = ClientSettings(retry_backoff_s=0.0)
        with Client([address, serving.address], settings=fast, rng=seeded(0)) as client:
            client.set_addresses([address])  # the first attempt goes to the doomed proxy
            errors: list[CallError] = []

            def call() -> None:
                try:
                    client.call("echo", "echo", 1, timeout=20)
                except CallError as exc:
                    errors.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            deadline = time.monotonic() + 20
            while not ran.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            client.set_addresses([address, serving.address])  # a retry would go here
            proxy.kill()
            caller.join(20)
        assert not caller.is_alive()
        assert ran.read_text() == "ran\n"
        assert serving.caller.calls == [], "the call ran a second time on another proxy"
        assert [e.code for e in errors] == ["UNAVAILABLE"], errors
    finally:
        proxy.kill()
        proxy.wait(10)


# --- 5. Deploy not atomic --------------------------------------------------------------


class RacingStore:
    """The real store, where another deploy of the service lands after ``deploy`` has
    read the service record and before it writes it: today that is between the read
    and the one transaction (``list_clusters`` comes between them); at b03a1ea, between
    the operation's transaction and the service's (in ``update_service``)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _race(self) -> None:
        current = self._store.get_service("echo")
        self._store.update_service("echo", current.spec, expected_version=current.version)

    def list_clusters(self) -> Any:
        self._race()
        return self._store.list_clusters()

    def update_service(self, *args: Any, **kwargs: Any) -> Any:
        self._race()
        return self._store.update_service(*args, **kwargs)


def test_5_a_deploy_answered_aborted_has_recorded_no_operation(store: Store) -> None:
    """b03a1ea wrote the operation, then the service record in a second transaction:
    the second's conflict answered ABORTED for an operation already durable."""
    deploy(store, _spec_json(), make_package(FIXTURES / "echo_v1").data, op_id="d-1")
    racing = RacingStore(store)
    with pytest.raises(ConflictError):
        deploy(racing, _spec_json(config={"p": 1}), b"", op_id="c-1", kind="config")  # type: ignore[arg-type]
    assert [o.op_id for o in store.list_operations()] == ["d-1"]


class FlakyKeepers:
    """A KeeperClient whose first Deploy fails as a Keeper failover mid-request does."""

    def __init__(self) -> None:
        self.op_ids: list[str] = []

    def deploy(self, spec_json: str, package: bytes, **kw: Any) -> str:  # noqa: ARG002
        self.op_ids.append(kw.get("op_id", ""))
        if len(self.op_ids) == 1:
            raise KeeperError("UNAVAILABLE", "no Keeper answered (test)")
        return self.op_ids[-1]


def test_5_the_cli_retries_a_deploy_under_one_op_id_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """b03a1ea's `deploy` sent no op_id and gave up at the first failure: run again,
    it made a second operation if the first attempt had been recorded."""
    flaky = FlakyKeepers()
    monkeypatch.setattr("ha_serving.cli._app.keepers", lambda _run_dir: flaky)
    result = CliRunner().invoke(app, ["deploy", str(EXAMPLES / "echo" / "echo.yaml"), "--no-wait"])
    assert result.exit_code == 0, result.output
    assert len(flaky.op_ids) == 2
    assert flaky.op_ids[0]
    assert flaky.op_ids[0] == flaky.op_ids[1]


# --- 6. fencing that could be bypassed --------------------------------------------------


def test_6_apply_refuses_an_epoch_no_keeper_was_granted(store: Store) -> None:
    """b03a1ea's ``AppMaster.apply`` took its caller's epoch as the highest seen: a made-up
    one fenced the real leader out."""
    _lease_at(store, 6)
    core = _core(store)
    package = store.put_package(make_package(FIXTURES / "echo_v1").data)

    async def scenario() -> None:
        await core.apply(_spec(), package, op_id="op-1", epoch=5)
        with pytest.raises(StaleInstruction):
            await core.apply(_spec(instances=4), package, op_id="op-2", epoch=1_000_000)
        assert core.state is not None
        assert (core.state.highest_epoch, core.state.spec.instances) == (5, 2)

    asyncio.run(scenario())


def test_6_a_direct_deploy_leaves_a_keeper_managed_service_alone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b03a1ea's `deploy --cluster` rewrote the Keepers' record of the service before
    anything refused it."""
    deploy(store, _spec_json(), make_package(FIXTURES / "echo_v1").data, op_id="d-1")
    before = store.get_service("echo")
    try:  # its second argument was a URL at b03a1ea, a StoreRef today
        from ha_serving.store import StoreRef  # type: ignore[attr-defined,unused-ignore]

        ref: Any = StoreRef("sqlite:///unused")
    except ImportError:
        ref = "sqlite:///unused"
    ops = ServiceOps(store, ref, "a", "127.0.0.1:1", "127.0.0.1")
    monkeypatch.setattr(ops, "_apply", lambda *_: {})
    with pytest.raises(InvalidSpec, match="deployed through the Keepers"):
        ops.deploy(_spec(version="v2"), FIXTURES / "echo_v2")
    assert store.get_service("echo") == before


def test_6_an_open_stream_alone_does_not_keep_an_appmaster_fresh(store: Store) -> None:
    """b03a1ea's Keeper wrote the AppMaster's heartbeat on every loop of an open
    ``Instructions`` stream: any token holder kept a dead AppMaster "fresh"."""
    with (
        running_keeper(store, _free("127.0.104.11")) as keeper,
        grpc.insecure_channel(keeper.address) as channel,
    ):
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        request = keeper_pb2.InstructionsRequest(
            cluster="a", service="echo", actor_name="echo-appmaster", epoch_seen=0
        )
        stream = stub.Instructions(
            request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30
        )
        next(stream)
        [registered] = store.list_appmasters("echo")
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # ~5 of the Keeper's loops (0.3 s)
            next(stream)
        [now] = store.list_appmasters("echo")
        stream.cancel()
    assert now.heartbeat_at == registered.heartbeat_at


# --- 7. one bad proxy stalls every service ----------------------------------------------


class _Canned(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(2.0)
        seen = b""
        try:
            while b"\r\n\r\n" not in seen:
                chunk = self.request.recv(4096)
                if not chunk:
                    break
                seen += chunk
            self.request.sendall(self.server.answer)  # type: ignore[attr-defined]
        except OSError:
            pass


@contextmanager
def _server(answer: bytes) -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Canned)
    server.daemon_threads = True
    server.answer = answer  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _http(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode()
    return head + b"\r\nConnection: close\r\n\r\n" + body


GOOD = _http(
    b'ha_serving_proxy_requests_total{service="echo",group="stable",code="OK",version="v1"} 7.0\n'
)


@pytest.mark.parametrize(
    "garbage",
    [b"SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n\r\n", _http(b"\xff\xfe metrics \xc3\x28")],
    ids=["bad status line", "undecodable bytes"],
)
def test_7_a_proxy_answering_garbage_does_not_abort_the_scrape(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """b03a1ea caught only OSError: this raised out of ``scrape`` and the leader's round."""
    caplog.set_level(logging.CRITICAL)
    with _server(GOOD) as good, _server(garbage) as bad:
        sample = scrape([bad, good], "echo")
    assert sample["stable"].requests == 7.0


# --- 8. no limits ---------------------------------------------------------------------


def test_8_a_package_over_grpcs_default_4_mib_reaches_the_keeper(
    store: Store, tmp_path: Path
) -> None:
    """b03a1ea's Keeper set no gRPC options: its 4 MiB receive limit refused packages
    that the 50 MB package limit allows."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "echo.py").write_text("class Echo: ...\n")
    (code / "weights.bin").write_bytes(os.urandom(5 * 1024 * 1024))  # incompressible
    package = make_package(code).data
    assert len(package) > 5 * 1024 * 1024
    with running_keeper(store, _free("127.0.104.12")) as keeper:
        client = KeeperClient([keeper.address], token=TOKEN)
        op_id = client.deploy(_spec_json(), package, kind="deploy")
    assert store.get_operation(op_id).service == "echo"


def test_8_operations_are_answered_a_page_at_a_time(store: Store) -> None:
    """b03a1ea's ``Operations`` answered the whole history in one message (and the CLI
    polled it every 0.5 s). The request is sent as bytes: field 1, the service, is the
    same in b03a1ea's ``ServiceRequest`` and today's ``OperationsRequest``."""
    package = make_package(FIXTURES / "echo_v1").data
    deploy(store, _spec_json(), package, op_id="d-0")
    for n in range(1, 130):
        deploy(store, _spec_json(config={"n": n}), b"", op_id=f"c-{n}", kind="config")
    service = b"echo"
    request = b"\x0a" + bytes([len(service)]) + service
    with (
        running_keeper(store, _free("127.0.104.13")) as keeper,
        grpc.insecure_channel(keeper.address) as channel,
    ):
        operations = channel.unary_unary(
            "/ha_serving.v1.Keeper/Operations",
            request_serializer=None,
            response_deserializer=keeper_pb2.OperationsReply.FromString,
        )
        reply = operations(request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
    assert len(store.list_operations()) == 130
    assert 0 < len(reply.operations) <= 100


# --- 9. the spec parser -----------------------------------------------------------------

HEAD = "name: echo\nversion: v1\ncode: {dir: code, import_path: 'echo:Echo'}\n"


def test_9_yaml_aliases_are_refused_not_expanded(tmp_path: Path) -> None:
    laughs = HEAD + "config:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n  b: [*a, *a, *a]\n"
    spec = tmp_path / "laughs.yaml"
    spec.write_text(laughs)
    with pytest.raises(InvalidSpec, match="alias"):
        load_spec(spec)


def test_9_num_cpus_must_be_finite(tmp_path: Path) -> None:
    spec = tmp_path / "inf.yaml"
    spec.write_text(HEAD + "resources: {num_cpus: .inf}\n")
    with pytest.raises(InvalidSpec):
        load_spec(spec)


@pytest.mark.parametrize("directory", ["{outside}", "../outside"])
def test_9_code_dir_must_stay_inside_the_specs_folder(tmp_path: Path, directory: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "project"
    folder.mkdir()
    spec_path = folder / "svc.yaml"
    given = directory.format(outside=outside)
    spec_path.write_text(
        f"name: echo\nversion: v1\ncode: {{dir: '{given}', import_path: 'echo:Echo'}}\n"
    )
    with pytest.raises(InvalidSpec, match=r"code\.dir"):
        code_dir(load_spec(spec_path), spec_path)


def test_9_a_symlink_leading_out_of_the_code_is_not_packaged(tmp_path: Path) -> None:
    secret = tmp_path / "home" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY")
    code = tmp_path / "code"
    code.mkdir()
    (code / "echo.py").write_text("class Echo: ...\n")
    (code / "key.txt").symlink_to(secret)
    with pytest.raises(InvalidSpec, match="symlink"):
        make_package(code)


# --- 11. error lines that are not one line ----------------------------------------------


def _cli_error(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    monkeypatch.setattr("sys.argv", ["ha-serving", *args])
    with pytest.raises(SystemExit):
        main()
    return capsys.readouterr().err


def test_11_a_spec_with_many_unknown_keys_gives_one_short_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "keys.yaml"
    spec.write_text("".join(f"unknown_key_{i}: {'v' * 300}\n" for i in range(3000)))
    err = _cli_error(["deploy", str(spec), "--cluster", "a"], monkeypatch, capsys)
    [line] = err.splitlines()
    assert line.startswith("error: ")
    assert len(line) <= CLI_ERROR_CAP + len("error: "), len(line)


def test_11_a_python_tag_gives_one_error_line_and_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    err = _cli_error(["deploy", str(bad), "--cluster", "a"], monkeypatch, capsys)
    assert len(err.splitlines()) == 1, err
    assert not marker.exists()

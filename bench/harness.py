"""What the benchmarks in this folder share: the stack they run on, the load client,
per-process CPU accounting, and the bare gRPC-in-actor baseline.

``drive`` is the client: it runs in a process of its own (spawned), so the benchmark's
Ray driver and the load never share a GIL. It is bare (gRPC stubs of the protocol, no
SDK), or, for a side with ``sdk`` set, the SDK's ``AsyncClient`` in that mode
(``drive_sdk``). A ``Side`` is one system under test: where its proxies listen (or, for
a bare client that skips the proxy, the workers' direct routes), which processes are
its own (for CPU per request, read from ``/proc``), and what was measured. Heavy
imports (ray, grpc, ha_serving) happen inside functions, so the spawned client starts
light.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ECHO = ROOT / "examples" / "echo"
SERVICE = "bench-echo"
PAYLOAD = b'"ping"'

PORT_BASE = 10500
"""Own stack: cluster i uses 10500 + i*2000 ...; `make up` uses 10000 + ..., tests 11000 + ..."""
DB_ADDRESS, DB_PORT = "127.0.102.2", 9346
REDIS_ADDRESS, REDIS_PORT = "127.0.102.3", 9399

CALL_TIMEOUT_S = 5.0
"""Every client's deadline per call, bare or SDK."""

Route = tuple[str, str, str]
"""A direct route to one instance: (its worker's direct server ``host:port``, the
worker's name, the instance id), as a routing table entry gives them."""


# --- the client (runs in its own process) ------------------------------------------------


def open_channel(target: str, ca: str | None, *, aio: bool) -> Any:
    """A gRPC channel to ``target``: TLS verified against ``ca`` (a CA certificate's
    path), or plaintext without one."""
    import grpc

    if ca is None:
        return grpc.aio.insecure_channel(target) if aio else grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
    return grpc.aio.secure_channel(target, creds) if aio else grpc.secure_channel(target, creds)


def drive(
    targets: list[str],
    metadata: list[tuple[str, str]],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    *,
    routes: list[Route] | None = None,
    ca: str | None = None,
    sdk: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> dict[str, Any]:
    """Call ``targets`` with ``concurrency`` tasks; latencies of calls started in the
    measured window (after the warm-up), errors by status name. With ``ca`` (a CA
    certificate's path), over TLS, verifying the targets against it, as the SDK does.
    With ``routes``, the workers' direct servers instead (``drive_direct``; ``targets``
    and ``metadata`` unused). With ``sdk`` (a ``Mode``), the SDK's ``AsyncClient`` on
    ``targets`` (``drive_sdk``, showing ``client_cert`` under TLS; ``metadata`` unused)."""
    import asyncio

    import grpc

    from ha_serving.proto.serving_pb2 import CallRequest
    from ha_serving.proto.serving_pb2_grpc import ServingStub

    if sdk is not None:
        return drive_sdk(
            targets,
            sdk,
            concurrency,
            warmup_s,
            duration_s,
            ca=ca,
            client_cert=client_cert,
            client_key=client_key,
        )
    if routes:
        return drive_direct(routes, concurrency, warmup_s, duration_s)

    async def run() -> dict[str, Any]:
        channels = [open_channel(t, ca, aio=True) for t in targets]
        stubs = [ServingStub(c) for c in channels]
        request = CallRequest(service=SERVICE, method="echo", payload=PAYLOAD)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        calls = 0
        cpu0 = time.process_time()
        begin = time.perf_counter() + warmup_s
        end = begin + duration_s

        async def user(k: int) -> None:
            nonlocal calls
            stub = stubs[k % len(stubs)]
            while (started := time.perf_counter()) < end:
                calls += 1
                try:
                    reply = await stub.Call(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
                    code = "OK" if b"ping" in reply.payload else "BAD_REPLY"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                if started >= begin:
                    if code == "OK":
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors[code] += 1

        await asyncio.gather(*(user(k) for k in range(concurrency)))
        for c in channels:
            await c.close()
        return {
            "latencies": latencies,
            "errors": dict(errors),
            "seconds": duration_s,
            "all_calls": calls,
            "client_cpu_s": time.process_time() - cpu0,
        }

    return asyncio.run(run())


def drive_direct(
    routes: list[Route], concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """``drive`` for a client that skips the proxy: ``Direct.Call`` on the workers' own
    servers (one channel per address), the route of each call taken round-robin. The
    same loop and bookkeeping as ``drive``'s; a worker's error answer (``ok`` false)
    counts under its code."""
    import asyncio

    import grpc

    from ha_serving.proto.direct_pb2 import DirectCall
    from ha_serving.proto.direct_pb2_grpc import DirectStub

    async def run() -> dict[str, Any]:
        channels = {a: grpc.aio.insecure_channel(a) for a in dict.fromkeys(r[0] for r in routes)}
        stubs = {a: DirectStub(c) for a, c in channels.items()}
        pairs = [
            (stubs[a], DirectCall(worker=w, instance_id=i, method="echo", payload=PAYLOAD))
            for a, w, i in routes
        ]
        turn = itertools.cycle(pairs)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        calls = 0
        cpu0 = time.process_time()
        begin = time.perf_counter() + warmup_s
        end = begin + duration_s

        async def user() -> None:
            nonlocal calls
            while (started := time.perf_counter()) < end:
                calls += 1
                stub, request = next(turn)
                try:
                    reply = await stub.Call(request, timeout=CALL_TIMEOUT_S)
                    code = direct_code(reply.ok, reply.code, reply.payload)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                if started >= begin:
                    if code == "OK":
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors[code] += 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
        for c in channels.values():
            await c.close()
        return {
            "latencies": latencies,
            "errors": dict(errors),
            "seconds": duration_s,
            "all_calls": calls,
            "client_cpu_s": time.process_time() - cpu0,
        }

    return asyncio.run(run())


def sdk_tls(ca: str | None, client_cert: str | None, client_key: str | None) -> Any:
    """The SDK's ``TlsFiles`` for a side: None in plaintext (no ``ca``)."""
    from ha_serving.client import TlsFiles

    return None if ca is None else TlsFiles(ca, client_cert, client_key)


def drive_sdk(
    targets: list[str],
    mode: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    *,
    ca: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> dict[str, Any]:
    """``drive`` through the SDK: one ``AsyncClient`` in ``mode`` ("proxy": its proxies
    are ``targets``; "direct": the workers, ``targets`` the directory and the fallback),
    ``concurrency`` tasks calling ``call_raw`` (no JSON round trip, as the bare client
    sends the payload's bytes), the same deadline, loop and bookkeeping as ``drive``'s;
    a ``CallError`` counts under its code. One call before the clock starts primes the
    client (a direct-mode client holds no routes yet: calls made while the first fetch
    runs take the proxy path). The result adds the client's ``direct_stats`` (direct
    mode) from then on, so a run says how many calls took the proxy path instead."""
    import asyncio
    import dataclasses

    from ha_serving._settings import ClientSettings
    from ha_serving.client import AsyncClient, CallError

    async def measured(client: Any) -> dict[str, Any]:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        calls = 0
        cpu0 = time.process_time()
        begin = time.perf_counter() + warmup_s
        end = begin + duration_s

        async def user() -> None:
            nonlocal calls
            while (started := time.perf_counter()) < end:
                calls += 1
                try:
                    reply = await client.call_raw(SERVICE, "echo", PAYLOAD)
                    code = "OK" if b"ping" in reply.payload else "BAD_REPLY"
                except CallError as exc:
                    code = exc.code
                if started >= begin:
                    if code == "OK":
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors[code] += 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
        return {
            "latencies": latencies,
            "errors": dict(errors),
            "seconds": duration_s,
            "all_calls": calls,
            "client_cpu_s": time.process_time() - cpu0,
        }

    async def run() -> dict[str, Any]:
        client = AsyncClient(
            targets,
            mode="direct" if mode == "direct" else "proxy",
            tls=sdk_tls(ca, client_cert, client_key),
            settings=ClientSettings(timeout_s=CALL_TIMEOUT_S),
        )
        try:
            with contextlib.suppress(CallError):  # a failure shows in the measured calls
                await client.call_raw(SERVICE, "echo", PAYLOAD)
            primed = client.direct_stats()
            out = await measured(client)
            stats = client.direct_stats()
        finally:
            await client.close()
        since: Counter[str] = Counter()
        if stats is not None and primed is not None:
            since.update(dataclasses.asdict(stats))
            since.subtract(dataclasses.asdict(primed))
        return {**out, "direct_stats": dict(since)}

    return asyncio.run(run())


def direct_code(ok: bool, code: str, payload: bytes) -> str:
    """The outcome of one ``DirectResult``: "OK" for the echo, else the worker's error
    code ("NOT_OK" if it gave none) or "BAD_REPLY"."""
    if not ok:
        return code or "NOT_OK"
    return "OK" if b"ping" in payload else "BAD_REPLY"


def client_ready() -> int:
    import grpc  # noqa: F401 - imported now, not during the first turn

    from ha_serving import client  # noqa: F401
    from ha_serving.proto import direct_pb2_grpc, serving_pb2_grpc  # noqa: F401

    return os.getpid()


# --- measurements --------------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _group_ticks(pgids: set[int]) -> int:
    """CPU ticks of every process in the process groups ``pgids`` (a node's Ray daemons:
    raylet, GCS, agents; Ray's worker processes leave the group with setsid)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:
            total += int(fields[11]) + int(fields[12])
    return total


def _machine_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine (all cores): everything but idle and iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4]


@dataclass
class Side:
    name: str
    targets: list[str]
    metadata: list[tuple[str, str]]
    processes: dict[str, list[int]] = field(default_factory=dict)
    """role (proxy, replica, control) -> pids, for the CPU cost per request."""
    daemon_groups: set[int] = field(default_factory=set)
    """Process groups of the nodes of the cluster this system runs on."""
    owned: list[Any] = field(default_factory=list)
    """Handles of actors this driver owns: Ray ends such an actor with its last handle."""
    routes: list[Route] = field(default_factory=list)
    """Direct routes to the workers: when set, the client calls them, not ``targets``."""
    ca: str | None = None
    """The CA certificate ``targets`` are verified against: the client speaks TLS to
    them; None: plaintext."""
    sdk: str | None = None
    """The SDK's mode ("proxy" or "direct") the client drives ``targets`` with, through
    ``AsyncClient``; None: bare gRPC stubs."""
    client_cert: str | None = None
    """The client certificate (and ``client_key``) the SDK shows in direct mode under
    TLS: the workers' direct servers take only callers with one of the stack's CA."""
    client_key: str | None = None
    direct_stats: Counter[str] = field(default_factory=Counter)
    """The SDK's ``DirectStats`` summed over the turns (direct mode; warm-up included)."""
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    rounds: list[float] = field(default_factory=list)  # throughput per round
    calls: int = 0  # warm-up included: the CPU counters run then too
    cpu_s: Counter[str] = field(default_factory=Counter)

    def run(self, submit: Callable[[], dict[str, Any]]) -> None:
        """One turn: drive the load (``submit()`` returns its result), counting the CPU
        time of each of our processes, of the client and of the whole machine."""
        tick = os.sysconf("SC_CLK_TCK")
        before = {role: [_cpu_ticks(p) for p in pids] for role, pids in self.processes.items()}
        busy, daemons = _machine_busy_ticks(), _group_ticks(self.daemon_groups)
        result = submit()
        busy = _machine_busy_ticks() - busy
        self.cpu_s["ray daemons"] += (_group_ticks(self.daemon_groups) - daemons) / tick
        for role, pids in self.processes.items():
            used = sum(_cpu_ticks(p) for p in pids) - sum(before[role])
            self.cpu_s[role] += used / tick
        self.cpu_s["client"] += result["client_cpu_s"]
        self.cpu_s["machine"] += busy / tick
        self.calls += result["all_calls"]
        self.latencies.extend(result["latencies"])
        self.errors.update(result["errors"])
        self.seconds += result["seconds"]
        self.direct_stats.update(result.get("direct_stats", {}))
        calls = len(result["latencies"]) + sum(result["errors"].values())
        self.rounds.append(calls / result["seconds"])

    def cpu_per_request_ms(self) -> dict[str, float]:
        """CPU milliseconds per request by role; ``other`` is the rest of the machine:
        the other cluster's daemons and whatever else ran meanwhile (noise)."""
        if not self.calls:
            return {}
        per = {role: self.cpu_s[role] * 1000 / self.calls for role in self.cpu_s}
        ours = sum(v for role, v in per.items() if role != "machine")
        per["other"] = max(0.0, per.pop("machine", 0.0) - ours)
        return {role: round(v, 3) for role, v in per.items()}

    def summary(self) -> dict[str, Any]:
        ms = sorted(x * 1000 for x in self.latencies)
        calls = len(ms) + sum(self.errors.values())
        out: dict[str, Any] = {
            "system": self.name,
            "client": f"SDK AsyncClient, mode {self.sdk}" if self.sdk else "bare gRPC stub",
            "proxies": len(self.targets),
            "requests": calls,
            "throughput_rps": round(calls / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(ms[-1], 2) if ms else math.nan,
            "errors": sum(self.errors.values()),
            "error_codes": dict(self.errors),
            "rounds_rps": [round(r, 1) for r in self.rounds],
            "cpu_ms_per_request": self.cpu_per_request_ms(),
        }
        if self.sdk == "direct":
            out["direct_stats"] = dict(self.direct_stats)
        return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


# --- the stack --------------------------------------------------------------------------


@contextlib.contextmanager
def stack(run_dir: Path | None, log: Any, *, tls: bool = False) -> Iterator[tuple[Any, bool]]:
    """The stack to use: ``run_dir``'s running one (TLS as it was brought up), or an own
    one, with ``tls`` or in plaintext, torn down after."""
    import infra
    from ha_serving import Settings

    if run_dir is not None:
        topo = infra.load(run_dir.resolve())
        if topo is None:
            raise SystemExit(f"error: no stack is up in {run_dir}")
        yield topo, False
        return
    own = Path(tempfile.mkdtemp(prefix="hasrv-bench-"))
    base = Settings.from_env()
    settings = Settings.build(
        stack={
            **base.stack.model_dump(),
            "run_dir": own,
            "clusters": 2,
            "workers_per_cluster": 1,
            "port_base": PORT_BASE,
            "db_address": DB_ADDRESS,
            "db_port": DB_PORT,
            "redis_address": REDIS_ADDRESS,
            "redis_port": REDIS_PORT,
            "tls": tls,
        },
        store={},
    )
    started = time.monotonic()
    try:
        log(f"starting a 2-cluster stack in {own}")
        result = infra.up(settings)
        log(f"stack up in {time.monotonic() - started:.1f}s")
        yield result.topology, True
    finally:
        down = infra.down(own)
        log(f"own stack down ({down.stopped} processes stopped)")
        shutil.rmtree(own, ignore_errors=True)


def connect(cluster: Any, namespace: str) -> None:
    import ray
    from ray import cloudpickle

    # this folder is no package the cluster could import: ship its classes by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address=cluster.gcs_address,
        namespace=namespace,
        _node_ip_address=cluster.head.address,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )


def pids(roles: dict[str, list[str]], namespace: str) -> dict[str, list[int]]:
    """Process ids of named actors (the driver is connected to their cluster)."""
    import ray

    def pid(name: str) -> int:
        handle = ray.get_actor(name, namespace=namespace)
        return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))

    return {role: [pid(n) for n in names] for role, names in roles.items()}


def wait_answering(side: Side, timeout_s: float) -> None:
    import grpc

    from ha_serving.proto.serving_pb2 import CallRequest
    from ha_serving.proto.serving_pb2_grpc import ServingStub

    if side.routes:
        wait_direct(side.routes, timeout_s)
        return
    if side.sdk == "direct":
        wait_sdk_direct(side, timeout_s)
        return
    deadline = time.monotonic() + timeout_s
    with open_channel(side.targets[0], side.ca, aio=False) as channel:
        stub = ServingStub(channel)
        request = CallRequest(service=SERVICE, method="echo", payload=PAYLOAD)
        while True:
            try:
                stub.Call(request, metadata=side.metadata, timeout=2)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
            else:
                return


def wait_direct(routes: list[Route], timeout_s: float) -> None:
    """Until every route answers one ``Direct.Call`` of the echo; a worker's own error
    answer (or a reply without the echo) raises at once."""
    import grpc

    from ha_serving.proto.direct_pb2 import DirectCall
    from ha_serving.proto.direct_pb2_grpc import DirectStub

    deadline = time.monotonic() + timeout_s
    for address, worker, instance_id in routes:
        call = DirectCall(worker=worker, instance_id=instance_id, method="echo", payload=PAYLOAD)
        with grpc.insecure_channel(address) as channel:
            stub = DirectStub(channel)
            while True:
                try:
                    result = stub.Call(call, timeout=2)
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
                    continue
                code = direct_code(result.ok, result.code, result.payload)
                if code != "OK":
                    raise RuntimeError(
                        f"{worker} at {address}: {instance_id} answered {code} {result.message}"
                    )
                break


def _direct_stats(client: Any) -> Any:
    stats = client.direct_stats()
    if stats is None:  # pragma: no cover - the client is made with mode="direct"
        raise TypeError("not a direct-mode client")
    return stats


def wait_sdk_direct(side: Side, timeout_s: float) -> None:
    """Until the SDK in direct mode answers a call of the echo from a worker directly
    (not through a proxy, its fallback): else a direct side that silently measured the
    proxy path (a refused client certificate, no direct route) fails here, not in the
    table. A wrong answer raises at once."""
    from ha_serving.client import CallError, Client

    deadline = time.monotonic() + timeout_s
    tls = sdk_tls(side.ca, side.client_cert, side.client_key)
    with Client(side.targets, mode="direct", tls=tls, timeout_s=2) as client:
        while True:
            before = _direct_stats(client)
            try:
                reply = client.call_raw(SERVICE, "echo", PAYLOAD)
            except CallError:
                reply = None
            if reply is not None and b"ping" not in reply.payload:
                raise RuntimeError(f"the SDK's direct mode answered {reply.payload!r}")
            stats = _direct_stats(client)
            if (
                reply is not None
                and stats.direct > before.direct
                and stats.proxied == before.proxied
            ):
                return  # this call was answered by a worker itself
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the SDK's direct mode reached no worker directly within {timeout_s} s "
                    f"via {', '.join(side.targets)} ({stats})"
                )
            time.sleep(0.3)


# --- (c) optional baseline: the thinnest gRPC-in-actor proxy ---------------------------


class BareReplica:
    """Baseline replica: the echo as a plain (sync, sequential) actor method."""

    def call(self, payload: bytes) -> bytes:
        value = json.loads(payload)
        return json.dumps({"echo": value, "prefix": ">", "version": "1"}).encode()


class BareProxy:
    """Baseline proxy: grpc.aio in an async actor, round-robin over the replicas' handles,
    no routing table, no cap, no deadline, no metrics, no retries."""

    def __init__(self, replicas: list[Any]) -> None:
        self._replicas = replicas
        self._next = 0
        self._server: Any = None

    async def start(self) -> str:
        import grpc
        import ray

        from ha_serving.proto.serving_pb2 import CallReply, CallRequest

        async def call(request: Any, _context: Any) -> Any:
            self._next = k = (self._next + 1) % len(self._replicas)
            payload = await self._replicas[k].call.remote(request.payload)
            return CallReply(payload=payload, instance_id=str(k), version="1")

        handler = grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=CallRequest.FromString,
            response_serializer=CallReply.SerializeToString,
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("ha_serving.v1.Serving", {"Call": handler}),)
        )
        host = ray.util.get_node_ip_address()
        port = self._server.add_insecure_port(f"{host}:0")
        await self._server.start()
        return f"{host}:{port}"


# --- taking turns ----------------------------------------------------------------------


def measure(
    sides: list[Side],
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    concurrency: int,
    log: Callable[[str], None],
) -> None:
    """``rounds`` turns per side of ``seconds`` (after ``warmup``), in rotating order."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        pool.submit(client_ready).result(timeout=60)  # the client's start-up is not measured
        for r in range(rounds):
            shift = r % len(sides)  # take turns in rotating order: noise hits each alike
            order = sides[shift:] + sides[:shift]
            for side in order:
                job = functools.partial(
                    drive,
                    side.targets,
                    side.metadata,
                    concurrency,
                    warmup,
                    seconds,
                    routes=side.routes,
                    ca=side.ca,
                    sdk=side.sdk,
                    client_cert=side.client_cert,
                    client_key=side.client_key,
                )
                side.run(lambda job=job: pool.submit(job).result(timeout=warmup + seconds + 60))
                log(f"round {r + 1}/{rounds} {side.name}: {side.rounds[-1]:.0f} req/s")


def node_groups(topo: Any, cluster_name: str) -> set[int]:
    return {node.proc.pgid for node in topo.cluster(cluster_name).nodes}

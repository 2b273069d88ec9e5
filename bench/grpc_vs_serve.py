"""ha_serving's proxy vs Ray Serve's gRPC proxy: the same echo, side by side, one run.

    .venv/bin/python bench/grpc_vs_serve.py            # or: make bench
    .venv/bin/python bench/grpc_vs_serve.py --direct-client --time-limit 180   # + (d)
    .venv/bin/python bench/grpc_vs_serve.py --sdk --direct-client --tls --time-limit 180

Both systems serve the echo of ``examples/echo`` (same code path: JSON in, JSON out, a
sync method run in the replica's thread pool) with the same number of replicas (one
process each, 0.5 CPU), the same per-replica concurrency cap (64) and one proxy each
by default, and are driven by the same client: a separate process running
``--concurrency`` grpc.aio tasks over one channel per proxy with the
``ha_serving.proto`` stub, for a fixed time, recording every latency. The systems take
turns (``--rounds``, order rotating), so background noise on the machine hits both.
Besides throughput and latency, the table gives the CPU milliseconds per request of each
role (client, proxy, replicas, control, the cluster's Ray daemons, the rest of the
machine), read from ``/proc``: it says where the time goes, and how noisy the run was.

(a) ha_serving: ``examples/echo`` deployed as ``bench-echo`` through ``ServiceOps`` on
    one cluster; the client calls its proxies from the discovery table.
(b) Ray Serve 2.60: ``serve.start`` with a gRPC proxy on the head node of another
    cluster (``grpc_servicer_functions`` = our ``add_ServingServicer_to_server``), an
    application whose deployment's ``Call(CallRequest) -> CallReply`` echoes; the client
    sends the ``application`` metadata key Serve routes by.
(c) with ``--baseline``: a bare gRPC-in-actor proxy (grpc.aio in an async actor,
    round-robin ``await replica.call.remote(payload)`` to plain sync actors), the floor
    of any proxy built on Ray actor calls.
(d) with ``--direct-client`` (issue 14's "client -> worker direct, the proxy as a
    directory"): by default a bare client, like the other sides, so the sides pay the
    same per-call client cost: it calls the workers of (a) itself, ``Direct.Call``
    (``ha_serving/proto/direct.proto``) on their own gRPC servers, a route per call in
    round-robin order. The routes (worker address, worker, instance) are read once
    before the rounds, as the routing table carries them: each worker's
    ``start_direct`` (idempotent: the address the AppMaster put in
    ``RouteEntry.address``) and ``stats`` (its instances). Its CPU roles: client,
    replicas (the workers), control (the AppMaster); the idle proxies count as other.
    The report gives its throughput and p99 over ours: it wins only with more
    throughput and a lower p99. The bare direct client speaks plaintext only.

``--sdk`` drives ha_serving's sides with the SDK instead of bare stubs: the client
process runs ``ha_serving.client.AsyncClient`` (``call_raw``, the same deadline), for (a)
in mode "proxy" on its proxies and, with ``--direct-client``, for (d) in mode "direct"
(``ha_serving/client/_direct.py``: routes from the proxies' ``Serving.Routes``, the
proxy's ``Router``, ejection and at-most-once verdicts; the same proxies as its
directory and fallback, so its CPU roles count them as proxy; under TLS it shows the
client certificate ``up`` issued, ``Topology.direct_client_tls()``). Both of our sides
then run the same client code, so ``--sdk --direct-client`` measures the shipped direct
mode against the SDK through the proxy; a readiness check first makes sure the direct
side's calls really reach the workers directly, and the table gives its
``DirectStats`` (calls that fell back to a proxy). Ray Serve's side (b) and the
baseline (c) stay on bare stubs: the SDK is ours, not Serve's client, so ``--sdk`` makes
ours/serve a comparison of SDK + proxy against bare stub + proxy (expect it lower).

By default the bench brings up its own 2-cluster stack in a temporary run directory, on
addresses and ports of its own (so it runs beside ``make up``'s stack and the tests'),
and tears it down at the end; in plaintext by default, as Ray Serve's gRPC proxy serves
(a warning says so), or with ``--tls``: then ha_serving's stack speaks TLS as ``up``
brings it up by default, and the client verifies its proxies against the stack's CA,
so two runs, one with and one without, give what TLS costs. ``--run-dir`` reuses a
running stack instead (TLS as it was brought up): it refuses a cluster where Serve
already runs, and at the end shuts Serve down, scales ``bench-echo`` to 0 and removes
its AppMaster and proxies. The whole run is bounded
by ``--time-limit``; everything is cleaned up on the way out, also after an error or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# run as a script: the repository root, not this folder, makes ``bench`` importable
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import (
    ECHO,
    SERVICE,
    BareProxy,
    BareReplica,
    Route,
    Side,
    connect,
    measure,
    node_groups,
    pids,
    stack,
    wait_answering,
)

SERVE_APP = "bench-echo"
SERVE_NAMESPACE = "hasrv-bench-serve"
SERVICER = "ha_serving.proto.serving_pb2_grpc.add_ServingServicer_to_server"

OURS = "ha_serving proxy"
SERVE = "Ray Serve gRPC proxy"
BARE = "bare gRPC-in-actor"
DIRECT = "direct client->worker"
SDK_PROXY, SDK_DIRECT = "proxy", "direct"
"""The SDK's modes (``ha_serving.client.Mode``) the client drives our sides with."""


class BenchTimeout(Exception):
    pass


# --- (a) ha_serving -------------------------------------------------------------------


def service_ops(topo: Any, cluster: Any, store: Any) -> Any:
    """``ServiceOps`` on ``cluster``: on a TLS stack its proxies serve TLS, as `deploy`
    makes them."""
    from ha_serving.cli._services import ServiceOps

    return ServiceOps(
        store,
        topo.db.ref(),
        cluster.name,
        cluster.gcs_address,
        cluster.head.address,
        proxy_tls=topo.proxy_tls(),
    )


def deploy_ours(
    topo: Any, cluster_name: str, replicas: int, proxies: int, log: Any, *, direct: bool = False
) -> tuple[Side, list[Route]]:
    """Deploy bench-echo; with ``direct``, also read its workers' direct routes while this
    process is still the cluster's Ray driver (a second ``ray.init`` to the same cluster,
    then one to Serve's, killed the process: one Ray driver per process and cluster)."""
    from ha_serving._spec import load_spec, parse_spec
    from ha_serving.appmaster import NAMESPACE, appmaster_name
    from ha_serving.store import Store

    cluster = topo.cluster(cluster_name)
    spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
    spec.update(name=SERVICE, instances=replicas, instances_per_worker=1, proxies=proxies)
    store = Store.connect(topo.db.ref())
    ops = service_ops(topo, cluster, store)
    try:
        started = time.monotonic()
        ops.deploy(parse_spec(spec, source="bench"), ECHO / "code")
        ops.wait(SERVICE, timeout_s=60, progress=lambda _view: None)
        deadline = time.monotonic() + 30
        while len(targets := [e.address for e in store.list_endpoints(SERVICE)]) < proxies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{SERVICE} registered {len(targets)}/{proxies} proxies")
            time.sleep(0.2)
        log(
            f"ha_serving: {SERVICE} serving on cluster {cluster.name} via {', '.join(targets)} "
            f"({time.monotonic() - started:.1f}s)"
        )
        processes = pids(
            {
                "proxy": [f"{SERVICE}-p{k}" for k in range(proxies)],
                "replicas": [f"{SERVICE}-w{k}" for k in range(replicas)],
                "control": [appmaster_name(SERVICE)],
            },
            NAMESPACE,
        )
        routes = direct_routes(replicas) if direct else []
    finally:
        ops.close()
        store.close()
    return Side(OURS, targets, [], processes), routes


def direct_routes(replicas: int) -> list[Route]:
    """The workers' direct routes, as the routing table carries them
    (``RouteEntry.address`` is what ``BackendWorker.start_direct`` returns, and it is
    idempotent), with each worker's instances from its ``stats``. Needs this process to
    be a driver of bench-echo's cluster (``deploy_ours`` calls it)."""
    import ray

    from ha_serving.appmaster import NAMESPACE

    routes: list[Route] = []
    for k in range(replicas):
        name = f"{SERVICE}-w{k}"
        handle = ray.get_actor(name, namespace=NAMESPACE)
        answers: list[Any] = ray.get(
            [handle.start_direct.remote(), handle.stats.remote()], timeout=30
        )
        address: str = answers[0]
        stats: dict[str, Any] = answers[1]
        if not address:
            raise RuntimeError(f"worker {name} has no direct server: nothing to call directly")
        routes += [(address, name, instance_id) for instance_id in sorted(stats)]
    return routes


def direct_side(ours: Side, routes: list[Route], log: Any) -> Side:
    """The side of a client that calls the workers' direct servers itself, the proxy
    only telling it where they are (issue 14's "proxy as a directory"); the same worker
    and AppMaster processes as ``ours``, whose proxies idle meanwhile."""
    started = time.monotonic()
    side = Side(DIRECT, [], [], routes=routes)
    wait_answering(side, timeout_s=30)
    side.processes = {r: list(ours.processes.get(r, [])) for r in ("replicas", "control")}
    log(
        f"direct: {len(routes)} instances via "
        f"{', '.join(dict.fromkeys(r[0] for r in routes))} ({time.monotonic() - started:.1f}s)"
    )
    return side


def sdk_direct_side(ours: Side, topo: Any, log: Any) -> Side:
    """The side of the SDK in direct mode: its directory and fallback are ``ours``'s
    proxies (their processes count as its proxy role: they answer ``Serving.Routes``),
    the workers and AppMaster are the same; under TLS it shows the stack's client
    certificate (``Topology.direct_client_tls``)."""
    started = time.monotonic()
    side = Side(DIRECT, list(ours.targets), [], ca=ours.ca, sdk=SDK_DIRECT)
    if (tls := topo.direct_client_tls()) is not None:
        side.client_cert, side.client_key = tls.cert, tls.key
    wait_answering(side, timeout_s=30)
    side.processes = {r: list(ours.processes.get(r, [])) for r in ("proxy", "replicas", "control")}
    log(
        f"direct (SDK): workers called directly, {', '.join(side.targets)} the directory "
        f"({time.monotonic() - started:.1f}s)"
    )
    return side


def remove_ours(topo: Any, cluster_name: str, log: Any) -> None:
    """On a reused stack: scale bench-echo to 0 (its AppMaster drains and stops the
    workers), then kill the AppMaster and the proxies and withdraw the endpoints. The
    service's record stays in the DB (the store has no delete yet) at 0 instances."""
    import ray

    from ha_serving.appmaster import NAMESPACE, appmaster_name
    from ha_serving.store import Store

    cluster = topo.cluster(cluster_name)
    store = Store.connect(topo.db.ref())
    ops = service_ops(topo, cluster, store)
    try:
        spec = store.get_service(SERVICE).spec["spec"]
        with contextlib.suppress(Exception):  # best effort: the kills below still happen
            ops.change(SERVICE, kind="scale", instances=0)
            ops.wait(SERVICE, timeout_s=30, progress=lambda _view: None)
        connect(cluster, NAMESPACE)
        names = [appmaster_name(SERVICE)]
        names += [f"{SERVICE}-p{k}" for k in range(spec["proxies"])]
        names += [f"{SERVICE}-w{k}" for k in range(spec["instances"])]
        for name in names:  # the AppMaster first, so it rebuilds nothing
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        store.remove_endpoints(SERVICE, cluster.name)
        log(f"ha_serving: {SERVICE} removed from cluster {cluster.name}")
    finally:
        ops.close()
        store.close()
        if ray.is_initialized():
            ray.shutdown()


# --- (b) Ray Serve ----------------------------------------------------------------------


class ServeEcho:
    """The Serve deployment: what examples/echo does, behind Serve's gRPC proxy."""

    def __init__(self) -> None:
        import ray

        self.prefix = ">"
        self.replica = ray.get_runtime_context().get_actor_id()[:12]

    def Call(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        from ha_serving.proto.serving_pb2 import CallReply

        value = json.loads(request.payload)
        result = {"echo": value, "prefix": self.prefix, "version": "1"}
        return CallReply(payload=json.dumps(result).encode(), instance_id=self.replica, version="1")


def _free_port() -> int:
    """A port free on every interface (Serve's gRPC proxy binds [::]:port)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        return int(s.getsockname()[1])


@dataclass
class _ServeState:
    started: bool = False


_SERVE = _ServeState()


def start_serve(topo: Any, cluster_name: str, replicas: int, log: Any) -> Side:
    """Start Serve with a gRPC proxy on the cluster's head, deploy the echo app, and wait
    until a call through the proxy succeeds. The caller must ``stop_serve`` after."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    cluster = topo.cluster(cluster_name)
    connect(cluster, SERVE_NAMESPACE)
    with contextlib.suppress(ValueError):
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        raise SystemExit(f"error: Ray Serve already runs on cluster {cluster.name}: not mine")
    started = time.monotonic()
    grpc_port, http_port = _free_port(), _free_port()
    _SERVE.started = True  # from here on, stop_serve shuts it down, whatever happens
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": cluster.head.address, "port": http_port},
        grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER]),
    )
    deployment = serve.deployment(
        ServeEcho,
        name="echo",
        num_replicas=replicas,
        max_ongoing_requests=64,
        ray_actor_options={"num_cpus": 0.5},
    )
    # an application without a route prefix is not an ingress: no proxy routes to it
    serve.run(deployment.bind(), name=SERVE_APP, route_prefix=f"/{SERVE_APP}")
    target = f"{cluster.head.address}:{grpc_port}"
    side = Side(SERVE, [target], [("application", SERVE_APP)])
    wait_answering(side, timeout_s=30)
    roles: dict[str, list[str]] = {"proxy": [], "replicas": [], "control": []}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve":
            name = actor["name"]
            role = "proxy" if "PROXY" in name else "replicas" if "REPLICA" in name else "control"
            roles[role].append(name)
    side.processes = pids(roles, "serve")
    log(
        f"Ray Serve: {SERVE_APP} serving on cluster {cluster.name} via {target} "
        f"({time.monotonic() - started:.1f}s)"
    )
    return side


# --- (c) optional baseline ------------------------------------------------------------


def start_bare(replicas: int, log: Any) -> Side:
    """The baseline on the cluster the driver is connected to (Serve's). Its actors are
    owned by this driver: they end when it disconnects (``stop_serve``)."""
    import ray

    started = time.monotonic()
    replica_cls: Any = ray.remote(BareReplica)
    proxy_cls: Any = ray.remote(BareProxy)
    handles = [
        replica_cls.options(name=f"bare-r{k}", num_cpus=0.5).remote() for k in range(replicas)
    ]
    proxy = proxy_cls.options(name="bare-p0", num_cpus=0.01).remote(handles)
    target = ray.get(proxy.start.remote(), timeout=60)
    side = Side(BARE, [target], [], owned=[proxy, *handles])
    wait_answering(side, timeout_s=30)
    names = {"proxy": ["bare-p0"], "replicas": [f"bare-r{k}" for k in range(replicas)]}
    side.processes = pids(names, SERVE_NAMESPACE)
    log(f"baseline: bare proxy via {target} ({time.monotonic() - started:.1f}s)")
    return side


def stop_serve(log: Any) -> None:
    """Shut down the Serve this run started (never another one), then disconnect: the
    baseline's actors are owned by this driver and end with it."""
    import ray
    from ray import serve

    if ray.is_initialized():
        if _SERVE.started:
            serve.shutdown()
            _SERVE.started = False
            log("Ray Serve shut down")
        ray.shutdown()


# --- the run ----------------------------------------------------------------------------


def report(sides: list[Side], args: argparse.Namespace) -> dict[str, Any]:
    results = [s.summary() for s in sides]
    by_name = {r["system"]: r for r in results}
    ours, serve = by_name[OURS], by_name[SERVE]
    ratios = {
        "throughput_ours_over_serve": round(ours["throughput_rps"] / serve["throughput_rps"], 2)
        if serve["throughput_rps"]
        else math.nan,
        "p99_serve_over_ours": round(serve["p99_ms"] / ours["p99_ms"], 2)
        if ours["p99_ms"]
        else math.nan,
    }
    out = {
        "config": {
            "replicas": args.replicas,
            "concurrency": args.concurrency,
            "seconds_per_system": args.duration,
            "rounds": args.rounds,
            "warmup_s_per_round": args.warmup,
            "tls": next(s.ca is not None for s in sides if s.name == OURS),
            "sdk": next(s.sdk is not None for s in sides if s.name == OURS),
        },
        "results": results,
        "ratios": ratios,
    }
    if (bare := by_name.get(BARE)) is not None:
        ratios["throughput_ours_over_bare"] = round(
            ours["throughput_rps"] / bare["throughput_rps"], 2
        )
    if (direct := by_name.get(DIRECT)) is not None:
        ratios["throughput_direct_over_ours"] = _ratio(direct["throughput_rps"], ours)
        ratios["p99_direct_over_ours"] = _ratio(direct["p99_ms"], ours, key="p99_ms")
    return out


def _ratio(value: float, ours: dict[str, Any], key: str = "throughput_rps") -> float:
    return round(value / ours[key], 2) if ours[key] else math.nan


def print_table(out: dict[str, Any]) -> None:
    c = out["config"]
    w = sys.stdout.write
    w(
        f"\necho, {c['replicas']} replicas per system, {c['concurrency']} concurrent client "
        f"tasks, {c['rounds']} x {c['seconds_per_system'] / c['rounds']:.1f} s per system; "
        f"ha_serving over {'TLS' if c.get('tls') else 'plaintext'}\n"
        + (
            "ha_serving's sides driven by the SDK (AsyncClient), Ray Serve's by a bare stub\n\n"
            if c.get("sdk")
            else "every side driven by a bare gRPC stub\n\n"
        )
    )
    header = f"{'system':<22} {'proxies':>7} {'requests':>9} {'req/s':>8} {'p50 ms':>8} "
    header += f"{'p99 ms':>8} {'max ms':>8} {'errors':>6}  per round req/s"
    w(header + "\n" + "-" * len(header) + "\n")
    for r in out["results"]:
        w(
            f"{r['system']:<22} {r['proxies']:>7} {r['requests']:>9} {r['throughput_rps']:>8.1f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r['errors']:>6}  "
            f"{r['rounds_rps']}\n"
        )
    roles = ("client", "proxy", "replicas", "control", "ray daemons", "other")
    w(f"\nCPU ms per request {'':<4}" + "".join(f"{r:>12}" for r in roles) + f"{'total':>10}\n")
    for r in out["results"]:
        cpu = r["cpu_ms_per_request"]
        cells = "".join(f"{cpu.get(role, 0.0):>12.3f}" for role in roles)
        w(f"{r['system']:<22}{cells}{sum(cpu.values()):>10.3f}\n")
    w(
        "(control: AppMaster / Serve controller; ray daemons: raylet, GCS, agents of the "
        "system's cluster;\n other: the rest of the machine, i.e. anything else running "
        "meanwhile: noise)\n"
    )
    direct = next((r for r in out["results"] if r["system"] == DIRECT), None)
    if direct is not None and "direct_stats" in direct:
        d = direct["direct_stats"]
        w(
            f"({DIRECT}: the SDK's mode=\"direct\": routes from the proxies' Serving.Routes, "
            "the proxy's Router and rules;\n "
            f"{d.get('direct', 0)} calls direct, {d.get('proxied', 0)} through a proxy, "
            f"{d.get('ejections', 0)} ejections, {d.get('refreshes', 0)} route fetches, "
            "warm-up included)\n"
        )
    elif direct is not None:
        w(
            f"({DIRECT}: the client calls the workers' direct servers itself, round-robin; "
            "ha_serving's proxies\n only told it where they are, and idle meanwhile)\n"
        )
    ratios = out["ratios"]
    t, p = ratios["throughput_ours_over_serve"], ratios["p99_serve_over_ours"]
    w(f"\nthroughput ours/serve: {t:.2f}x   (target >= 3x: {'met' if t >= 3 else 'MISSED'})\n")
    w(f"p99 serve/ours:        {p:.2f}x   (target >= 3x: {'met' if p >= 3 else 'MISSED'})\n")
    if "throughput_ours_over_bare" in ratios:
        w(f"throughput ours/bare:  {ratios['throughput_ours_over_bare']:.2f}x\n")
    if "throughput_direct_over_ours" in ratios:
        t, p = ratios["throughput_direct_over_ours"], ratios["p99_direct_over_ours"]
        verdict = "wins" if t > 1 and p < 1 else "does not win"
        w(
            f"direct/ours: throughput {t:.2f}x, p99 {p:.2f}x   (the direct client {verdict}: "
            "it needs throughput > 1x and p99 < 1x)\n"
        )


def _alarm(_signum: int, _frame: object) -> None:
    raise BenchTimeout("time limit reached")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, help="reuse this running stack (default: own)")
    parser.add_argument("--ours-cluster", default="a", help="cluster for ha_serving (a)")
    parser.add_argument("--serve-cluster", default="b", help="cluster for Ray Serve (b)")
    parser.add_argument("--replicas", type=int, default=2, help="echo replicas per system")
    parser.add_argument("--proxies", type=int, default=1, help="ha_serving proxies (Serve: 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="client tasks in flight")
    parser.add_argument("--duration", type=float, default=16.0, help="measured s per system")
    parser.add_argument("--rounds", type=int, default=2, help="turns per system")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured s per turn")
    parser.add_argument("--time-limit", type=int, default=120, help="abort after this (s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 2 if a target is missed")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also measure a bare gRPC-in-actor proxy (the floor; +1/3 run time)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="bring the own stack up with TLS: ha_serving's Keepers, link and proxies, and "
        "the client's calls to its proxies (Ray Serve's gRPC proxy stays plaintext); "
        "compare with a run without to see what TLS costs",
    )
    parser.add_argument(
        "--direct-client",
        action="store_true",
        help="also measure a client calling ha_serving's workers directly, the proxy only "
        "a directory (issue 14; +1/3 run time)",
    )
    parser.add_argument(
        "--sdk",
        action="store_true",
        help="drive ha_serving's sides with the SDK's AsyncClient (mode proxy; with "
        "--direct-client, mode direct) instead of bare stubs; Ray Serve's side stays on "
        "bare stubs",
    )
    return parser


def refused(args: argparse.Namespace) -> str | None:
    """Why these arguments cannot run (None: they can)."""
    if args.ours_cluster == args.serve_cluster:
        return "--ours-cluster and --serve-cluster must differ (one Ray driver each)"
    if args.tls and args.direct_client and not args.sdk:
        return (
            "the bare --direct-client calls the workers in plaintext: not with --tls "
            "(--sdk --direct-client --tls measures the SDK's direct mode over TLS)"
        )
    return None


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Set up both systems, measure, clean up; the results (raises on failure)."""
    with stack(args.run_dir, log, tls=args.tls) as (topo, own):
        ours: Side | None = None
        bare_direct = args.direct_client and not args.sdk
        if bare_direct and topo.tls is not None:
            raise SystemExit(
                "error: the bare --direct-client calls the workers in plaintext, not over "
                "TLS (add --sdk to measure the SDK's direct mode over TLS)"
            )
        try:
            ours, routes = deploy_ours(
                topo,
                args.ours_cluster,
                args.replicas,
                args.proxies,
                log,
                direct=bare_direct,
            )
            if topo.tls is not None:
                ours.ca = str(topo.tls.ca)
            else:
                log(
                    "warning: TLS is off: ha_serving's stack, proxies and client speak "
                    "plaintext here, as Ray Serve's gRPC proxy does (--tls measures it with TLS)"
                )
            if args.sdk:
                ours.sdk = SDK_PROXY
            mine = [ours]
            if args.direct_client and args.sdk:
                mine.append(sdk_direct_side(ours, topo, log))
            elif args.direct_client:
                mine.append(direct_side(ours, routes, log))
            for side in mine:
                side.daemon_groups = node_groups(topo, args.ours_cluster)
            try:
                theirs = [start_serve(topo, args.serve_cluster, args.replicas, log)]
                if args.baseline:
                    theirs.append(start_bare(args.replicas, log))
                for side in theirs:
                    side.daemon_groups = node_groups(topo, args.serve_cluster)
                sides = [*mine, *theirs]
                measure(
                    sides,
                    rounds=args.rounds,
                    seconds=args.duration / args.rounds,
                    warmup=args.warmup,
                    concurrency=args.concurrency,
                    log=log,
                )
                return report(sides, args)
            finally:
                signal.alarm(0)  # clean-up must not be interrupted
                stop_serve(log)
        finally:
            signal.alarm(0)
            if ours is not None and not own:
                remove_ours(topo, args.ours_cluster, log)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if (problem := refused(args)) is not None:
        parser.error(problem)
    t0 = time.monotonic()

    def log(message: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - t0:6.1f}s] {message}\n")

    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(args.time_limit)
    try:
        out = run(args, log)
    except BenchTimeout:
        log(f"error: the bench exceeded --time-limit {args.time_limit}s; cleaned up")
        return 1
    print_table(out)
    if failed := [r for r in out["results"] if r["errors"]]:
        counts = ", ".join(f"{r['system']}: {r['errors']:,} of {r['requests']:,}" for r in failed)
        log(f"error: calls failed ({counts}): these figures do not measure serving")
        return 1
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    log(f"done in {time.monotonic() - t0:.1f}s")
    ratios = out["ratios"]
    met = ratios["throughput_ours_over_serve"] >= 3 and ratios["p99_serve_over_ours"] >= 3
    return 2 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())

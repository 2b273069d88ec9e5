"""Where the data plane's CPU goes: the echo served through five stacks of layers, from
a bare gRPC-in-actor proxy up to ha_serving's own proxy and backend, one layer at a time.

    .venv/bin/python bench/dataplane_layers.py            # own temporary stack
    .venv/bin/python bench/dataplane_layers.py --run-dir .run --cluster b

=====  ==========================================  ==================================
layer  proxy                                       replica
=====  ==========================================  ==================================
A      bare: grpc.aio in an async actor,           plain sync actor: ``call(payload)``
       round-robin, ``await handle.call.remote``
B      bare                                        async actor, ``async def call``
C      bare                                        async actor, the sync body run in
                                                   a thread pool (as for sync methods)
D      bare, unwrapping a ``CallResult``           ``BackendWorker`` + ``InstanceHost``
                                                   hosting ``examples/echo``
E      ha_serving ``ProxyActor`` (router, caps,    ``BackendWorker`` + ``InstanceHost``
       deadlines, metrics)                         hosting ``examples/echo``
=====  ==========================================  ==================================

Each layer gets 2 replicas (0.5 CPU each) and the same client as ``grpc_vs_serve.py``
(``harness.drive``: a separate process, ``--concurrency`` grpc.aio tasks); layers take
turns over ``--rounds``. The table gives throughput, latency and the CPU milliseconds
per request spent in the proxy process and in the replica processes, so the difference
between two rows is the cost of one layer. Every actor is owned by this driver and ends with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# run as a script: the repository root, not this folder, makes ``bench`` importable
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import harness

NAMESPACE = "hasrv-bench-layers"


def _echo(payload: bytes) -> bytes:
    return json.dumps({"echo": json.loads(payload), "prefix": ">", "version": "1"}).encode()


class SyncReplica:
    def call(self, payload: bytes) -> bytes:
        return _echo(payload)


class AsyncReplica:
    async def call(self, payload: bytes) -> bytes:
        return _echo(payload)


class PoolReplica:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(64)

    async def call(self, payload: bytes) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._pool, _echo, payload)


class LayerProxy(harness.BareProxy):
    """The bare proxy; with ``instance_ids`` it calls BackendWorkers and unwraps the
    CallResult they answer with."""

    def __init__(self, replicas: list[Any], instance_ids: list[str] | None = None) -> None:
        super().__init__(replicas)
        self._ids = instance_ids

    async def start(self) -> str:
        if self._ids is None:
            return await super().start()
        import grpc
        import ray

        from ha_serving.proto.serving_pb2 import CallReply, CallRequest

        async def call(request: Any, _context: Any) -> Any:
            self._next = k = (self._next + 1) % len(self._replicas)
            result = await self._replicas[k].call.remote(self._ids[k], "echo", request.payload)
            return CallReply(payload=result.payload, instance_id=result.instance_id, version="1")

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


def _pid(handle: Any) -> int:
    import ray

    return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


def _side(name: str, proxy: Any, replicas: list[Any], groups: set[int]) -> harness.Side:
    import ray

    address = ray.get(proxy.start.remote(), timeout=60)
    target = address if isinstance(address, str) else address.address
    side = harness.Side(name, [target], [], owned=[proxy, *replicas], daemon_groups=groups)
    harness.wait_answering(side, timeout_s=30)
    side.processes = {"proxy": [_pid(proxy)], "replicas": [_pid(r) for r in replicas]}
    return side


def build(groups: set[int], replicas: int) -> list[harness.Side]:
    """Start every layer's actors on the connected cluster."""
    import ray

    from ha_serving._wire import RouteEntry, RoutingTable
    from ha_serving.backend import BackendWorker, make_package
    from ha_serving.proxy import ProxyActor

    proxy_cls: Any = ray.remote(LayerProxy).options(num_cpus=0.01)
    sides = []
    for name, cls, concurrency in (
        ("A bare", SyncReplica, 1),
        ("B +async actor", AsyncReplica, 64),
        ("C +thread pool", PoolReplica, 64),
    ):
        actor: Any = ray.remote(cls).options(num_cpus=0.5, max_concurrency=concurrency)
        reps = [actor.remote() for _ in range(replicas)]
        sides.append(_side(name, proxy_cls.remote(reps), reps, groups))

    package = make_package(harness.ECHO / "code")
    worker_cls: Any = ray.remote(BackendWorker)
    workers, ids = [], []
    for k in range(replicas):
        name = f"layers-w{k}"
        worker = worker_cls.options(
            name=name, namespace=NAMESPACE, num_cpus=0.5, max_concurrency=1000
        ).remote(name)
        added = ray.get(
            worker.add_instance.remote(
                f"layers-{k}",
                package=package.data,
                digest=package.digest,
                import_path="echo:Echo",
                version="1",
                config={"prefix": ">"},
            ),
            timeout=60,
        )
        if not added.ok:
            raise RuntimeError(f"add_instance: {added.message}")
        workers.append(worker)
        ids.append(f"layers-{k}")
    sides.append(_side("D +InstanceHost", proxy_cls.remote(workers, ids), workers, groups))

    ours: Any = ray.remote(ProxyActor).options(num_cpus=0.01, max_concurrency=1000)
    proxy = ours.remote(harness.SERVICE, namespace=NAMESPACE)
    ray.get(proxy.start.remote(), timeout=60)
    entries = tuple(RouteEntry(i, f"layers-w{k}", "1", 64) for k, i in enumerate(ids))
    ray.get(proxy.update_routes.remote(RoutingTable(harness.SERVICE, 1, entries)), timeout=30)
    sides.append(_side("E +ha_serving proxy", proxy, workers, groups))
    return sides


def print_layers(sides: list[harness.Side]) -> None:
    w = sys.stdout.write
    header = f"{'layer':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
    header += f"{'proxy':>8} {'replicas':>9} {'delta':>8}   (CPU ms per request)"
    w("\n" + header + "\n" + "-" * len(header) + "\n")
    previous = None
    for side in sides:
        r = side.summary()
        cpu = r["cpu_ms_per_request"]
        own = cpu.get("proxy", 0.0) + cpu.get("replicas", 0.0)
        delta = "" if previous is None else f"{own - previous:+.3f}"
        previous = own
        w(
            f"{r['system']:<22} {r['throughput_rps']:>8.1f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['errors']:>6} {cpu.get('proxy', 0.0):>8.3f} "
            f"{cpu.get('replicas', 0.0):>9.3f} {delta:>8}\n"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, help="reuse this running stack (default: own)")
    parser.add_argument("--cluster", default="b", help="cluster to run the layers on (b)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="per layer and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        sys.stderr.write(message + "\n")

    import ray

    with harness.stack(args.run_dir, log) as (topo, _own):
        cluster = topo.cluster(args.cluster)
        harness.connect(cluster, NAMESPACE)
        try:
            sides = build(harness.node_groups(topo, args.cluster), args.replicas)
            harness.measure(
                sides,
                rounds=args.rounds,
                seconds=args.seconds,
                warmup=1.0,
                concurrency=args.concurrency,
                log=log,
            )
            print_layers(sides)
        finally:
            ray.shutdown()  # every actor here is owned by this driver: they end now
    return 0


if __name__ == "__main__":
    sys.exit(main())

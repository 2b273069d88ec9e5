"""Test doubles for users and for this package's own unit tests.

``FakeRuntime`` implements the ``Runtime`` Protocol in-process: named actors are plain
objects, calls are direct (awaited if async). ``crash(name)`` simulates a process death
(with Ray's restart: a fresh object under the same name), so AppMaster recovery logic
runs in unit tests without Ray and in fake time. With ``ActorTimings`` its actor starts,
loads, reconfigurations, drains and stops take time (of an injected sleep), as Ray's do,
so a control-plane simulation (``sim/``) sees rollouts that last as long as real ones.
``FakeWorker`` stands in for ``BackendWorker``: it keeps instance records and runs no
user code.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ha_serving._wire import ControlResult, RoutingTable
from ha_serving.proxy import ProxyMetrics
from ha_serving.runtime import ActorSpec, ActorUnavailable, Runtime

Config = Mapping[str, Any]
"""A config as ``BackendWorker`` takes it."""


@dataclass(frozen=True)
class ActorTimings:
    """Seconds the fake runtime's actor operations take; all 0 (instant) by default.

    For scale: on this project's 2-core machines 50 Ray actors started in ~16 s (DESIGN.md);
    the simulation's defaults (``sim/``) say what they assume and why."""

    start_s: float = 0.0
    """``create``: the actor's process starts and its constructor runs."""
    load_s: float = 0.0
    """``add_instance`` / ``load_code``: the code is imported and the instance built."""
    reconfigure_s: float = 0.0
    """``reconfigure``: an in-place config change."""
    drain_s: float = 0.0
    """``wait_idle``: the instance's in-flight calls finish."""
    stop_s: float = 0.0
    """``stop`` (proxy) / ``shutdown`` (worker): the grace period actually used."""

    def __post_init__(self) -> None:
        negative = [k for k, v in vars(self).items() if v < 0]
        if negative:
            raise ValueError(f"actor timings cannot be negative: {', '.join(negative)}")

    def of(self, method: str) -> float:
        """How long a call of ``method`` takes (0 for any other method)."""
        field = _TIMED_METHODS.get(method)
        return float(getattr(self, field)) if field is not None else 0.0


_TIMED_METHODS = {
    "add_instance": "load_s",
    "load_code": "load_s",
    "reconfigure": "reconfigure_s",
    "wait_idle": "drain_s",
    "stop": "stop_s",
    "shutdown": "stop_s",
}


class FakeRuntime:
    def __init__(
        self,
        timings: ActorTimings | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.timings = timings or ActorTimings()
        self._sleep = sleep
        """Waits out the timings: ``FakeClock.sleep`` in fake-time tests."""
        self._starting: dict[str, asyncio.Future[None]] = {}
        """Actors being created (``start_s`` not over yet): they exist, as in Ray, and a
        call to one waits for its constructor."""
        self.actors: dict[str, Any] = {}
        self.specs: dict[str, ActorSpec] = {}
        self.created: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.down: set[str] = set()
        """Names that exist but do not answer (a paused or partitioned actor)."""
        self.killed: list[str] = []
        """Names killed through ``kill`` (not crashes), in order."""

    async def create(self, spec: ActorSpec) -> None:
        if spec.name in self.actors:
            return
        starting = self._starting.get(spec.name)
        if starting is not None:  # created concurrently: wait for that one
            await asyncio.shield(starting)
            return
        if self.timings.start_s > 0:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._starting[spec.name] = done
            try:
                await self._sleep(self.timings.start_s)
            finally:
                del self._starting[spec.name]
                done.set_result(None)
        self.actors[spec.name] = spec.cls(*spec.args, **spec.kwargs)
        self.specs[spec.name] = spec
        self.created.append(spec.name)

    async def exists(self, name: str) -> bool:
        return name in self.actors or name in self._starting

    async def call(
        self,
        name: str,
        method: str,
        *args: Any,
        timeout_s: float = 30.0,  # noqa: ARG002 - calls are direct; nothing can time out
        **kwargs: Any,
    ) -> Any:
        starting = self._starting.get(name)
        if starting is not None:
            await asyncio.shield(starting)
        actor = self.actors.get(name)
        if actor is None:
            raise ActorUnavailable(name, "no such actor")
        if name in self.down:
            raise ActorUnavailable(name, "not answering")
        self.calls.append((name, method))
        delay = self.timings.of(method)
        if delay > 0:
            await self._sleep(delay)
            if self.actors.get(name) is not actor:  # killed or crashed meanwhile
                raise ActorUnavailable(name, "died during the call")
        result = getattr(actor, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def kill(self, name: str, *, restart: bool = False) -> None:
        if restart:
            self.crash(name)
        elif self.actors.pop(name, None) is not None:
            self.killed.append(name)

    def crash(self, name: str, *, restart: bool = True) -> None:
        """The actor's process dies; Ray restarts it empty (or not, ``restart=False``)."""
        spec = self.specs[name]
        if restart:
            self.actors[name] = spec.cls(*spec.args, **spec.kwargs)
        else:
            self.actors.pop(name, None)


class FakeProxy:
    """Stands in for ``ProxyActor``: records routing tables instead of serving gRPC."""

    _next_port = 20000

    def __init__(self, service: str, **_: Any) -> None:
        self.service = service
        self.table = RoutingTable(service=service, version=0)
        self.tables: list[RoutingTable] = []
        FakeProxy._next_port += 1
        self._port = FakeProxy._next_port
        self.stopped = False
        self.stopped_with: float | None = None
        """The grace period ``stop`` was called with."""
        self.load: dict[str, int] = {}
        """Calls in flight per instance this fake reports (a test sets it)."""
        self.metrics = ProxyMetrics(
            service, inflight=lambda: self.load, routed=lambda: len(self.table.entries)
        )
        """A real proxy's metrics: a test records answered calls with ``observe``."""

    async def start(self) -> Any:
        from ha_serving.proxy import ProxyEndpoint

        return ProxyEndpoint(address=f"127.0.9.1:{self._port}", metrics_port=self._port + 1)

    async def update_routes(self, table: RoutingTable) -> int:
        if table.version > self.table.version:
            self.table = table
            self.tables.append(table)
        return self.table.version

    async def routes_version(self) -> int:
        return self.table.version

    async def inflight(self) -> dict[str, int]:
        return dict(self.load)

    async def metrics_text(self) -> str:
        return self.metrics.metrics_text()

    async def stop(self, grace_s: float | None = None) -> None:
        """Like ``ProxyActor.stop``: from now on the proxy takes no call."""
        self.stopped_with = grace_s
        self.stopped = True


class FakeWorker:
    """Stands in for ``BackendWorker`` (same control methods): it records the instances
    it hosts and their versions, and every instance is healthy. No user code runs, so a
    simulation can host thousands of instances; time comes from ``ActorTimings``."""

    def __init__(self, name: str, **_: Any) -> None:
        self.name = name
        self.instances: dict[str, dict[str, Any]] = {}
        self.closed = False

    async def ping(self) -> str:
        return self.name

    async def start_direct(self) -> str:
        """No direct server: proxies would call this worker through Ray."""
        return ""

    async def add_instance(
        self,
        instance_id: str,
        *,
        package: bytes,  # noqa: ARG002 - BackendWorker's signature
        digest: str,  # noqa: ARG002
        import_path: str,  # noqa: ARG002
        version: str,
        config: Config | None = None,
        max_concurrency: int | None = None,
    ) -> ControlResult:
        self.instances[instance_id] = {
            "inflight": 0,
            "version": version,
            "healthy": True,
            "max_concurrency": max_concurrency,
            "config": config,
        }
        return ControlResult(ok=True)

    async def load_code(
        self,
        instance_id: str,
        *,
        package: bytes,
        digest: str,
        import_path: str,
        version: str,
        config: Config | None = None,
    ) -> ControlResult:
        if instance_id not in self.instances:
            return ControlResult.failed("NOT_FOUND", f"no instance {instance_id}")
        return await self.add_instance(
            instance_id,
            package=package,
            digest=digest,
            import_path=import_path,
            version=version,
            config=config,
            max_concurrency=self.instances[instance_id]["max_concurrency"],  # code, not cap
        )

    async def reconfigure(self, instance_id: str, config: Config) -> ControlResult:
        inst = self.instances.get(instance_id)
        if inst is None:
            return ControlResult.failed("NOT_FOUND", f"no instance {instance_id}")
        inst["config"] = config
        return ControlResult(ok=True)

    async def set_max_concurrency(
        self, instance_id: str, max_concurrency: int | None
    ) -> ControlResult:
        inst = self.instances.get(instance_id)
        if inst is None:
            return ControlResult.failed("NOT_FOUND", f"no instance {instance_id}")
        inst["max_concurrency"] = max_concurrency
        return ControlResult(ok=True)

    async def remove_instance(self, instance_id: str) -> ControlResult:
        self.instances.pop(instance_id, None)
        return ControlResult(ok=True)

    async def check_health(self, instance_id: str) -> bool:
        return instance_id in self.instances

    async def check_health_all(self) -> dict[str, bool]:
        return dict.fromkeys(self.instances, True)

    async def wait_idle(self, instance_id: str, timeout_s: float) -> bool:  # noqa: ARG002
        return True  # no calls in flight: the drain's time is ActorTimings.drain_s

    async def stats(self) -> dict[str, dict[str, Any]]:
        return {i: {k: v for k, v in s.items() if k != "config"} for i, s in self.instances.items()}

    async def shutdown(self, grace_s: float = 5.0) -> bool:  # noqa: ARG002
        self.closed = True
        return True


def _check(runtime: FakeRuntime) -> Runtime:
    return runtime  # mypy checks FakeRuntime against the Protocol here


__all__ = ["ActorTimings", "FakeProxy", "FakeRuntime", "FakeWorker"]

"""Test doubles for users and for this package's own unit tests.

``FakeRuntime`` implements the ``Runtime`` Protocol in-process: named actors are plain
objects, calls are direct (awaited if async). ``crash(name)`` simulates a process death
(with Ray's restart: a fresh object under the same name), so AppMaster recovery logic
runs in unit tests without Ray and in fake time.
"""

from __future__ import annotations

import inspect
from typing import Any

from ha_serving._wire import RoutingTable
from ha_serving.proxy import ProxyMetrics
from ha_serving.runtime import ActorSpec, ActorUnavailable, Runtime


class FakeRuntime:
    def __init__(self) -> None:
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
        self.actors[spec.name] = spec.cls(*spec.args, **spec.kwargs)
        self.specs[spec.name] = spec
        self.created.append(spec.name)

    async def exists(self, name: str) -> bool:
        return name in self.actors

    async def call(
        self,
        name: str,
        method: str,
        *args: Any,
        timeout_s: float = 30.0,  # noqa: ARG002 - calls are direct; nothing can time out
        **kwargs: Any,
    ) -> Any:
        actor = self.actors.get(name)
        if actor is None:
            raise ActorUnavailable(name, "no such actor")
        if name in self.down:
            raise ActorUnavailable(name, "not answering")
        self.calls.append((name, method))
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


def _check(runtime: FakeRuntime) -> Runtime:
    return runtime  # mypy checks FakeRuntime against the Protocol here


__all__ = ["FakeProxy", "FakeRuntime"]

"""ProxyActor: the Ray actor body of a proxy; the only Ray-aware code of the proxy.

The AppMaster creates it with ``ray.remote(ProxyActor).options(**proxy_actor_options(...))``
and calls ``start()`` (bind to this node's IP, port 0), then ``update_routes(table)`` on
every routing change, ``inflight()`` while draining, and ``stop(grace_s)`` before killing
it. A routed call goes to the worker's own gRPC server (``DirectBackendCaller``) when
its routing entry has an ``address``; ``RayBackendCaller``, the fallback, turns it into
``BackendWorker.call`` on the worker actor found by name. The fallback serves entries
without an address (a worker whose direct server could not be started: outside Ray
without a host, or a failed bind) and every call of a proxy whose ``data_plane`` setting
is "ray". Everything else lives in ``ProxyServer`` and ``Router``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ha_serving._errors import BackendUnavailable
from ha_serving._settings import ProxySettings
from ha_serving._wire import CallResult, RoutingTable
from ha_serving.proxy._direct import DirectBackendCaller
from ha_serving.proxy._server import BackendCaller, ProxyServer
from ha_serving.util.tls import TlsFiles


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    """Where a started proxy listens: gRPC ``host:port`` and the metrics HTTP port."""

    address: str
    metrics_port: int


def proxy_actor_options(
    name: str, *, namespace: str, num_cpus: float = 1.0, detached: bool = True
) -> dict[str, Any]:
    """Options for ``ray.remote(ProxyActor).options(...)``: named and detached so an
    AppMaster restart re-attaches to it; ``num_cpus=1`` keeps it off 0-CPU heads;
    ``max_task_retries=0`` because Ray must not replay control calls on its own."""
    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "num_cpus": num_cpus,
        "max_concurrency": 1000,
        "max_restarts": 0,
        "max_task_retries": 0,
    }
    if detached:
        options["lifetime"] = "detached"
    return options


NEVER_SENT_CAUSE = "The actor is restarting"
"""Ray 2.60's cause for a call it held back, never pushed, because the actor's process
had died (measured: calls made 0.1-0.4 s after a SIGKILL). A call already pushed to the
process fails with an ``RpcError`` cause instead ("Socket closed"): that one may have run.
Ray is pinned to 2.60.x; ``test_a_killed_worker_fails_only_the_calls_in_flight_on_it``
fails if a Ray upgrade changes this."""


def never_sent(exc: BaseException) -> bool:
    """Whether Ray failed this actor call without ever sending it to the actor."""
    import ray.exceptions

    return isinstance(exc, ray.exceptions.ActorUnavailableError) and NEVER_SENT_CAUSE in str(exc)


class RayBackendCaller:
    """``BackendCaller`` over Ray: looks worker actors up by name once and caches them."""

    MISSING_TTL_S = 1.0
    """Seconds a failed lookup is remembered, so calls routed to a worker that is gone
    (until the AppMaster's next table) skip the GCS round trip and retry elsewhere."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._handles: dict[str, Any] = {}
        self._missing: dict[str, tuple[float, str]] = {}  # worker -> (since, reason)

    async def call(
        self,
        worker: str,
        instance_id: str,
        method: str,
        payload: bytes,
        timeout_s: float | None,
        *,
        address: str = "",  # noqa: ARG002 - the direct path's; Ray finds actors by name
    ) -> CallResult:
        import ray.exceptions

        handle = await self._handle(worker)
        try:
            ref = handle.call.remote(instance_id, method, payload)
            result = await asyncio.wait_for(ref, timeout_s)
        except ray.exceptions.RayActorError as exc:
            # Died or unreachable: a fresh lookup next time finds a restarted actor or
            # tells us it is gone. Unsafe to retry unless Ray never sent the call.
            self._handles.pop(worker, None)
            raise BackendUnavailable(
                worker, str(exc), reached_user_code=not never_sent(exc)
            ) from None
        if not isinstance(result, CallResult):
            raise TypeError(f"worker {worker!r} answered {type(result).__name__}")
        return result

    async def probe(
        self,
        worker: str,
        timeout_s: float,
        *,
        address: str = "",  # noqa: ARG002 - the direct path's; Ray finds actors by name
    ) -> bool:
        """Ping ``worker`` through a fresh lookup: a restarted actor answers only once
        its new process runs, a restarting one fails or times out."""
        import ray.exceptions

        self._handles.pop(worker, None)
        self._missing.pop(worker, None)
        try:
            handle = await self._handle(worker)
            await asyncio.wait_for(handle.ping.remote(), timeout_s)
        except (BackendUnavailable, ray.exceptions.RayError, TimeoutError):
            self._handles.pop(worker, None)
            return False
        return True

    async def _handle(self, worker: str) -> Any:
        if (handle := self._handles.get(worker)) is not None:
            return handle
        missing = self._missing.get(worker)
        if missing is not None and time.monotonic() - missing[0] < self.MISSING_TTL_S:
            raise BackendUnavailable(worker, missing[1], reached_user_code=False)
        import ray

        try:
            # get_actor blocks on the GCS: keep it off the event loop serving calls.
            handle = await asyncio.to_thread(ray.get_actor, worker, namespace=self._namespace)
        except ValueError as exc:  # no such actor (dead, or not created yet): never sent
            self._missing[worker] = (time.monotonic(), str(exc))
            raise BackendUnavailable(worker, str(exc), reached_user_code=False) from None
        self._missing.pop(worker, None)
        self._handles[worker] = handle
        return handle


class ProxyActor:
    """Runs a ``ProxyServer`` for one service inside a Ray actor."""

    def __init__(
        self,
        service: str,
        *,
        namespace: str,
        cluster: str = "",
        settings: ProxySettings | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        settings = settings or ProxySettings()
        caller: BackendCaller = RayBackendCaller(namespace)
        self._direct: DirectBackendCaller | None = None
        if settings.data_plane == "direct":
            # the proxy's certificate doubles as its client certificate towards workers
            caller = self._direct = DirectBackendCaller(
                caller, tls=tls, connect_timeout_s=settings.direct_connect_timeout_s
            )
        self._server = ProxyServer(service, caller, settings=settings, cluster=cluster, tls=tls)
        self._endpoint: ProxyEndpoint | None = None

    async def start(self) -> ProxyEndpoint:
        """Bind gRPC and ``/metrics`` to this node's IP on free ports; idempotent."""
        if self._endpoint is None:
            import ray.util

            # Ray leaves it unannotated; it returns the IP this node registered with.
            node_ip = cast("Callable[[], str]", ray.util.get_node_ip_address)
            host = node_ip()
            address = await self._server.start(host, 0)
            metrics_port = self._server.metrics.start_http(host, 0)
            self._endpoint = ProxyEndpoint(address, metrics_port)
        return self._endpoint

    async def update_routes(self, table: RoutingTable) -> int:
        """Adopt the table if newer; return the version held (the AppMaster's ack)."""
        version = await self._server.update_routes(table)
        if self._direct is not None:  # channels to workers no longer routed, once idle
            self._direct.retain({e.address for e in self._server.router.table.entries})
        return version

    async def routes_version(self) -> int:
        return self._server.router.version

    async def inflight(self) -> dict[str, int]:
        """Calls this proxy has in flight per instance (drained ones until they finish)."""
        return self._server.inflight()

    async def routed(self) -> dict[str, int]:
        """Calls this proxy ever sent per instance (a counter)."""
        return self._server.routed()

    async def ejected(self) -> list[str]:
        """Workers this proxy has ejected (failed to reach) and not yet readmitted."""
        router = self._server.router
        return sorted({e.worker for e in router.table.entries if router.ejected(e.worker)})

    async def metrics_text(self) -> str:
        return self._server.metrics.metrics_text()

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, finish in-flight within grace."""
        await self._server.stop(grace_s)
        if self._direct is not None:
            await self._direct.close()

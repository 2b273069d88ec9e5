"""ProxyServer: the gRPC face of one service, with no Ray in it.

Each ``Serving.Call`` is checked (service, method), given a deadline (the client's, or
``default_timeout_s``), routed by the ``Router`` and sent through a ``BackendCaller``.
In production that is ``DirectBackendCaller`` (gRPC straight to the worker's own server
at the entry's ``address``), which falls back to ``RayBackendCaller`` (a Ray actor call)
for an entry without an address, or ``RayBackendCaller`` alone with
``proxy.data_plane = "ray"``; in tests, an in-process host. Both paths give the same
``CallResult``s and the same ``BackendUnavailable`` semantics, so every call ends in a
reply or an explicit status with a reason, whichever path it took:

=================================  =====================  =========================
situation                          status                 ``ha-retry-safe``
=================================  =====================  =========================
wrong service                      NOT_FOUND              1
empty method                       INVALID_ARGUMENT       1
request over max_message_bytes     RESOURCE_EXHAUSTED     (by gRPC, no trailer)
no instance in service             UNAVAILABLE            1
every instance at its cap          RESOURCE_EXHAUSTED     1
instance at its worker-side cap    RESOURCE_EXHAUSTED     1 (after one retry here)
proxy shutting down                UNAVAILABLE            1
deadline gone before sending       DEADLINE_EXCEEDED      1
no answer within the deadline      DEADLINE_EXCEEDED      0
backend unreachable, not sent      UNAVAILABLE            1 (after one retry here)
backend failed after sending       UNAVAILABLE            0
backend's own answer               its code               1 unless user code ran
=================================  =====================  =========================

A failure known not to have reached user code is retried once here, within the
deadline: an unreachable worker or lost instance (UNAVAILABLE) on an instance of another
worker, a worker's refusal at the instance's ``max_concurrency`` (RESOURCE_EXHAUSTED: the
worker counts every caller's calls, direct clients' too) on another instance. Nothing
that may have run is retried. The trailer tells the client whether it may retry;
its absence marks an error from the transport rather than from a proxy.

A worker that could not be reached (``BackendUnavailable``) is ejected from routing at
once, as Envoy's outlier detection does: calls that arrive meanwhile go to other workers
instead of queueing on a dead or restarting actor, and a background probe readmits the
worker when it answers a ping again (or the AppMaster's next table drops it).

The proxy is also a directory for clients in direct mode: ``Serving.Routes`` answers the
entries of its routing table that have a direct address, grouped by worker, with the
table's version, the cluster and the candidate weight (``routes_reply``). It takes what
``Call`` takes: the same port, TLS and (no) credentials, NOT_FOUND for another service
and UNAVAILABLE while stopping.

The standard health service reports SERVING for "" and the service name while the
routing table has instances, NOT_SERVING while it is empty or the proxy is stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ha_serving._errors import BackendUnavailable
from ha_serving._settings import ProxySettings
from ha_serving._wire import RETRY_SAFE_KEY, SERVING_SERVICE, CallResult, RouteEntry, RoutingTable
from ha_serving.dataplane import Router
from ha_serving.proto.serving_pb2 import (
    CallReply,
    CallRequest,
    DirectInstance,
    DirectWorker,
    RoutesReply,
    RoutesRequest,
)
from ha_serving.proxy._metrics import ProxyMetrics
from ha_serving.util.aiotasks import guard
from ha_serving.util.tls import TlsFiles

log = logging.getLogger(__name__)
_Context = grpc.aio.ServicerContext[CallRequest, CallReply]
_RETRIED = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
"""Codes of a backend's answer that, unrun, are retried once on another instance."""
_RoutesContext = grpc.aio.ServicerContext[RoutesRequest, RoutesReply]


class BackendCaller(Protocol):
    async def call(
        self,
        worker: str,
        instance_id: str,
        method: str,
        payload: bytes,
        timeout_s: float | None,
        *,
        address: str = "",
    ) -> CallResult:
        """Run one call on ``instance_id`` hosted by ``worker``, whose direct server is at
        ``address`` ("" if it has none: a caller that needs one uses another way).

        Raise ``BackendUnavailable`` when the worker cannot be reached, saying whether
        the call may have reached user code; ``TimeoutError`` when ``timeout_s`` passed;
        any other exception counts as "may have".
        """
        ...

    async def probe(self, worker: str, timeout_s: float, *, address: str = "") -> bool:
        """Whether ``worker`` (at ``address``) answers a no-op call within ``timeout_s``
        (never raises)."""
        ...


class ProxyServer:
    """Serves one service on one address; ``start``, ``update_routes``, ``stop``."""

    def __init__(
        self,
        service: str,
        caller: BackendCaller,
        *,
        settings: ProxySettings | None = None,
        cluster: str = "",
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        tls: TlsFiles | None = None,
    ) -> None:
        self.service = service
        self.tls = tls
        """The proxy's certificate: it serves TLS only; None: plaintext."""
        self.settings = settings or ProxySettings()
        self.router = Router(service, rng=rng)
        self.metrics = ProxyMetrics(
            service,
            inflight=self.router.inflight,
            routed=lambda: len(self.router.table.entries),
            max_method_labels=self.settings.max_method_labels,
        )
        self._caller = caller
        self._cluster = cluster
        self._clock = clock
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._stopping = False
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.address = ""
        """``host:port`` once started."""

    async def start(self, host: str, port: int = 0) -> str:
        """Bind ``host:port`` (0 = any free port), start serving; return ``host:port``."""
        if self._server is not None:
            return self.address
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.so_reuseport", 0),  # two proxies must never share a port by accident
            ],
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._handle,
            request_deserializer=CallRequest.FromString,
            response_serializer=CallReply.SerializeToString,
        )
        routes = grpc.unary_unary_rpc_method_handler(
            self._routes,
            request_deserializer=RoutesRequest.FromString,
            response_serializer=RoutesReply.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVING_SERVICE, {"Call": handler, "Routes": routes}
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.tls is None:
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            bound = server.add_secure_port(f"{host}:{port}", self.tls.server_credentials())
        if bound == 0:  # older gRPC reports a failed bind this way instead of raising
            raise OSError(f"cannot bind the proxy to {host}:{port}")
        await self._publish_health()
        await server.start()
        self._server = server
        self.address = f"{host}:{bound}"
        return self.address

    async def update_routes(self, table: RoutingTable) -> int:
        """Adopt ``table`` if it is newer; return the table version now held."""
        version = self.router.update(table)
        await self._publish_health()
        return version

    def inflight(self) -> dict[str, int]:
        return self.router.inflight()

    def routed(self) -> dict[str, int]:
        return self.router.routed()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking calls and let in-flight ones finish within ``grace_s``.

        Health goes NOT_SERVING first; calls that still arrive get UNAVAILABLE (retry-safe)
        and calls still running after the grace period are cancelled, which the client
        sees as CANCELLED: nothing is dropped without an answer.
        """
        self._stopping = True
        await self._health.enter_graceful_shutdown()
        grace = self.settings.stop_grace_s if grace_s is None else grace_s
        # Wait for our own calls rather than using gRPC's grace: health Watch streams
        # never end by themselves and would hold a stop for the whole grace period.
        with contextlib.suppress(TimeoutError):  # what still runs is cancelled below
            await asyncio.wait_for(self._idle.wait(), grace)
        if self._server is not None:
            await self._server.stop(0)
        await asyncio.to_thread(self.metrics.stop_http)  # blocks up to its 0.5 s poll

    # --- the directory --------------------------------------------------------------

    async def _routes(self, request: RoutesRequest, context: _RoutesContext) -> RoutesReply:
        if self._stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy is shutting down")
        if request.service != self.service:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown service {request.service!r}: this proxy serves {self.service!r}",
            )
        return routes_reply(self.router.table, self._cluster)

    # --- one call ------------------------------------------------------------------

    async def _handle(self, request: CallRequest, context: _Context) -> CallReply:
        started = self._clock()
        result = CallResult.failure("CANCELLED", "call cancelled", reached_user_code=False)
        routed: list[RouteEntry] = []
        self._calls += 1
        self._idle.clear()
        try:
            result = await self._dispatch(request, context.time_remaining(), routed)
        except Exception as exc:  # a bug of ours: answer INTERNAL, keep serving
            result = CallResult.failure(
                "INTERNAL", f"proxy error: {type(exc).__name__}: {exc}", reached_user_code=True
            )
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()
            exists = bool(result.instance_id) and result.code != "NOT_FOUND"
            elapsed = self._clock() - started
            last = routed[-1] if routed else None
            self.metrics.observe(
                request.service,
                request.method,
                result.code,
                elapsed,
                method_exists=exists,
                group=last.group if last else "",
                version=last.version if last else "",
            )
        if result.ok:
            return CallReply(
                payload=result.payload,
                instance_id=result.instance_id,
                version=result.version,
                cluster=self._cluster,
            )
        safe = "0" if result.reached_user_code else "1"
        await context.abort(
            _status(result.code), result.message, trailing_metadata=((RETRY_SAFE_KEY, safe),)
        )
        raise AssertionError("context.abort returned")  # it always raises

    async def _dispatch(
        self, request: CallRequest, remaining: float | None, routed: list[RouteEntry]
    ) -> CallResult:
        """Route and call; every instance tried is appended to ``routed``."""
        if self._stopping:
            return _refuse("UNAVAILABLE", "proxy is shutting down")
        if request.service != self.service:
            return _refuse(
                "NOT_FOUND",
                f"unknown service {request.service!r}: this proxy serves {self.service!r}",
            )
        if not request.method:
            return _refuse("INVALID_ARGUMENT", "method is empty")
        timeout = self.settings.default_timeout_s if remaining is None else remaining
        deadline = self._clock() + timeout
        excluded: set[str] = set()
        last: CallResult | None = None
        for _ in range(2):  # the first try, and one retry when it provably did not run
            entry = self.router.acquire(excluded)
            if entry is None:
                return last or self._no_instance()
            routed.append(entry)
            try:
                result = await self._call_once(entry, request, deadline - self._clock())
            finally:
                self.router.release(entry.instance_id)
            if result.ok or result.reached_user_code or result.code not in _RETRIED:
                return result
            last = result
            excluded.add(entry.instance_id)  # full (RESOURCE_EXHAUSTED): any other will do
            if result.code == "UNAVAILABLE":
                # The worker is gone or lost the instance: try an instance of another worker.
                excluded.update(
                    e.instance_id for e in self.router.table.entries if e.worker == entry.worker
                )
        assert last is not None  # noqa: S101 - the loop runs at least once
        return last

    async def _call_once(
        self, entry: RouteEntry, request: CallRequest, remaining: float
    ) -> CallResult:
        if remaining <= 0:
            return _refuse("DEADLINE_EXCEEDED", "deadline passed before the call was sent")
        worker, instance_id = entry.worker, entry.instance_id
        try:
            return await asyncio.wait_for(
                self._caller.call(
                    worker,
                    instance_id,
                    request.method,
                    request.payload,
                    remaining,
                    address=entry.address,
                ),
                remaining,
            )
        except TimeoutError:
            return CallResult.failure(
                "DEADLINE_EXCEEDED",
                f"instance {instance_id} did not answer within {remaining:.3f}s",
                reached_user_code=True,  # it may be running: not safe to retry
                instance_id=instance_id,
            )
        except BackendUnavailable as exc:
            self._eject(worker, exc.reason)
            return CallResult.failure(
                "UNAVAILABLE",
                str(exc),
                reached_user_code=exc.reached_user_code,
                instance_id=instance_id,
            )
        except Exception as exc:  # unknown failure after sending: may have run
            return CallResult.failure(
                "UNAVAILABLE",
                f"call to instance {instance_id} on {worker} failed: {type(exc).__name__}: {exc}",
                reached_user_code=True,
                instance_id=instance_id,
            )

    # --- outlier ejection -----------------------------------------------------------

    def _eject(self, worker: str, reason: str) -> None:
        if self._stopping or not self.router.eject(worker):
            return
        self.metrics.ejections.inc()
        log.warning("ejected worker %s: %s", worker, reason)
        guard(self._probe(worker), name=f"probe {worker}", logger=log, finite=True)

    async def _probe(self, worker: str) -> None:
        """Ping an ejected worker with growing pauses until it answers (readmit) or the
        routing table drops it; ends with the proxy."""
        pause = self.settings.eject_probe_s
        while not self._stopping and self.router.ejected(worker):
            await asyncio.sleep(pause)
            address = next((e.address for e in self.router.table.entries if e.worker == worker), "")
            if await self._caller.probe(
                worker, timeout_s=self.settings.eject_probe_max_s, address=address
            ):
                if self.router.ejected(worker):
                    self.router.readmit(worker)
                    log.warning("readmitted worker %s", worker)
                return
            pause = min(pause * 2, self.settings.eject_probe_max_s)

    def _no_instance(self) -> CallResult:
        entries = self.router.table.entries
        if not entries:
            return _refuse("UNAVAILABLE", f"service {self.service!r} has no instance in service")
        if all(self.router.ejected(e.worker) for e in entries):
            return _refuse(
                "UNAVAILABLE", f"every worker of {self.service!r} is unreachable (ejected)"
            )
        return _refuse(
            "RESOURCE_EXHAUSTED",
            f"all {len(entries)} instances of {self.service!r} are at their concurrency cap",
        )

    async def _publish_health(self) -> None:
        serving = bool(self.router.table.entries) and not self._stopping
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)
        await self._health.set(self.service, status)


def routes_reply(table: RoutingTable, cluster: str) -> RoutesReply:
    """The directory's answer for ``table``: its entries with a direct address, by worker
    (in the table's order)."""
    workers: dict[tuple[str, str], DirectWorker] = {}
    for e in table.entries:
        if not e.address:
            continue
        key = (e.worker, e.address)
        if key not in workers:
            workers[key] = DirectWorker(worker=e.worker, address=e.address)
        workers[key].instances.append(
            DirectInstance(
                instance_id=e.instance_id,
                version=e.version,
                group=e.group,
                max_concurrency=e.max_concurrency,
            )
        )
    return RoutesReply(
        service=table.service,
        version=table.version,
        cluster=cluster,
        candidate_weight=table.candidate_weight,
        workers=list(workers.values()),
    )


def _refuse(code: str, message: str) -> CallResult:
    """An answer made by the proxy itself, before any user code ran."""
    return CallResult.failure(code, message, reached_user_code=False)


def _status(code: str) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[code]
    except KeyError:
        return grpc.StatusCode.UNKNOWN

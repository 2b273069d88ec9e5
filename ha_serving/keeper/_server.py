"""A Keeper replica: the gRPC control API plus the leadership loop.

Every replica serves the API; the leadership loop decides which one acts. The control
API requires ``authorization: Bearer <token>`` with a credential whose scope allows the
RPC (``_auth``): a missing or wrong token gets UNAUTHENTICATED, a scope too narrow
PERMISSION_DENIED, and a log line that names the method, never the secret. A Keeper
without credentials refuses to start unless told ``insecure``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ha_serving._errors import HAServingError, InvalidSpec, StoreUnavailable
from ha_serving._settings import KeeperSettings
from ha_serving.keeper._auth import (
    CLIENT_SCOPES,
    LINK_METHODS,
    Authenticator,
    ScopeAuth,
    check_target,
)
from ha_serving.keeper._client import channel_options
from ha_serving.keeper._control_api import command, deploy
from ha_serving.keeper._leadership import LEASE_NAME, Leadership, keeper_of
from ha_serving.keeper._linkhub import LinkHub
from ha_serving.keeper._paging import operations_page
from ha_serving.keeper._reconciler import JobSubmitter, Reconciler
from ha_serving.keeper._watchhub import WatchHub
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import AppMasterBeat, Endpoint, Lease, OperationRecord, Store
from ha_serving.util.aiotasks import guard
from ha_serving.util.clock import Clock, SystemClock
from ha_serving.util.logs import bound
from ha_serving.util.tls import TlsFiles, link_address


def _status(exc: HAServingError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_status, grpc.StatusCode.INTERNAL)


class KeeperServer(keeper_pb2_grpc.KeeperServicer):
    def __init__(
        self,
        store: Store,
        keeper_id: str,
        address: str,
        settings: KeeperSettings,
        *,
        clock: Clock | None = None,
        submitter: JobSubmitter | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """``tls``: the Keeper's certificate and the CA its AppMasters' certificates are
        signed by; None: plaintext."""
        self.store = store
        self.keeper_id = keeper_id
        self.address = address
        self.settings = settings
        self.log = bound("ha_serving.keeper", keeper=keeper_id)
        self.auth = Authenticator.from_settings(settings, store)
        self.clock = clock = clock or SystemClock()
        self.links = LinkHub(store, settings, log=self.log, clock=clock)
        """The AppMaster links this replica holds: their reads and heartbeats, batched."""
        self.watches = WatchHub(store, settings, log=self.log, clock=clock)
        """The discovery Watch streams this replica serves: their reads, batched."""
        self.leadership = Leadership(store, keeper_id, ttl_s=settings.lease_ttl_s, clock=clock)
        self._server: grpc.aio.Server | None = None
        self._servers: list[grpc.aio.Server] = []
        self.tls = tls
        self.reconciler = (
            Reconciler(store, self.leadership, submitter, settings=settings, clock=clock)
            if submitter is not None
            else None
        )

    async def Status(  # noqa: N802 - the gRPC method's name
        self,
        request: keeper_pb2.StatusRequest,  # noqa: ARG002 - it has no fields
        context: grpc.aio.ServicerContext[Any, Any],  # noqa: ARG002 - nothing to set
    ) -> keeper_pb2.KeeperStatus:
        term = self.leadership.term()
        lease = await asyncio.to_thread(self._lease_or_none)
        return keeper_pb2.KeeperStatus(
            keeper_id=self.keeper_id,
            address=self.address,
            leader=term is not None,
            epoch=term.epoch if term else (lease.epoch if lease else 0),
            leader_id=keeper_of(lease.holder) if lease else "",
        )

    async def Resolve(  # noqa: N802 - the gRPC method's name
        self, request: keeper_pb2.ResolveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> keeper_pb2.Endpoints:
        if not request.service:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "service is required")
        try:
            return await self._endpoints(request.service)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"state store unavailable: {exc}")
            raise  # abort raises; this keeps type checkers content

    async def Watch(  # noqa: N802 - the gRPC method's name
        self, request: keeper_pb2.ResolveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[keeper_pb2.Endpoints]:
        """Push the endpoint list on every change, and at least every keepalive period.
        While the DB is down nothing is sent (never an empty list standing for "unknown").
        The lists come from this replica's ``WatchHub``, which reads the endpoints of
        every watched service at once each ``watch_period_s`` (a new stream's first list
        sooner); the stream leaves the hub when it ends."""
        if not request.service:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "service is required")
        last: bytes | None = None
        last_sent = 0.0
        watcher = self.watches.open(request.service)
        try:
            while True:
                found = await watcher.next()
                if found is None:  # the store did not answer: nothing known, nothing sent
                    continue
                current = _endpoints_of(request.service, found)
                raw = current.SerializeToString(deterministic=True)
                now = self.clock.monotonic()
                if raw != last or now - last_sent >= self.settings.watch_keepalive_s:
                    yield current
                    last, last_sent = raw, now
        finally:
            watcher.close()

    async def _endpoints(self, service: str) -> keeper_pb2.Endpoints:
        found = await asyncio.to_thread(self.store.list_endpoints, service)
        return _endpoints_of(service, found)

    async def Deploy(  # noqa: N802 - the gRPC method's name
        self, request: keeper_pb2.DeployRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> keeper_pb2.DeployReply:
        try:
            op_id, duplicate = await asyncio.to_thread(
                deploy,
                self.store,
                request.spec_json,
                request.package,
                op_id=request.op_id,
                kind=request.kind,
                options_json=request.options_json,
            )
        except HAServingError as exc:
            await context.abort(_status(exc), str(exc))
            raise
        self.log.info("accepted %s (duplicate=%s)", op_id, duplicate)
        return keeper_pb2.DeployReply(op_id=op_id, duplicate=duplicate)

    async def GetService(  # noqa: N802 - the gRPC method's name
        self, request: keeper_pb2.ServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> keeper_pb2.ServiceInfo:
        try:
            record = await asyncio.to_thread(self.store.get_service, request.service)
        except HAServingError as exc:
            await context.abort(_status(exc), str(exc))
            raise
        return keeper_pb2.ServiceInfo(
            spec_json=json.dumps(record.spec["spec"]),
            package=record.spec["package"],
            generation=int(record.spec.get("generation", record.spec_version)),
        )

    async def Operations(  # noqa: N802 - the gRPC method's name
        self, request: keeper_pb2.OperationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> keeper_pb2.OperationsReply:
        """A page of operations (``operations_page_size`` at most), oldest first."""
        try:
            ops, next_token = await asyncio.to_thread(
                operations_page,
                self.store,
                service=request.service,
                op_id=request.op_id,
                limit=request.limit,
                page_token=request.page_token,
                page_size=self.settings.operations_page_size,
            )
        except HAServingError as exc:
            await context.abort(_status(exc), str(exc))
            raise
        return keeper_pb2.OperationsReply(
            operations=[_operation_info(o) for o in ops], next_page_token=next_token
        )

    async def Command(  # noqa: N802 - the gRPC method's name
        self, request: keeper_pb2.CommandRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> keeper_pb2.OperationInfo:
        try:
            op = await asyncio.to_thread(command, self.store, request.op_id, request.command)
        except HAServingError as exc:
            await context.abort(_status(exc), str(exc))
            raise
        self.log.info("command %s for %s accepted", request.command, request.op_id)
        return _operation_info(op)

    async def Instructions(  # noqa: N802 - the gRPC method's name
        self,
        request: keeper_pb2.InstructionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[keeper_pb2.InstructionMsg]:
        """An AppMaster's link: register it (its request is a heartbeat) and stream the
        instructions after ``after``, or an empty message (id 0) each period with none,
        so a Keeper that stops answering (paused, partitioned) is noticed by its silence,
        not by TCP. The instructions come from this replica's ``LinkHub``, which reads
        them for all its links at once each ``link_period_s``. The loop itself
        heartbeats nothing: an open stream is no proof that the AppMaster lives (a
        paused one keeps it open); its ``Heartbeat`` calls are. Its credential is checked
        again each period: a revoked one ends the stream."""
        await check_target(self.auth, context, request.cluster, request.service)
        with contextlib.suppress(StoreUnavailable):
            await self.links.beat(_beat_of(request))
        link = self.links.open(request.cluster, request.service, request.after)
        try:
            while True:
                found = await link.next()
                for i in found:
                    yield keeper_pb2.InstructionMsg(
                        id=i.id, op_id=i.op_id, epoch=i.epoch, body_json=json.dumps(i.body)
                    )
                    link.after = i.id
                if not found:  # a beat: the AppMaster knows this Keeper still answers
                    yield keeper_pb2.InstructionMsg(id=0)
                await check_target(self.auth, context, request.cluster, request.service)
        finally:
            link.close()

    async def Heartbeat(  # noqa: N802 - the gRPC method's name
        self, request: keeper_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> keeper_pb2.HeartbeatReply:
        """An AppMaster's link says it lives: the only refresh of its heartbeat. Written
        with the other links' heartbeats of the moment (``LinkHub.beat``) and answered
        once committed."""
        if not (request.cluster and request.service):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cluster and service required")
        await check_target(self.auth, context, request.cluster, request.service)
        try:
            await self.links.beat(_beat_of(request))
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"state store unavailable: {exc}")
            raise
        return keeper_pb2.HeartbeatReply()

    def _lease_or_none(self) -> Lease | None:
        """The leadership lease, or None while the store is down: ``Status`` still
        answers then (this replica's own view). Any other error is a bug and raised."""
        try:
            return self.store.get_lease(LEASE_NAME)
        except StoreUnavailable as exc:
            self.log.info("status without the leadership lease: %s", exc)
            return None

    def _interceptors(self, **limits: Any) -> list[grpc.aio.ServerInterceptor]:
        return [ScopeAuth(self.auth, self.log, **limits)] if self.auth.enabled else []

    def _server_on(
        self, address: str, credentials: grpc.ServerCredentials | None, **limits: Any
    ) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=self._interceptors(**limits),
            options=channel_options(self.settings),
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        keeper_pb2_grpc.add_KeeperServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        health_servicer = health.HealthServicer()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
        if bound == 0:
            raise OSError(f"cannot bind {address}")
        return server

    async def start(self) -> None:
        """Serve the API on ``address``; with TLS, only TLS there, and the AppMasters'
        link (Status, Instructions, Heartbeat) on ``link_address(address)`` under mutual
        TLS, the only place an AppMaster's credential is taken."""
        if not self.auth.enabled:
            if not self.settings.insecure:
                raise InvalidSpec(
                    "keeper",
                    [
                        "no credentials: set HA_SERVING_KEEPER_TOKEN_FILE (and "
                        "HA_SERVING_KEEPER_DISCOVERY_TOKEN_FILE), or run it --insecure"
                    ],
                )
            self.log.warning(
                "INSECURE: %s serves its control API WITHOUT authentication: anyone who "
                "reaches it can deploy code and read every service",
                self.address,
            )
        if self.tls is None:
            servers = [self._server_on(self.address, None)]
        else:
            if self.tls.cert is None:
                raise InvalidSpec("tls", ["a Keeper serving TLS needs its certificate and key"])
            servers = [
                self._server_on(self.address, self.tls.server_credentials(), scopes=CLIENT_SCOPES),
                self._server_on(
                    link_address(self.address),
                    self.tls.server_credentials(require_client_cert=True),
                    methods=LINK_METHODS,
                ),
            ]
        for server in servers:
            await server.start()
        self._server, self._servers = servers[0], servers
        guard(self.leadership.run(), name=f"leadership-{self.keeper_id}", logger=self.log)
        if self.reconciler is not None:
            guard(self.reconciler.run(), name=f"reconciler-{self.keeper_id}", logger=self.log)
        tls = f"TLS, link (mutual TLS) on {link_address(self.address)}" if self.tls else "PLAINTEXT"
        self.log.info("keeper listening on %s (%s)", self.address, tls)

    async def stop(self, grace_s: float | None = 0) -> None:
        for server in self._servers:
            await server.stop(grace_s)

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None  # noqa: S101 - set by start()
        try:
            await self._server.wait_for_termination()
        finally:
            await asyncio.to_thread(self.leadership.resign)


def _beat_of(
    request: keeper_pb2.InstructionsRequest | keeper_pb2.HeartbeatRequest,
) -> AppMasterBeat:
    return AppMasterBeat(request.cluster, request.service, request.actor_name, request.epoch_seen)


def _endpoints_of(service: str, found: list[Endpoint]) -> keeper_pb2.Endpoints:
    """What a client is told of ``service``'s endpoints (not their leases' expiry, so
    a renewal alone is no change)."""
    return keeper_pb2.Endpoints(
        service=service,
        endpoints=[
            keeper_pb2.Endpoint(
                address=e.address,
                cluster=e.cluster,
                labels={k: str(v) for k, v in e.labels.items()},
            )
            for e in found
        ],
    )


def _operation_info(o: OperationRecord) -> keeper_pb2.OperationInfo:
    """An operation as the API shows it: its plan without the (large) spec, but with the
    version it rolls out."""
    plan = {k: v for k, v in o.plan.items() if k != "spec"}
    plan["version"] = o.plan.get("spec", {}).get("version")
    return keeper_pb2.OperationInfo(
        op_id=o.op_id,
        kind=o.kind,
        status=o.status,
        step=o.step,
        plan_json=json.dumps(plan),
        epoch=o.epoch,
        error=o.error or "",
        progress_json=json.dumps(dict(o.progress)) if o.progress else "",
        command=o.command or "",
    )

"""WorkerLinks: calls on backend workers' own gRPC servers, and what their failures mean.

A worker's ``DirectServer`` (``ha_serving/backend/_direct.py``) is called by two kinds of
caller: a proxy (``proxy/_direct.py:DirectBackendCaller``) and a client in direct mode
(``ha_serving/client``). Both need the same verdict on every failure, so it is made here
once: ``WorkerLinks`` (grpc.aio, one cached channel per address) for the asyncio callers,
and the pure parts (``NEVER_RAN_CODES``, ``failure``, ``result_of``) for the client's
blocking channels.

At most once. A caller retries a failed call on another worker only when the call
provably never reached user code (``BackendUnavailable(reached_user_code=False)``). On
this path that is claimed in exactly these cases, and nowhere else:

1. the channel could not be made READY before the call was issued: the connection was
   refused, failed its TLS handshake, or did not come up within the connect timeout.
   No RPC was started, so no byte of the request left the caller;
2. the server answered UNIMPLEMENTED: whatever listens there has no ``Direct.Call``, and
   gRPC answers so before any handler runs;
3. the server answered FAILED_PRECONDITION: ``DirectServer`` refuses, before calling the
   host, a call that names another worker (the address is stale: its port now belongs
   to another worker);
4. UNAVAILABLE whose details say no connection was made for it (``never_connected``:
   "failed to connect to all addresses", "connection refused", ...): the channel was
   READY when checked, its connection went (the worker stopped) before the call was
   issued, and gRPC failed the call at its pick, trying to connect anew. Such a call
   was never assigned a transport. (Seen in CI: a worker shut down just before a call
   whose channel still looked READY.) The SDK's proxy path applies the same rule.

Every other failure of an issued call counts as "may have run" (``reached_user_code=
True``), UNAVAILABLE included: gRPC reports UNAVAILABLE both for a connection that broke
after it was made, before the request was written, and for a worker that died while
running it, and nothing tells the two apart. (gRPC itself replays a call only when the
server provably never saw it: its "transparent retry" of a stream the server refused or
never received.) The one race this leaves is a call issued on a connection in the
instant it breaks, before gRPC has seen it go (else case 4): that call fails as "may
have run" although it did not. That errs towards an error the caller sees, never
towards running user code twice. The call is issued with ``wait_for_ready=False``, so
it never waits for a connection of its own.

A gRPC DEADLINE_EXCEEDED is raised as ``TimeoutError`` (the call may be running: not
retry-safe). The remaining time of the caller's deadline is the call's gRPC deadline.

Any other answer of the worker is the ``CallResult`` it made (``direct.proto``'s
``DirectResult``), which the caller maps exactly as a result that came through Ray.

TLS: with ``tls`` (the CA, and this side's certificate) the channel verifies the
worker's server against the CA and shows the certificate (mutual TLS: workers take only
callers with a certificate of the stack's CA); without it, plaintext.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import grpc

from ha_serving._errors import BackendUnavailable
from ha_serving._wire import DIRECT_CALL, DIRECT_PING, CallResult
from ha_serving.proto.direct_pb2 import DirectCall, DirectPing, DirectResult
from ha_serving.util.aiotasks import guard
from ha_serving.util.tls import TlsFiles, aio_channel

log = logging.getLogger(__name__)

READY = grpc.ChannelConnectivity.READY
FAILED_STATES = (
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)
"""Channel states in which waiting for READY is pointless: the connection failed."""
UNLIMITED = -1
"""gRPC's "no limit": the proxy bounds requests and clients bound replies."""
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", UNLIMITED),
    ("grpc.max_send_message_length", UNLIMITED),
]
NEVER_RAN_CODES = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION})
"""Statuses of an issued call that prove the handler never ran (see the docstring)."""
NEVER_CONNECTED = (
    "failed to connect to all addresses",
    "connection refused",
    "no route to host",
    "dns resolution failed",
    "name resolution failure",
)
"""gRPC's messages (lower case) for an UNAVAILABLE whose connection was never made."""


def never_connected(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a call that ended in ``code`` with ``details`` never had a connection
    (so no byte of it reached a server): UNAVAILABLE with one of ``NEVER_CONNECTED``."""
    text = (details or "").lower()
    return code == grpc.StatusCode.UNAVAILABLE and any(m in text for m in NEVER_CONNECTED)


def not_connected(worker: str, address: str, state: grpc.ChannelConnectivity) -> BackendUnavailable:
    """The verdict on a call whose channel never became READY: never sent."""
    return BackendUnavailable(
        worker,
        f"cannot connect to its direct server {address} ({state.name.lower()})",
        reached_user_code=False,
    )


def failure(
    worker: str, address: str, code: grpc.StatusCode, details: str | None
) -> BackendUnavailable | TimeoutError:
    """The verdict on an issued call that ended in gRPC status ``code``: TimeoutError for
    its deadline, else ``BackendUnavailable``, never-ran only for ``NEVER_RAN_CODES`` and
    a call that never had a connection (``never_connected``)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(f"{address}: {details}")
    return BackendUnavailable(
        worker,
        f"direct call to {address} failed: {code.name}: {details}",
        reached_user_code=code not in NEVER_RAN_CODES and not never_connected(code, details),
    )


def result_of(reply: DirectResult) -> CallResult:
    """The ``CallResult`` a worker sent as a ``DirectResult``."""
    return CallResult(
        ok=reply.ok,
        payload=reply.payload,
        code=reply.code,
        message=reply.message,
        instance_id=reply.instance_id,
        version=reply.version,
        reached_user_code=reply.reached_user_code,
    )


@dataclass(frozen=True)
class _Link:
    """One worker address: its channel and the two methods bound to it."""

    channel: grpc.aio.Channel
    call: Any  # grpc.aio.UnaryUnaryMultiCallable[DirectCall, DirectResult]
    ping: Any  # grpc.aio.UnaryUnaryMultiCallable[DirectPing, DirectPing]


class WorkerLinks:
    """Direct calls and pings on workers' servers over cached grpc.aio channels."""

    CLOSE_GRACE_S = 1.0
    """A channel dropped after a failed connect is closed this long later."""

    def __init__(self, *, tls: TlsFiles | None = None, connect_timeout_s: float = 1.0) -> None:
        self._tls = tls
        self._connect_timeout_s = connect_timeout_s
        self._links: dict[str, _Link] = {}
        self._busy: dict[str, int] = {}
        """Calls in flight per address (``retain`` keeps their channels)."""

    async def call(
        self,
        worker: str,
        instance_id: str,
        method: str,
        payload: bytes,
        timeout_s: float | None,
        *,
        address: str,
    ) -> CallResult:
        """One call at ``address``; ``BackendUnavailable`` or ``TimeoutError`` as the
        module's docstring says."""
        self._busy[address] = self._busy.get(address, 0) + 1
        try:
            request = DirectCall(
                worker=worker, instance_id=instance_id, method=method, payload=payload
            )
            link = await self._ready(worker, address, timeout_s)
            try:
                reply: DirectResult = await link.call(
                    request, timeout=timeout_s, wait_for_ready=False
                )
            except grpc.aio.AioRpcError as err:
                raise failure(worker, address, err.code(), err.details()) from None
            return result_of(reply)
        finally:
            left = self._busy[address] - 1
            if left:
                self._busy[address] = left
            else:
                del self._busy[address]

    async def probe(self, worker: str, timeout_s: float, address: str) -> bool:
        """Whether ``worker`` answers a ping at ``address`` within ``timeout_s``, as
        itself: a server of another worker is no answer."""
        try:
            link = await self._ready(worker, address, timeout_s)
            reply: DirectPing = await link.ping(
                DirectPing(worker=worker), timeout=timeout_s, wait_for_ready=False
            )
        except (BackendUnavailable, grpc.aio.AioRpcError):
            return False
        return reply.worker == worker

    async def close(self) -> None:
        """Close every channel (calls still on them are cancelled)."""
        links, self._links = self._links, {}
        await asyncio.gather(*(link.channel.close() for link in links.values()))

    def addresses(self) -> list[str]:
        """Worker addresses with a cached channel."""
        return list(self._links)

    def retain(self, addresses: Collection[str]) -> None:
        """Close the channels to addresses not in ``addresses`` (workers gone from the
        routing table) that no call is using; a channel still carrying a call (a drained
        instance finishing) is left for a later ``retain``."""
        for address in [a for a in self._links if a not in addresses and a not in self._busy]:
            link = self._links.pop(address)
            guard(link.channel.close(), name=f"close {address}", logger=log, finite=True)

    async def _ready(self, worker: str, address: str, timeout_s: float | None) -> _Link:
        """The link to ``address`` once its channel is READY; ``BackendUnavailable``
        (never sent) if it cannot connect within the connect timeout."""
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = self._open(address)
        state = link.channel.get_state(try_to_connect=True)
        if state is READY:
            return link
        budget = self._connect_timeout_s
        if timeout_s is not None:
            budget = min(budget, timeout_s)
        try:
            async with asyncio.timeout(budget):
                while state is not READY:
                    if state in FAILED_STATES:
                        break
                    await link.channel.wait_for_state_change(state)
                    state = link.channel.get_state(try_to_connect=True)
        except TimeoutError:
            pass
        if state is READY:
            return link
        self._drop(address, link)
        raise not_connected(worker, address, state)

    def _open(self, address: str) -> _Link:
        channel = aio_channel(address, self._tls, options=CHANNEL_OPTIONS)
        return _Link(
            channel=channel,
            call=channel.unary_unary(
                DIRECT_CALL,
                request_serializer=DirectCall.SerializeToString,
                response_deserializer=DirectResult.FromString,
            ),
            ping=channel.unary_unary(
                DIRECT_PING,
                request_serializer=DirectPing.SerializeToString,
                response_deserializer=DirectPing.FromString,
            ),
        )

    def _drop(self, address: str, link: _Link) -> None:
        """Forget a channel that could not connect: the next call opens a fresh one (a
        restarted worker has a new address anyway, and a fresh channel has no back-off).
        Closed a little later, so calls still waiting on it fail as they would anyway."""
        if self._links.get(address) is link:
            del self._links[address]
            guard(
                link.channel.close(grace=self.CLOSE_GRACE_S),
                name=f"close {address}",
                logger=log,
                finite=True,
            )

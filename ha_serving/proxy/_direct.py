"""DirectBackendCaller: the proxy's direct path to backend workers, over gRPC.

A routing table entry with an ``address`` (the worker's ``DirectServer``, started by
``BackendWorker.start_direct`` and reported by the AppMaster) is called there through
``WorkerLinks`` (``ha_serving/dataplane/_direct.py``: one cached ``grpc.aio`` channel per
address, and the at-most-once verdict on every failure, shared with the direct client);
an entry without one goes to the ``fallback`` caller (the Ray actor call), so a worker
whose direct server could not be set up still serves. ``probe`` follows the same split.

The proxy retries a failed call on another worker only when ``WorkerLinks`` says it
provably never reached user code (a channel that could not connect before the call was
issued, UNIMPLEMENTED, FAILED_PRECONDITION); every other failure of an issued call may
have run. A gRPC DEADLINE_EXCEEDED is raised as ``TimeoutError``, which the proxy
answers as it answers its own deadline (DEADLINE_EXCEEDED, not retry-safe).

TLS: with ``tls`` (the proxy's own certificate and the stack's CA) the channel verifies
the worker's server against the CA and shows the proxy's certificate (mutual TLS);
without it, plaintext on the node-local network, as the stack runs with TLS off.
"""

from __future__ import annotations

from collections.abc import Collection

from ha_serving._wire import CallResult
from ha_serving.dataplane import WorkerLinks
from ha_serving.proxy._server import BackendCaller
from ha_serving.util.tls import TlsFiles


class DirectBackendCaller:
    """``BackendCaller`` over the workers' direct servers, ``fallback`` where none is."""

    def __init__(
        self,
        fallback: BackendCaller,
        *,
        tls: TlsFiles | None = None,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self.fallback = fallback
        self._links = WorkerLinks(tls=tls, connect_timeout_s=connect_timeout_s)

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
        if not address:
            return await self.fallback.call(worker, instance_id, method, payload, timeout_s)
        return await self._links.call(
            worker, instance_id, method, payload, timeout_s, address=address
        )

    async def probe(self, worker: str, timeout_s: float, *, address: str = "") -> bool:
        """Whether ``worker`` answers a ping at ``address`` (through ``fallback`` when it
        has none) within ``timeout_s``, as itself: a server of another worker is no answer."""
        if not address:
            return await self.fallback.probe(worker, timeout_s)
        return await self._links.probe(worker, timeout_s, address)

    async def close(self) -> None:
        """Close every channel (calls still on them are cancelled)."""
        await self._links.close()

    def addresses(self) -> list[str]:
        """Worker addresses with a cached channel."""
        return self._links.addresses()

    def retain(self, addresses: Collection[str]) -> None:
        """Close the channels to workers no longer routed, once no call uses them."""
        self._links.retain(addresses)

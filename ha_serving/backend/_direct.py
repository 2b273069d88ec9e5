"""DirectServer: a backend worker's own gRPC server, the direct proxy -> worker path.

A proxy used to reach a worker by a Ray actor call per request (``BackendWorker.call``).
On the direct path it calls this server instead (``ha_serving/proxy/_direct.py``; so does
a client in direct mode, ``ha_serving/client/_direct.py``), which
runs in the worker actor's own event loop and hands each call to the same
``InstanceHost.call``: in-flight counts, the cap (``max_concurrency``), draining
(``wait_idle``), per-generation code swaps and the shielded user task are the host's,
whichever path a call came by.

The protocol is ``ha_serving/proto/direct.proto``: ``Call`` carries the worker's name,
the instance, the method and the payload; the deadline is gRPC's own. Every answer of
the host is a ``DirectResult`` (the fields of ``CallResult``) with gRPC status OK, so a
non-OK status on this path comes from the transport, never from user code, with one
exception made here: a call that names another worker (the address the caller holds is
stale: the port now belongs to another worker's server) is refused with
FAILED_PRECONDITION before the host sees it.

Security: with ``tls`` (the proxies' certificate, valid for every node address) the
server speaks mutual TLS and takes only callers showing a certificate of the stack's CA
(the proxies, and SDK clients in direct mode given one); without it, plaintext on the
node's address, as the stack's other internal traffic runs when TLS is off.

Limits: like the Ray call it replaces, the hop has no message size limit of its own:
the proxy bounds requests (``proxy.max_message_bytes``) and clients bound replies.
"""

from __future__ import annotations

from typing import Any

import grpc

from ha_serving._wire import DIRECT_SERVICE, CallResult
from ha_serving.backend._host import InstanceHost
from ha_serving.proto.direct_pb2 import DirectCall, DirectPing, DirectResult
from ha_serving.util.tls import TlsFiles

_CallContext = grpc.aio.ServicerContext[DirectCall, DirectResult]
_PingContext = grpc.aio.ServicerContext[DirectPing, DirectPing]

UNLIMITED = -1
"""gRPC's "no limit" for message lengths."""


def result_message(result: CallResult) -> DirectResult:
    """The wire form of a ``CallResult``."""
    return DirectResult(
        ok=result.ok,
        payload=result.payload,
        code=result.code,
        message=result.message,
        instance_id=result.instance_id,
        version=result.version,
        reached_user_code=result.reached_user_code,
    )


class DirectServer:
    """Serves ``Direct.Call`` and ``Direct.Ping`` for one worker's ``InstanceHost``."""

    def __init__(self, worker: str, host: InstanceHost, *, tls: TlsFiles | None = None) -> None:
        self.worker = worker
        self.tls = tls
        self._host = host
        self._server: grpc.aio.Server | None = None
        self.address = ""
        """``host:port`` once started."""

    async def start(self, bind: str) -> str:
        """Listen on ``bind`` (an IP address), a free port; return ``host:port``."""
        if self._server is not None:
            return self.address
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),  # two workers must never share a port
                ("grpc.max_receive_message_length", UNLIMITED),
                ("grpc.max_send_message_length", UNLIMITED),
            ]
        )
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Call": grpc.unary_unary_rpc_method_handler(
                self._call,
                request_deserializer=DirectCall.FromString,
                response_serializer=DirectResult.SerializeToString,
            ),
            "Ping": grpc.unary_unary_rpc_method_handler(
                self._ping,
                request_deserializer=DirectPing.FromString,
                response_serializer=DirectPing.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(DIRECT_SERVICE, handlers),)
        )
        if self.tls is None:
            port = server.add_insecure_port(f"{bind}:0")
        else:
            creds = self.tls.server_credentials(require_client_cert=True)
            port = server.add_secure_port(f"{bind}:0", creds)
        if port == 0:  # older gRPC reports a failed bind this way instead of raising
            raise OSError(f"cannot bind the direct server of {self.worker} to {bind}")
        await server.start()
        self._server = server
        self.address = f"{bind}:{port}"
        return self.address

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop listening; calls still running after ``grace_s`` lose their answer (their
        user code still runs to its end in the host, as the host shields it)."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    async def _call(self, request: DirectCall, context: _CallContext) -> DirectResult:
        if request.worker != self.worker:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.address} serves worker {self.worker!r}, not {request.worker!r}",
            )
        result = await self._host.call(request.instance_id, request.method, request.payload)
        return result_message(result)

    async def _ping(self, _request: DirectPing, _context: _PingContext) -> DirectPing:
        return DirectPing(worker=self.worker)

"""Client SDK: call a service through its proxies with safe, budgeted retries.

``Client`` (blocking) and ``AsyncClient`` (asyncio) take a list of proxy addresses
(``host:port``), replaceable with ``set_addresses`` so discovery can feed them. Errors
arrive as ``CallError(code, message)`` with the gRPC status name. Against a stack that
speaks TLS, pass ``tls=TlsFiles(<the stack's CA>)``: the Keepers' and the proxies'
certificates are verified against it.
"""

from ha_serving._errors import CallError
from ha_serving.client._client import AsyncClient, Client, RetryBudget, discovered_client
from ha_serving.client._discovery import Discovery, EndpointInfo
from ha_serving.util.tls import TlsFiles

__all__ = [
    "AsyncClient",
    "CallError",
    "Client",
    "Discovery",
    "EndpointInfo",
    "RetryBudget",
    "TlsFiles",
    "discovered_client",
]

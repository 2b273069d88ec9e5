"""Client SDK: call a service through its proxies with safe, budgeted retries.

``Client`` (blocking) and ``AsyncClient`` (asyncio) take a list of proxy addresses
(``host:port``), replaceable with ``set_addresses`` so discovery can feed them. Errors
arrive as ``CallError(code, message)`` with the gRPC status name. Against a stack that
speaks TLS, pass ``tls=TlsFiles(<the stack's CA>)``: the Keepers' and the proxies'
certificates are verified against it.

``mode="direct"`` (both clients, and ``discovered_client``) calls the backend workers'
own servers instead, the proxies serving as a directory of routes and as the fallback;
``direct_stats()`` counts what it did (``DirectStats``). Under TLS it needs a client
certificate of the stack's CA: ``TlsFiles(ca, cert, key)``.
"""

from ha_serving._errors import CallError
from ha_serving.client._client import AsyncClient, Client, Mode, RetryBudget, discovered_client
from ha_serving.client._direct import DirectStats
from ha_serving.client._discovery import Discovery, EndpointInfo
from ha_serving.util.tls import TlsFiles

__all__ = [
    "AsyncClient",
    "CallError",
    "Client",
    "DirectStats",
    "Discovery",
    "EndpointInfo",
    "Mode",
    "RetryBudget",
    "TlsFiles",
    "discovered_client",
]

"""Client SDK: call a service through its proxies with safe, budgeted retries.

``Client`` (blocking) and ``AsyncClient`` (asyncio) take a list of proxy addresses
(``host:port``), replaceable with ``set_addresses`` so discovery can feed them. Errors
arrive as ``CallError(code, message)`` with the gRPC status name.
"""

from ha_serving._errors import CallError
from ha_serving.client._client import AsyncClient, Client, RetryBudget, discovered_client
from ha_serving.client._discovery import Discovery, EndpointInfo

__all__ = [
    "AsyncClient",
    "CallError",
    "Client",
    "Discovery",
    "EndpointInfo",
    "RetryBudget",
    "discovered_client",
]

"""Proxy: publishes one service over gRPC and routes each call to a backend instance.

``Router`` (power of two choices under per-instance caps, from ``ha_serving.dataplane``,
which the direct-mode client shares), ``ProxyServer`` (grpc.aio, health service,
deadlines, safe retries, the directory of direct routes) and ``DirectBackendCaller``
(gRPC straight to the workers' own servers) are Ray-free; ``ProxyActor`` is the Ray actor
body the AppMaster creates (with ``proxy_actor_options``), and ``RayBackendCaller`` the
Ray actor call it falls back to.
"""

from ha_serving.dataplane import Router
from ha_serving.proxy._actor import (
    ProxyActor,
    ProxyEndpoint,
    RayBackendCaller,
    proxy_actor_options,
)
from ha_serving.proxy._direct import DirectBackendCaller
from ha_serving.proxy._metrics import (
    LATENCY_BUCKETS,
    ProxyFigures,
    ProxyMetrics,
    read_figures,
)
from ha_serving.proxy._server import BackendCaller, ProxyServer

__all__ = [
    "LATENCY_BUCKETS",
    "BackendCaller",
    "DirectBackendCaller",
    "ProxyActor",
    "ProxyEndpoint",
    "ProxyFigures",
    "ProxyMetrics",
    "ProxyServer",
    "RayBackendCaller",
    "Router",
    "proxy_actor_options",
    "read_figures",
]

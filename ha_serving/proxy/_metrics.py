"""Prometheus metrics of one proxy, in a registry of its own.

A private ``CollectorRegistry`` per proxy keeps two proxies in one process (tests, or a
packed actor) from colliding on metric names. Request counts and latencies are recorded
per call; in-flight per instance and the routed-instance count are read from the router
at scrape time, so the hot path pays nothing for them and a drained instance's series
disappears by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Seconds; down to 1 ms because a proxy hop plus a trivial method takes a few ms."""

OTHER_METHOD = "<other>"


class _RouterCollector(Collector):
    def __init__(
        self, service: str, inflight: Callable[[], Mapping[str, int]], routed: Callable[[], int]
    ) -> None:
        self._service = service
        self._inflight = inflight
        self._routed = routed

    def collect(self) -> Iterable[Metric]:
        per_instance = GaugeMetricFamily(
            "ha_serving_proxy_inflight",
            "Calls this proxy has in flight, per backend instance.",
            labels=["service", "instance"],
        )
        for instance, count in sorted(self._inflight().items()):
            per_instance.add_metric([self._service, instance], count)
        routed = GaugeMetricFamily(
            "ha_serving_proxy_routed_instances",
            "Instances in this proxy's routing table.",
            labels=["service"],
        )
        routed.add_metric([self._service], self._routed())
        return [per_instance, routed]


class ProxyMetrics:
    """Counters and histograms of one proxy plus an optional ``/metrics`` HTTP endpoint."""

    def __init__(
        self,
        service: str,
        *,
        inflight: Callable[[], Mapping[str, int]],
        routed: Callable[[], int],
        max_method_labels: int = 100,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._service = service
        self._max_methods = max_method_labels
        self._methods: set[str] = set()
        self._requests = Counter(
            "ha_serving_proxy_requests",
            "Calls answered by this proxy, by gRPC status and by the version group and version "
            "of the instance that answered (empty when none did).",
            ["service", "method", "code", "group", "version"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "ha_serving_proxy_request_duration_seconds",
            "Time from receiving a call to answering it, by version group.",
            ["service", "method", "group"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ejections = Counter(
            "ha_serving_proxy_worker_ejections",
            "Backend workers ejected from routing because a call could not reach them.",
            registry=self.registry,
        )
        self.registry.register(_RouterCollector(service, inflight, routed))
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def observe(
        self,
        service: str,
        method: str,
        code: str,
        seconds: float,
        *,
        method_exists: bool,
        group: str = "",
        version: str = "",
    ) -> None:
        """Count one answered call. Unknown services and methods (and names past the cap)
        are folded into ``<other>``: client-chosen strings must not grow the label set.
        ``group`` and ``version`` come from the routing table (the platform's strings)."""
        if service != self._service:
            service, method = OTHER_METHOD, OTHER_METHOD
        elif method not in self._methods:
            if method_exists and len(self._methods) < self._max_methods:
                self._methods.add(method)
            else:
                method = OTHER_METHOD
        self._requests.labels(service, method, code, group, version).inc()
        self._latency.labels(service, method, group).observe(seconds)

    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()

    def start_http(self, host: str, port: int = 0) -> int:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; return the bound port."""
        if self._http is None:
            self._http, self._http_thread = start_http_server(port, host, self.registry)
        return int(self._http.server_address[1])

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(timeout=5)
            self._http = self._http_thread = None


@dataclass(frozen=True)
class ProxyFigures:
    """What one proxy's ``/metrics`` says about one service, for the autoscaler."""

    inflight: dict[str, float] = field(default_factory=dict)
    """Calls in flight per instance."""
    answered: float = 0.0
    """Calls answered since the proxy started, any status (a counter)."""
    buckets: dict[float, float] = field(default_factory=dict)
    """Latency histogram since the proxy started, summed over methods and version
    groups: cumulative count per upper bound in seconds (``+Inf`` included)."""


def read_figures(text: str, service: str) -> ProxyFigures:
    """``service``'s in-flight calls, answered calls and latency histogram in a proxy's
    metrics text (``ProxyMetrics.metrics_text``); ValueError if it does not parse."""
    inflight: dict[str, float] = {}
    answered = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("service") != service:
                continue
            if s.name == "ha_serving_proxy_inflight":
                inflight[s.labels["instance"]] = s.value
            elif s.name == "ha_serving_proxy_requests_total":
                answered += s.value
            elif s.name == "ha_serving_proxy_request_duration_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return ProxyFigures(inflight, answered, buckets)

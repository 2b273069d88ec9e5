"""Release analysis: is the candidate as good as the stable version, from proxy metrics?

Every proxy exports ``ha_serving_proxy_requests_total`` (by code, version group and
version) and ``ha_serving_proxy_request_duration_seconds`` (by group) on its metrics
address. The leader scrapes all proxies of a release's clusters every ``interval_s``;
``analyze(before, after, policy)`` judges the *difference* between two scrapes, so each
check covers exactly the last interval, whatever ran before.

A check is ``pass``, ``fail`` (success rate below ``min_success_rate`` or p99 above
``max_p99_ms``) or ``inconclusive`` (fewer than ``min_requests`` candidate calls: too
little traffic to judge, so it counts neither way). p99 is read from the histogram's
buckets, so it is the upper bound of the bucket holding the 99th percentile.
"""

from __future__ import annotations

import http.client
import logging
import math
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from ha_serving._jobstate import JobState
from ha_serving.util.histogram import quantile_bound

FAILURE_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED"}
)
"""Answers that count against a version: the platform's or the code's failures, not the
caller's (INVALID_ARGUMENT, NOT_FOUND...)."""

log = logging.getLogger("ha_serving.keeper.analysis")

_REQUESTS = "ha_serving_proxy_requests_total"
_BUCKETS = "ha_serving_proxy_request_duration_seconds_bucket"


class AnalysisPolicy(BaseModel):
    """When a release's candidate is judged good enough to go on."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False
    )

    interval_s: float = Field(default=5.0, gt=0, le=3600)
    """Seconds between checks (each judges the calls of that interval)."""
    min_requests: int = Field(default=20, ge=1)
    """Fewer candidate calls than this in an interval: inconclusive."""
    min_success_rate: float = Field(default=0.99, ge=0, le=1)
    """Share of the candidate's calls that must not fail (see FAILURE_CODES)."""
    max_p99_ms: float = Field(default=1000.0, gt=0)
    """The candidate's p99 latency must stay at or below this."""
    max_failed_checks: int = Field(default=2, ge=1)
    """Failed checks before the release is rolled back automatically."""


@dataclass
class GroupSample:
    requests: float = 0.0
    failures: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    """Cumulative count per bucket upper bound (seconds), +Inf included."""

    def add(self, other: GroupSample) -> None:
        self.requests += other.requests
        self.failures += other.failures
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n


Sample = dict[str, GroupSample]
"""Counters by version group, summed over every proxy scraped."""


def parse(text: str, service: str) -> Sample:
    """One proxy's ``/metrics`` text, reduced to ``service``'s counters by group."""
    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("service") != service:
                continue
            group = s.labels.get("group", "")
            if s.name == _REQUESTS:
                g = out.setdefault(group, GroupSample())
                g.requests += s.value
                if s.labels.get("code") in FAILURE_CODES:
                    g.failures += s.value
            elif s.name == _BUCKETS:
                g = out.setdefault(group, GroupSample())
                le = float(s.labels["le"])
                g.buckets[le] = g.buckets.get(le, 0.0) + s.value
    return out


class MetricsScraper:
    """Reads the proxies' ``/metrics`` for the leader, one endpoint at a time.

    A bad endpoint is that endpoint's scrape failing, never the round's: one that is
    unreachable, answers something that is not HTTP, an HTTP error, undecodable bytes,
    a malformed exposition or more than ``max_bytes`` is skipped (its calls are not in
    this sample, nor in the next one's difference). It is logged in one line when it
    starts failing and when it is readable again, not on every round."""

    def __init__(self, *, timeout_s: float = 1.0, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.timeout_s = timeout_s
        """Per socket operation, and for reading a whole body."""
        self.max_bytes = max_bytes
        """A larger body counts as a failed scrape (a proxy's is a few KiB)."""
        self._failing: set[str] = set()

    def __call__(self, addresses: Iterable[str], service: str) -> Sample:
        """Sum of every readable proxy's counters of ``service``."""
        total: Sample = {}
        for address in addresses:
            try:
                sample = parse(self._fetch(address), service)
            except Exception as exc:  # whatever a bad proxy sends fails its scrape alone
                if address not in self._failing:
                    self._failing.add(address)
                    log.warning("metrics of %s unreadable, skipped: %s", address, _brief(exc))
                continue
            if address in self._failing:
                self._failing.discard(address)
                log.info("metrics of %s readable again", address)
            for group, part in sample.items():
                total.setdefault(group, GroupSample()).add(part)
        return total

    def _fetch(self, address: str) -> str:
        deadline = time.monotonic() + self.timeout_s
        body = bytearray()
        with _OPENER.open(f"http://{address}/metrics", timeout=self.timeout_s) as resp:
            while chunk := resp.read1(64 * 1024):
                body += chunk
                if len(body) > self.max_bytes:
                    raise ValueError(f"more than {self.max_bytes} bytes")
                if time.monotonic() > deadline:  # a trickle of bytes, each within timeout
                    raise TimeoutError(f"body not read within {self.timeout_s:g} s")
        return body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None  # a proxy's metrics are where it said: a 3xx is a failed scrape


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
"""Straight to the proxy (no HTTP proxy from the environment), no redirects."""


def scrape(addresses: Iterable[str], service: str, *, timeout_s: float = 1.0) -> Sample:
    """One scrape of ``addresses`` (see ``MetricsScraper``, which the leader keeps, so a
    bad endpoint is logged once, not on every round)."""
    return MetricsScraper(timeout_s=timeout_s)(addresses, service)


def _brief(exc: BaseException) -> str:
    """An exception as one short line (a bad status line quotes what the peer sent)."""
    if isinstance(exc, http.client.BadStatusLine):
        text = "not an HTTP answer"
    else:
        text = " ".join(str(exc).split()) or "(no detail)"
    return f"{type(exc).__name__}: {text[:160]}"


def _delta(before: Sample, after: Sample, group: str) -> GroupSample:
    a, b = after.get(group, GroupSample()), before.get(group, GroupSample())
    if a.requests < b.requests:  # a proxy restarted (counters reset): judge what is there
        return a
    return GroupSample(
        requests=a.requests - b.requests,
        failures=a.failures - b.failures,
        buckets={le: n - b.buckets.get(le, 0.0) for le, n in a.buckets.items()},
    )


def p99_ms(sample: GroupSample) -> float | None:
    """Upper bound of the bucket holding the 99th percentile, in ms; None if no calls."""
    le = quantile_bound(sample.buckets, 0.99)
    return None if le is None else le * 1000.0  # inf stays inf


class Check(BaseModel):
    """One analysis check, as a release's progress keeps it (``progress.checks``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    requests: int = 0
    """The candidate group's calls in the interval."""
    failures: int = 0
    success_rate: float | None = None
    """None: no calls."""
    p99_ms: float | None = None
    """None: no calls, or past the last bucket (JSON has no infinity)."""
    stable_requests: int = 0
    stable_success_rate: float | None = None
    stable_p99_ms: float | None = None
    verdict: Literal["pass", "fail", "inconclusive"]
    reason: str = ""
    at: float | None = None
    """When the leader judged it (the store's clock); set by the leader."""
    step: int | None = None
    """The release's step it judged; set by the leader."""
    weight: int | None = None
    """The candidate's weight during it; set by the leader."""


def analyze(before: Sample, after: Sample, policy: AnalysisPolicy) -> Check:
    """Judge the candidate group's calls between two samples (see the module's text)."""
    cand, stable = _delta(before, after, "candidate"), _delta(before, after, "stable")
    success_rate = _rate(cand)
    verdict: Literal["pass", "fail", "inconclusive"]
    if cand.requests < policy.min_requests:
        verdict, reason = "inconclusive", f"{int(cand.requests)} candidate calls"
    elif (success_rate or 0.0) < policy.min_success_rate:
        verdict = "fail"
        reason = f"success rate {success_rate:.4f} < {policy.min_success_rate}"
    elif (p99 := p99_ms(cand)) is not None and p99 > policy.max_p99_ms:
        verdict, reason = "fail", f"p99 {p99:.0f} ms > {policy.max_p99_ms:.0f} ms"
    else:
        verdict, reason = "pass", ""
    return Check(
        requests=int(cand.requests),
        failures=int(cand.failures),
        success_rate=success_rate,
        p99_ms=_finite(p99_ms(cand)),
        stable_requests=int(stable.requests),
        stable_success_rate=_rate(stable),
        stable_p99_ms=_finite(p99_ms(stable)),
        verdict=verdict,
        reason=reason,
    )


def _rate(sample: GroupSample) -> float | None:
    if sample.requests <= 0:
        return None
    return round(1.0 - sample.failures / sample.requests, 6)


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a p99 past the last bucket is reported as None."""
    return None if value is None or math.isinf(value) else round(value, 1)


def metrics_addresses(states: Mapping[str, JobState | None]) -> list[str]:
    """The proxies' metrics addresses named in the AppMasters' persisted states."""
    return sorted(
        p.metrics_address
        for state in states.values()
        if state is not None
        for p in state.proxies.values()
        if p.metrics_address
    )

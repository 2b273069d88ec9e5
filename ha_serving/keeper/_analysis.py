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

import math
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

FAILURE_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED"}
)
"""Answers that count against a version: the platform's or the code's failures, not the
caller's (INVALID_ARGUMENT, NOT_FOUND...)."""

_REQUESTS = "ha_serving_proxy_requests_total"
_BUCKETS = "ha_serving_proxy_request_duration_seconds_bucket"


class AnalysisPolicy(BaseModel):
    """When a release's candidate is judged good enough to go on."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

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


def scrape(addresses: Iterable[str], service: str, *, timeout_s: float = 1.0) -> Sample:
    """Sum of every reachable proxy's counters (an unreachable one is skipped: its calls
    are not in this sample, nor in the next one's difference)."""
    total: Sample = {}
    for address in addresses:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for group, sample in parse(text, service).items():
            total.setdefault(group, GroupSample()).add(sample)
    return total


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
    bounds = sorted(sample.buckets)
    if not bounds:
        return None
    total = sample.buckets[bounds[-1]]
    if total <= 0:
        return None
    for le in bounds:
        if sample.buckets[le] >= 0.99 * total:
            return math.inf if math.isinf(le) else le * 1000.0
    return math.inf


def analyze(before: Sample, after: Sample, policy: AnalysisPolicy) -> dict[str, Any]:
    """Judge the candidate group's calls between two samples (see the module's text)."""
    cand, stable = _delta(before, after, "candidate"), _delta(before, after, "stable")
    check: dict[str, Any] = {
        "requests": int(cand.requests),
        "failures": int(cand.failures),
        "success_rate": _rate(cand),
        "p99_ms": _finite(p99_ms(cand)),
        "stable_requests": int(stable.requests),
        "stable_success_rate": _rate(stable),
        "stable_p99_ms": _finite(p99_ms(stable)),
    }
    if cand.requests < policy.min_requests:
        verdict, reason = "inconclusive", f"{int(cand.requests)} candidate calls"
    elif (check["success_rate"] or 0.0) < policy.min_success_rate:
        verdict = "fail"
        reason = f"success rate {check['success_rate']:.4f} < {policy.min_success_rate}"
    elif (p99 := p99_ms(cand)) is not None and p99 > policy.max_p99_ms:
        verdict, reason = "fail", f"p99 {p99:.0f} ms > {policy.max_p99_ms:.0f} ms"
    else:
        verdict, reason = "pass", ""
    return {**check, "verdict": verdict, "reason": reason}


def _rate(sample: GroupSample) -> float | None:
    if sample.requests <= 0:
        return None
    return round(1.0 - sample.failures / sample.requests, 6)


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a p99 past the last bucket is reported as None."""
    return None if value is None or math.isinf(value) else round(value, 1)


def metrics_addresses(states: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The proxies' metrics addresses named in the AppMasters' persisted states."""
    out = []
    for state in states.values():
        for proxy in (state or {}).get("proxies", {}).values():
            if proxy.get("metrics_address"):
                out.append(proxy["metrics_address"])
    return sorted(out)

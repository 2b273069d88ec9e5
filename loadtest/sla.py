"""SLA arithmetic over raw request records (pure; unit-tested).

A record is one request: when it started (epoch seconds), how long it took (ms), its
outcome (``"OK"`` or a gRPC status name, or ``"TIMEOUT"``/``"CONNECTION"``), and the
cluster that answered (empty for failures). Availability is good / total; every non-OK
outcome is a failure. Percentiles come from the raw latencies (nearest rank), not from
Locust's 2-significant-digit buckets.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Record:
    start: float
    latency_ms: float
    outcome: str
    cluster: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "OK"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def timeline(records: list[Record]) -> list[dict[str, float]]:
    """Per second since the first request: requests, failures and p99 latency."""
    if not records:
        return []
    t0 = min(r.start for r in records)
    buckets: dict[int, list[Record]] = {}
    for r in records:
        buckets.setdefault(int(r.start - t0), []).append(r)
    out = []
    for second in range(max(buckets) + 1):
        rs = buckets.get(second, [])
        lat = sorted(r.latency_ms for r in rs)
        out.append(
            {
                "t": float(second),
                "requests": float(len(rs)),
                "failures": float(sum(1 for r in rs if not r.ok)),
                "p99_ms": percentile(lat, 99),
            }
        )
    return out


def longest_bad_streak(seconds: list[dict[str, float]]) -> float:
    """Longest run of consecutive seconds that each had at least one failure."""
    best = run = 0
    for s in seconds:
        run = run + 1 if s["failures"] > 0 else 0
        best = max(best, run)
    return float(best)


def summarize(records: list[Record], *, slo: float) -> dict[str, Any]:
    total = len(records)
    good = sum(1 for r in records if r.ok)
    latencies = sorted(r.latency_ms for r in records)
    seconds = timeline(records)
    availability = good / total if total else 0.0
    per_cluster = Counter(r.cluster for r in records if r.ok)
    return {
        "requests": total,
        "failures": total - good,
        "failures_by_outcome": dict(Counter(r.outcome for r in records if not r.ok)),
        "availability": availability,
        "slo": slo,
        "passed": total > 0 and availability >= slo,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "p999_ms": percentile(latencies, 99.9),
        "max_ms": latencies[-1] if latencies else 0.0,
        "longest_bad_streak_s": longest_bad_streak(seconds),
        "per_cluster": dict(sorted(per_cluster.items())),
        "duration_s": (max(r.start for r in records) - min(r.start for r in records))
        if records
        else 0.0,
    }

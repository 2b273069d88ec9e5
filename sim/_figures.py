"""The figures of a run, computed from raw samples: pure functions, unit-tested.

Percentiles interpolate linearly between order statistics (numpy's default), so p99 of a
few hundred rounds is a real value between two samples, not the maximum.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Count, p50, p99 and maximum of a set of durations (seconds)."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            count=len(values),
            p50=percentile(values, 50),
            p99=percentile(values, 99),
            max=max(values) if values else math.nan,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def rate(before: Mapping[str, int], after: Mapping[str, int], seconds: float) -> dict[str, float]:
    """Per-second rate of each counter between two snapshots (a counter absent before
    counts from 0: a process that started inside the window)."""
    if seconds <= 0:
        raise ValueError("a rate needs a window longer than 0 s")
    return {k: (after[k] - before.get(k, 0)) / seconds for k in after}


def cpu_seconds_from_stat(stat_line: str, ticks_per_s: int) -> float:
    """User + system CPU seconds of a process from its ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may hold spaces, so fields are
    counted after the last ``)``: utime and stime are fields 14 and 15 of the line."""
    rest = stat_line.rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / ticks_per_s


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) over log(x): the exponent k in y ~ x^k (1: linear
    growth, 2: quadratic). NaN with fewer than two usable (positive) points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    if var == 0:
        return math.nan
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var


@dataclass(frozen=True)
class EndpointChange:
    """An endpoint appeared (with ``weight``) or went (``weight`` None) at ``at``."""

    service: str
    address: str
    weight: int | None
    at: float


class Propagation:
    """Endpoint change -> a watcher sees it.

    ``change`` records what discovery should show next for one address (the newest
    change per address replaces an unseen older one: only the final state is awaited);
    ``seen`` takes a watcher's whole list and returns the delays of the changes it now
    reflects. Changes never seen stay ``pending`` (reported, not hidden).

    A change is stamped before its write and may be recorded after a watcher already
    showed it (watchers report only when their list changes): so each service's last
    list is kept, and a change it already satisfies counts at once."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], EndpointChange] = {}
        self._last: dict[str, tuple[float, dict[str, int]]] = {}
        self._lock = threading.Lock()  # store threads record, watcher threads see
        self.delays: list[float] = []

    def change(self, change: EndpointChange) -> None:
        with self._lock:
            self._pending[(change.service, change.address)] = change
            last = self._last.get(change.service)
            if last is not None:
                self._seen(change.service, last[1], last[0])

    def seen(self, service: str, endpoints: Iterable[tuple[str, int]], at: float) -> list[float]:
        shown = dict(endpoints)
        with self._lock:
            self._last[service] = (at, shown)
            return self._seen(service, shown, at)

    def _seen(self, service: str, shown: dict[str, int], at: float) -> list[float]:
        done: list[float] = []
        for key, c in list(self._pending.items()):
            if key[0] != service or c.at > at:
                continue
            present = c.address in shown
            if (c.weight is None and not present) or (
                c.weight is not None and shown.get(c.address) == c.weight
            ):
                del self._pending[key]
                done.append(max(0.0, at - c.at))
        self.delays.extend(done)
        return done

    @property
    def pending(self) -> int:
        return len(self._pending)

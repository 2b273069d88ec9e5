"""Dispatcher: runs indicator tasks on a pool of asyncio "indicator workers".

Each task goes to the worker with the fewest tasks in flight (ties broken round-robin
from a moving cursor, so an idle pool is used evenly), or plainly round-robin; a
semaphore bounds the tasks in flight per instance, across all concurrent requests, so a
burst of large requests queues here instead of starting thousands of coroutines.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from . import indicators

POLICIES = ("least_loaded", "round_robin")


@dataclass(frozen=True)
class Tuning:
    """How one instance computes; replaced as a whole by ``reconfigure``."""

    indicator_workers: int = 8
    max_parallel: int = 64
    policy: str = "least_loaded"
    io_delay_ms: float = 2.0
    series_length: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.indicator_workers <= 256:
            raise ValueError(f"indicator_workers must be 1..256, got {self.indicator_workers}")
        if not 1 <= self.max_parallel <= 10_000:
            raise ValueError(f"max_parallel must be 1..10000, got {self.max_parallel}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0 <= self.io_delay_ms <= 1000:
            raise ValueError(f"io_delay_ms must be 0..1000, got {self.io_delay_ms}")
        if not 2 <= self.series_length <= 10_000:
            raise ValueError(f"series_length must be 2..10000, got {self.series_length}")


class IndicatorWorker:
    """One logical worker: fetches an indicator's series (I/O) and computes it (CPU)."""

    def __init__(self, index: int, tuning: Tuning) -> None:
        self.index = index
        self.inflight = 0
        self.done = 0
        self._tuning = tuning

    async def run(self, time_key: str, bank: str, indicator: str) -> dict[str, float]:
        self.inflight += 1
        try:
            await asyncio.sleep(self._tuning.io_delay_ms / 1000)  # the series' fetch
            values = indicators.series(time_key, bank, indicator, self._tuning.series_length)
            return indicators.compute(values)
        finally:
            self.inflight -= 1
            self.done += 1


class Dispatcher:
    def __init__(self, tuning: Tuning) -> None:
        self.tuning = tuning
        self.workers = [IndicatorWorker(i, tuning) for i in range(tuning.indicator_workers)]
        self._slots = asyncio.Semaphore(tuning.max_parallel)
        self._cursor = 0

    def pick(self) -> IndicatorWorker:
        start = self._cursor
        self._cursor = (self._cursor + 1) % len(self.workers)
        if self.tuning.policy == "round_robin":
            return self.workers[start]
        n = len(self.workers)
        return min((self.workers[(start + k) % n] for k in range(n)), key=lambda w: w.inflight)

    async def run(self, time_key: str, bank: str, indicator_names: tuple[str, ...]) -> list[dict]:
        """Compute every indicator of one bank concurrently; results in input order."""

        async def one(name: str) -> dict[str, float]:
            async with self._slots:
                return await self.pick().run(time_key, bank, name)

        return list(await asyncio.gather(*(one(name) for name in indicator_names)))

    def load(self) -> dict[str, object]:
        """Per-worker completed tasks: shows how evenly the dispatcher spreads work."""
        return {"workers": len(self.workers), "done": [w.done for w in self.workers]}

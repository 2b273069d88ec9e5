"""PaymentStrategy: the service class (``strategy:PaymentStrategy``).

``evaluate({"time": t, "banks": {bank: [indicator, ...]}})`` runs three layers inside
one instance, after Ant's payment-routing use case:

1. trigger: validate the request and split it per bank (``trigger.split``);
2. per bank, concurrently: the dispatcher fans the bank's indicators out to the
   instance's pool of indicator workers (``dispatcher.Dispatcher``), then the bank's
   results are merged (``postprocess.merge_bank``);
3. post-processing: rank the banks by score, summary stats (``postprocess.rank``).

Everything under ``meta`` depends on timing and scheduling; the rest of a reply depends
only on the request, so equal requests get equal answers on every instance.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import postprocess, trigger
from .dispatcher import Dispatcher, Tuning

VERSION = "1"


class PaymentStrategy:
    def __init__(self) -> None:
        self._dispatcher = Dispatcher(Tuning())
        self._min_score = 0.0

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Swap in a new dispatcher (pool size, parallelism, policy) in one assignment:
        requests already running finish on the one they started with."""
        fields = {k: v for k, v in config.items() if k in Tuning.__dataclass_fields__}
        min_score = float(config.get("min_score", 0.0))
        dispatcher = Dispatcher(Tuning(**fields))  # raises ValueError on a bad value
        self._dispatcher, self._min_score = dispatcher, min_score

    async def evaluate(self, request: object) -> dict[str, Any]:
        started = time.perf_counter()
        time_key, jobs = trigger.split(request)
        dispatcher, min_score = self._dispatcher, self._min_score

        async def bank(job: trigger.BankJob) -> dict[str, Any]:
            results = await dispatcher.run(job.time, job.bank, job.indicators)
            return postprocess.merge_bank(job.bank, job.indicators, results)

        merged = await asyncio.gather(*(bank(job) for job in jobs))
        reply = postprocess.rank(time_key, list(merged), min_score)
        reply["meta"] = {
            "version": VERSION,
            "policy": dispatcher.tuning.policy,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            "dispatcher": dispatcher.load(),
        }
        return reply

    def check_health(self) -> bool:
        return True

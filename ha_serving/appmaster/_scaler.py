"""Act separately: the AppMaster's autoscaler, a thin loop around the pure policies.

The AppMaster calls ``Autoscaler.tick`` every round; once per reading period (the
policy's ``reading_period_s``, else ``AutoscaleSettings.reading_period_s``) it asks
each of the service's proxies for its metrics text (the proxies' own figures, through
the runtime, as it asks them for everything else), turns the differences since the
previous reading into a ``Reading`` (in-flight calls, answered calls per second,
latency histogram), and asks ``_autoscale.decide`` for a count. A count that changes
is saved in the job's state (``autoscaled``, read through ``ServiceSpec.scaled``)
*before* the planner acts on it, and recorded as an ``autoscale`` event with its
reason; the planner then adds instances (filling existing workers first) or drains the
highest ones, as for any other change of count. A decision that changes nothing is
kept in memory for ``describe`` only: a DB write per second per service would buy
nothing.

With ``autoscaling.predictive``, the answered calls are also summed per step and each
finished step's rate is recorded in the store; once per step the history is read back
and a Holt-Winters forecast refitted (in a thread), whose count ``decide`` takes as a
floor it may raise, never lower.

A service placed on more than one cluster also reads, every ``floor_period_s``, the
Keeper leader's capacity floor for its cluster (``Store.capacity_floor``): demand a lost
or full cluster cannot serve, which ``decide`` takes as a floor applied last. The count
its own figures ask for is saved as ``autoscale_demand`` whenever it changes: what the
Keeper reads as this cluster's demand.

If no proxy answers, no reading is taken and nothing is decided: the count stays.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict

from ha_serving._errors import TransientError
from ha_serving._settings import AutoscaleSettings
from ha_serving._spec import AutoscalingPolicy, PredictivePolicy
from ha_serving.appmaster._autoscale import Decision, Reading, ScalerMemory, decide
from ha_serving.appmaster._context import JobContext, Mutate
from ha_serving.appmaster._forecast import (
    forecast_instances,
    forecast_rate,
    history_needed_s,
)
from ha_serving.appmaster._state import AutoscaleChange, JobState, ProxyPhase
from ha_serving.proxy import ProxyFigures, read_figures
from ha_serving.runtime import ActorUnavailable


class Autoscaler:
    """One service's autoscaler on one cluster (its AppMaster owns it)."""

    def __init__(self, job: JobContext, *, settings: AutoscaleSettings) -> None:
        self.store, self.runtime, self.clock, self.log = job.store, job.runtime, job.clock, job.log
        self.cluster, self.service, self.settings = job.cluster, job.service, settings
        self.memory = ScalerMemory()
        self.last: Decision | None = None
        """The latest decision, whether it changed the count or not."""
        self._read_at = -math.inf
        self._figures: dict[str, tuple[float, ProxyFigures]] = {}
        self._step: tuple[float, float, float] | None = None
        """Predictive: (step start, calls answered in it, seconds of it observed)."""
        self._forecast: int | None = None
        self._delta = (0.0, 0.0)
        """Calls answered, and over how many seconds, between the last two readings."""
        self._silent = False
        self._floor: tuple[int, str] | None = None
        """The Keeper's floor for this cluster (count, reason), as last read."""
        self._floor_at = -math.inf

    def reset(self) -> None:
        """Autoscaling switched off: forget everything (a later policy starts afresh)."""
        self.memory, self.last, self._figures, self._step = ScalerMemory(), None, {}, None
        self._forecast, self._floor, self._floor_at = None, None, -math.inf

    async def tick(self, state: JobState, mutate: Mutate) -> Decision | None:
        """Read, decide and, if the count changes, persist it; the decision, or None
        when it was not time yet or no proxy answered."""
        policy = state.spec.autoscaling
        if policy is None:
            if self.last is not None:
                self.reset()
            return None
        now = self.clock.monotonic()
        period = policy.reading_period_s or self.settings.reading_period_s
        if now - self._read_at < period:
            return None
        self._read_at = now
        reading = await self._read(state, now)
        if reading is None:
            return None
        if policy.predictive is not None and reading.rate is not None:
            await self._predict(policy, policy.predictive)
        current = state.spec.scaled(state.autoscaled)
        ready = len(state.serving())
        floor, floor_why = await self._keeper_floor(state, now) or (None, "")
        self.memory, decision = decide(
            policy,
            self.memory,
            reading,
            current,
            ready=ready,
            forecast=self._forecast,
            floor=floor,
            floor_why=floor_why,
        )
        previous, self.last = self.last, decision
        if decision.changes:
            await self._record(decision, mutate)
        elif decision.demand != state.autoscale_demand:
            await mutate(lambda s: s.model_copy(update={"autoscale_demand": decision.demand}))
        elif previous is not None and previous.mode != decision.mode == "panic":
            self.log.info("autoscale: %s", decision.reason)
        return decision

    @property
    def floor(self) -> int | None:
        """The Keeper's floor for this cluster as last read (None: none)."""
        return None if self._floor is None else self._floor[0]

    async def _keeper_floor(self, state: JobState, now: float) -> tuple[int, str] | None:
        """The Keeper's floor for this cluster, read again every ``floor_period_s``; a
        store that does not answer keeps the last one read. None: no floor (or a service
        on one cluster, which has no other cluster's demand to take)."""
        if len(state.spec.placement.clusters) < 2:
            return None
        if now - self._floor_at >= self.settings.floor_period_s:
            self._floor_at = now
            try:
                found = await asyncio.to_thread(
                    self.store.capacity_floor, self.service, self.cluster
                )
            except TransientError as exc:
                self.log.warning("autoscale: the Keeper's floor unreadable, kept: %s", exc)
            else:
                floor = None if found is None or found.floor < 1 else (found.floor, found.reason)
                if floor != self._floor:
                    self.log.info("autoscale: the Keeper's floor is now %s", floor)
                self._floor = floor
        return self._floor

    async def _read(self, state: JobState, now: float) -> Reading | None:
        names = sorted(
            n
            for n, p in state.proxies.items()
            if p.phase in {ProxyPhase.SERVING, ProxyPhase.WITHDRAWN}
        )
        found = await asyncio.gather(*(self._figures_of(n) for n in names))
        seen = {n: f for n, f in zip(names, found, strict=True) if f is not None}
        if not seen:
            if not self._silent:
                self.log.warning("autoscale: no proxy gave its figures; count unchanged")
            self._silent = True
            return None
        self._silent = False
        inflight = sum(sum(f.inflight.values()) for f in seen.values())
        answered, seconds, buckets = 0.0, 0.0, dict[float, float]()
        for name, figures in seen.items():
            before = self._figures.get(name)
            if before is None:
                continue
            at, old = before
            restarted = figures.answered < old.answered  # its counters began again
            answered += figures.answered - (0.0 if restarted else old.answered)
            seconds = max(seconds, now - at)
            for le, n in figures.buckets.items():
                buckets[le] = (
                    buckets.get(le, 0.0) + n - (0.0 if restarted else old.buckets.get(le, 0.0))
                )
        self._figures = {n: (now, f) for n, f in seen.items()}
        self._delta = (answered, seconds)
        rate = answered / seconds if seconds > 0 else None
        return Reading(now, inflight, rate, tuple(sorted(buckets.items())))

    async def _figures_of(self, proxy: str) -> ProxyFigures | None:
        try:
            text = await self.runtime.call(
                proxy, "metrics_text", timeout_s=self.settings.metrics_timeout_s
            )
            return read_figures(str(text), self.service)
        except (ActorUnavailable, TimeoutError, ValueError) as exc:
            self.log.debug("autoscale: no figures from %s: %s", proxy, exc)
            return None

    async def _record(self, decision: Decision, mutate: Mutate) -> None:
        change = AutoscaleChange(
            at=self.clock.now(),
            current=decision.current,
            desired=decision.desired,
            mode=decision.mode,
            reason=decision.reason,
        )
        await mutate(
            lambda s: s.model_copy(
                update={
                    "autoscaled": decision.desired,
                    "autoscale": change,
                    "autoscale_demand": decision.demand,
                }
            )
        )
        self.log.info("autoscale: %s", decision.reason)
        detail = {k: v for k, v in asdict(decision).items() if k != "at"}
        await asyncio.to_thread(
            self.store.append_event,
            "autoscale",
            cluster=self.cluster,
            service=self.service,
            detail=detail,
        )

    async def _predict(self, policy: AutoscalingPolicy, predictive: PredictivePolicy) -> None:
        """Sum answered calls per step; when a step ends, record its rate and refit."""
        wall = self.clock.now()
        start = math.floor(wall / predictive.step_s) * predictive.step_s
        calls, seconds = self._delta
        if self._step is None or self._step[0] == start:
            began, total, seen = self._step or (start, 0.0, 0.0)
            self._step = (began, total + calls, seen + seconds)
            return
        began, total, seen = self._step
        self._step = (start, calls, seconds)
        try:
            if seen > 0:
                await asyncio.to_thread(
                    self.store.record_rate_sample, self.service, self.cluster, began, total / seen
                )
            history = await asyncio.to_thread(
                self.store.list_rate_samples,
                self.service,
                self.cluster,
                since=wall - history_needed_s(predictive),
            )
        except TransientError as exc:  # the store is down: reactive alone until it is back
            self.log.warning("autoscale: rate history unavailable, forecast kept: %s", exc)
            return
        ahead = policy.instance_start_s + predictive.step_s
        started = time.perf_counter()
        rate = await asyncio.to_thread(forecast_rate, history, predictive, wall, ahead)
        self._forecast = forecast_instances(
            rate, _inflight_per_rate(self.memory), policy.target_inflight
        )
        self.log.debug(
            "autoscale: forecast %s calls/s -> %s instances (fit %.2f s)",
            rate,
            self._forecast,
            time.perf_counter() - started,
        )


def _inflight_per_rate(memory: ScalerMemory) -> float | None:
    """In-flight calls per call/s over the stable window: the mean latency, in s."""
    rated = [r for r in memory.readings if r.rate is not None]
    total = sum(r.rate or 0.0 for r in rated)
    if total <= 0:
        return None
    return sum(r.inflight for r in rated) / total

"""What the parts of one AppMaster share: the job they serve and how they reach it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ha_serving.appmaster._state import JobState
from ha_serving.runtime import Runtime
from ha_serving.store import Store
from ha_serving.util.clock import Clock
from ha_serving.util.logs import Bound

Change = Callable[[JobState], JobState]
Mutate = Callable[[Change], Awaitable[JobState]]
"""The core's group commit: apply a change to the latest state, persist it, return it."""


@dataclass(frozen=True)
class JobContext:
    """One service on one cluster, as ``AppMasterCore`` hands it to the parts it holds
    (``Actions``, ``Autoscaler``): its store, its runtime, its clock and its log."""

    store: Store
    runtime: Runtime
    cluster: str
    service: str
    clock: Clock
    log: Bound

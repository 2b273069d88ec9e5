"""Build AppMaster states the way an AppMaster saves them, for the Keeper's deciders:
they read ``JobState`` values (parsed from the persisted record), not documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ha_serving._jobstate import Group, Instance, JobState, Phase, Proxy, Rollout
from ha_serving._spec import Revision, ServiceSpec
from ha_serving._status import RolloutKind, RolloutStatus


def rollout(op_id: str, to: Revision, status: RolloutStatus = RolloutStatus.RUNNING) -> Rollout:
    return Rollout(
        op_id=op_id, kind=RolloutKind.CODE, from_rev=None, to_rev=to, status=status, started_at=0.0
    )


def job_state(
    spec: ServiceSpec,
    desired: Revision,
    *,
    count: int | None = None,
    running: Revision | None = None,
    phase: Phase = Phase.SERVING,
    group: Callable[[int], Group] = lambda _: Group.STABLE,
    run: Callable[[int], Revision] | None = None,
    **fields: Any,
) -> JobState:
    """A state of ``spec`` whose ``count`` instances (default: as many as the spec asks,
    autoscaled if ``fields`` says so) are in ``phase`` running ``running`` (default:
    ``desired``; ``run(k)`` per instance), in ``group(k)``, behind the spec's proxies
    (all serving), saved and read back through the record as the Keeper reads it."""
    base = JobState(service=spec.name, cluster="a", spec=spec, desired=desired, **fields)
    n = spec.scaled(base.autoscaled) if count is None else count
    instances = {
        f"i{k}": Instance(
            id=f"i{k}",
            worker=f"{spec.name}-w{k}",
            index=k,
            phase=phase,
            running=run(k) if run is not None else (running or desired),
            group=group(k),
        )
        for k in range(n)
    }
    proxies = {name: Proxy(name=name) for name in base.proxy_names()}
    state = base.model_copy(update={"instances": instances, "proxies": proxies})
    return JobState.from_record(state.to_record())

"""The AppMaster's durable state: it lives in ``ha_serving._jobstate`` (the Keeper reads
it too); these names stay importable from here."""

from ha_serving._jobstate import (
    MAX_APPLIED_OPS,
    MAX_ENDED_RELEASES,
    MAX_HISTORY,
    MAX_RETIRED_WORKERS,
    OUT_OF_SERVICE,
    PROXY_TRANSITIONS,
    TRANSITIONS,
    AutoscaleChange,
    Group,
    Instance,
    JobState,
    Phase,
    Proxy,
    ProxyPhase,
    Release,
    Rollout,
    end_release,
    finish_rollout,
)

__all__ = [
    "MAX_APPLIED_OPS",
    "MAX_ENDED_RELEASES",
    "MAX_HISTORY",
    "MAX_RETIRED_WORKERS",
    "OUT_OF_SERVICE",
    "PROXY_TRANSITIONS",
    "TRANSITIONS",
    "AutoscaleChange",
    "Group",
    "Instance",
    "JobState",
    "Phase",
    "Proxy",
    "ProxyPhase",
    "Release",
    "Rollout",
    "end_release",
    "finish_rollout",
]

"""The AppMaster: per-service, per-cluster control plane with persisted state."""

from ha_serving._errors import IllegalTransition
from ha_serving.appmaster._actor import CONTROL_CPUS, NAMESPACE, AppMaster, appmaster_name
from ha_serving.appmaster._core import AppMasterCore, StaleInstruction, UnknownEpoch
from ha_serving.appmaster._planner import Observed, ProxyView, WorkerView, plan
from ha_serving.appmaster._state import Instance, JobState, Phase

__all__ = [
    "CONTROL_CPUS",
    "NAMESPACE",
    "AppMaster",
    "AppMasterCore",
    "IllegalTransition",
    "Instance",
    "JobState",
    "Observed",
    "Phase",
    "ProxyView",
    "StaleInstruction",
    "UnknownEpoch",
    "WorkerView",
    "appmaster_name",
    "plan",
]

"""An operation's plan and a release's progress, as typed values: the leader's own.

Any Keeper replica writes the plan when it records an operation (``_control_api.deploy``,
with ``_releases.make_plan`` and ``_weighted.release_plan``); the leader reads the row
back, and ``Operation.parse`` parses its plan and progress once, where the reconciler
reads the operation. The deciders (``decide``, ``decide_weighted``) and the analysis
take these models, never a dict. An operation whose plan or progress does not parse is
ended as failed with the first problem in one line (``Reconciler``): it could never be
carried out, and it must not stop the others.

Both are JSON columns of ``operations``: the keys are the ones rows already hold (never
rename one: the DB outlives the code), and a field that rows written before it lack is
left out of the record while it holds its default (``_OMITTED``), as those rows had it.

Plan (``operations.plan``):

============  =====================================================================
key           what
============  =====================================================================
clusters      the target clusters in order: name, instances, weight
spec          the service's spec
package       its code package's digest
generation    the service record's generation it makes
kind          deploy, config, code, scale, canary or blue_green (an older Keeper's
              "release" does not parse: such an operation fails)
request       digest of the Deploy request (a retry under the op_id must match it)
drain         (rolling update) each cluster's weight goes to 0 while it is rolled
release       (canary, blue-green) mode, steps, pause_s, instances per cluster,
              analysis
============  =====================================================================

Release progress (``operations.progress``): the candidate's ``weight``, the ``step``
that took effect everywhere and when (``step_at``), the analysis ``checks`` (newest
``MAX_CHECKS``) with ``failed_checks`` and ``last_failure``, and once it ends its
``ending`` (promote or abort), ``reason`` and whether it ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ha_serving._spec import ServiceSpec
from ha_serving._status import RELEASE_MODES, OperationStatus, ReleaseMode
from ha_serving.keeper._analysis import AnalysisPolicy, Check
from ha_serving.store import OperationRecord


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    _OMITTED: ClassVar[frozenset[str]] = frozenset()
    """Fields left out of the record while they hold their default."""

    def to_record(self) -> dict[str, Any]:
        """The value as its JSON column keeps it."""
        out = self.model_dump(mode="json")
        for name in self._OMITTED:
            if getattr(self, name) == type(self).model_fields[name].default:
                del out[name]
        return out


class ClusterTarget(_Doc):
    name: str
    instances: int
    """The cluster's instance count (its placement's, else the spec's)."""
    weight: int
    """Its share of traffic when clients spill over (the placement's)."""


class ReleasePlan(_Doc):
    """How a canary or blue-green runs (``_weighted.release_plan`` checks it)."""

    mode: ReleaseMode
    steps: tuple[int, ...]
    """Candidate weights, rising to 100."""
    pause_s: float
    """How long each step is held (blue-green: the rollback window)."""
    instances: dict[str, int]
    """Per target cluster, instances that run the candidate."""
    analysis: AnalysisPolicy


Kind = Literal["deploy", "config", "code", "scale", "canary", "blue_green"]
"""What an operation does: a rolling update (``DEPLOY_KINDS``) or a release."""


class Plan(_Doc):
    _OMITTED: ClassVar[frozenset[str]] = frozenset({"request", "drain", "release"})

    clusters: tuple[ClusterTarget, ...]
    spec: ServiceSpec
    package: str
    generation: int
    kind: Kind
    request: str | None = None
    drain: bool = False
    release: ReleasePlan | None = None

    @model_validator(mode="after")
    def _release_for_its_kind(self) -> Plan:
        if (self.kind in RELEASE_MODES) != (self.release is not None):
            needs = "needs" if self.release is None else "has"
            raise ValueError(f"a {self.kind} plan {needs} a release")
        return self

    def target(self, cluster: str) -> ClusterTarget:
        return next(t for t in self.clusters if t.name == cluster)

    def cluster_spec(self, target: ClusterTarget) -> ServiceSpec:
        """The spec with ``target``'s instance count (checked when the plan is made)."""
        return self.spec.model_copy(update={"instances": target.instances})

    def weighted(self) -> ReleasePlan:
        """The release of a canary or blue-green plan (its validator ensures one)."""
        if self.release is None:
            raise ValueError(f"a {self.kind} plan has no release")
        return self.release

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Plan:
        return cls.model_validate(record)


class _Targets(BaseModel):
    """Just the target clusters of a plan: what the leader reads of every service's
    latest operation each round, finished ones too (cheap; lenient with the rest)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    clusters: tuple[ClusterTarget, ...]


def target_clusters(plan: Mapping[str, Any]) -> list[str]:
    """The target cluster names of a stored plan; none for one that does not parse
    (its operation could not be carried out, and failed)."""
    try:
        return [t.name for t in _Targets.model_validate(plan).clusters]
    except ValidationError:
        return []


class ReleaseProgress(_Doc):
    """A canary's or blue-green's progress (the operation's ``progress``)."""

    _OMITTED: ClassVar[frozenset[str]] = frozenset(
        {
            "weight",
            "step",
            "step_at",
            "ending",
            "reason",
            "failed",
            "checks",
            "failed_checks",
            "last_failure",
        }
    )

    weight: int | None = None
    """The candidate's weight on every cluster, as last instructed."""
    step: int | None = None
    """The step that took effect on every cluster; its clock started at ``step_at``."""
    step_at: float | None = None
    ending: Literal["promote", "abort"] | None = None
    """How the release ends, once it does."""
    reason: str | None = None
    """Why it ends."""
    failed: bool = False
    """It ends because a cluster rejected one of its instructions: undone, then failed."""
    checks: tuple[Check, ...] = ()
    """The newest analysis checks, newest last."""
    failed_checks: int = 0
    last_failure: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> ReleaseProgress:
        return cls.model_validate(record or {})


class UnreadableOperation(ValueError):
    """An operation whose plan or progress does not parse, in one line."""

    def __init__(self, op_id: str, what: str, exc: ValidationError) -> None:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        super().__init__(f"the {what} of {op_id} does not parse: {where}: {first['msg']}{more}")


@dataclass(frozen=True)
class Operation:
    """An operation as the leader decides on it: its row, with the plan and the progress
    parsed once (``parse``)."""

    record: OperationRecord
    plan: Plan
    progress: ReleaseProgress

    @classmethod
    def parse(cls, record: OperationRecord) -> Operation:
        """``UnreadableOperation`` if its plan or progress does not parse."""
        try:
            plan = Plan.from_record(record.plan)
        except ValidationError as exc:
            raise UnreadableOperation(record.op_id, "plan", exc) from None
        try:
            progress = ReleaseProgress.from_record(record.progress)
        except ValidationError as exc:
            raise UnreadableOperation(record.op_id, "progress", exc) from None
        return cls(record, plan, progress)

    def written(
        self, record: OperationRecord, progress: ReleaseProgress | None = None
    ) -> Operation:
        """This operation after the store wrote ``record`` (with ``progress``, if it
        wrote that too)."""
        return replace(self, record=record, progress=progress or self.progress)

    @property
    def op_id(self) -> str:
        return self.record.op_id

    @property
    def service(self) -> str:
        return self.record.service

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def step(self) -> int:
        return self.record.step

    @property
    def status(self) -> OperationStatus:
        return self.record.status

    @property
    def command(self) -> str | None:
        return self.record.command

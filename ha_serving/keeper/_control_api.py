"""The Keeper's write path, served by every replica.

``deploy`` makes a request durable (operation row with its full plan, then the service
record) before it returns, whichever replica took it; only the leader acts on it. A
canary or blue-green (``kind``) leaves the service record alone: its candidate becomes
the record only when the leader has promoted it. ``command`` leaves an operator's
promote/pause/resume/abort on a release for the leader.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ha_serving._errors import InvalidSpec, UnknownService
from ha_serving._spec import ServiceSpec, parse_spec
from ha_serving.keeper._analysis import AnalysisPolicy
from ha_serving.keeper._releases import make_plan
from ha_serving.keeper._weighted import COMMANDS, WEIGHTED, release_plan
from ha_serving.store import AlreadyExists, OperationRecord, Store, UnknownOperation


class ReleaseOptions(BaseModel):
    """How an operation is carried out (the Deploy request's ``options_json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    drain: bool = False
    """Rolling update: set each cluster's traffic weight to 0 before rolling it."""
    steps: list[int] | None = None
    """Canary: candidate traffic percentages, rising to 100 (default 10, 50, 100);
    blue-green: [100], the switch."""
    pause_s: float = Field(default=30.0, ge=0, le=86_400)
    """Canary: how long each step is held; blue-green: the rollback window after the
    switch, during which the old version stays warm."""
    canary_instances: int = Field(default=1, ge=1)
    """Canary: instances per cluster that run the candidate (taken in place)."""
    analysis: AnalysisPolicy = AnalysisPolicy()


def _options(options_json: str) -> ReleaseOptions:
    try:
        return ReleaseOptions.model_validate_json(options_json or "{}")
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(options)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise InvalidSpec("options", problems) from None


def deploy(
    store: Store,
    spec_json: str,
    package: bytes,
    *,
    op_id: str = "",
    kind: str = "",
    options_json: str = "",
) -> tuple[str, bool]:
    """Record a deploy/update/scale/canary/blue_green; returns (op_id, duplicate)."""
    try:
        data = json.loads(spec_json)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("spec", [f"not JSON: {exc}"]) from None
    spec = parse_spec(data)
    options = _options(options_json)
    weighted = kind in WEIGHTED
    if op_id:
        try:
            store.get_operation(op_id)
        except UnknownOperation:
            pass
        else:
            return op_id, True
    current = _current(store, spec.name)
    if current is not None and current.spec.get("direct"):
        cluster = current.spec["direct"]
        raise InvalidSpec(
            "deploy",
            [
                f"{spec.name} is deployed directly on cluster {cluster}, not through the "
                f"Keepers: change it with --cluster {cluster}, or use another name"
            ],
        )
    if weighted and current is None:
        raise InvalidSpec(kind, [f"{spec.name} is not deployed: deploy it before a {kind}"])
    if package:
        digest = store.put_package(package)
    elif current is not None:
        digest = current.spec["package"]
    else:
        raise InvalidSpec("deploy", [f"{spec.name} is new: its code package is required"])
    generation = (current.spec_version + 1) if current is not None else 1
    registered = [c.name for c in store.list_clusters()]
    plan = _plan(spec, digest, generation, kind or "deploy", registered, options)
    op = OperationRecord(
        op_id=op_id or f"{kind or 'deploy'}-{uuid.uuid4().hex[:12]}",
        service=spec.name,
        kind=kind or "deploy",
        plan=plan,
    )
    stored = store.create_operation(op)  # durable: the leader acts on this row alone
    if not weighted:
        record_service(store, plan)
    return stored.op_id, False


def _plan(  # noqa: PLR0917 - everything a plan is made of
    spec: ServiceSpec,
    digest: str,
    generation: int,
    kind: str,
    registered: list[str],
    options: ReleaseOptions,
) -> dict[str, Any]:
    try:
        plan = make_plan(spec, digest, generation, kind, registered)
        if kind in WEIGHTED:
            plan["release"] = release_plan(
                kind,
                plan["clusters"],
                steps=options.steps,
                pause_s=options.pause_s,
                canary_instances=options.canary_instances,
                analysis=options.analysis,
            )
        elif options.drain:
            plan["drain"] = True
    except ValueError as exc:
        raise InvalidSpec(kind, [str(exc)]) from None
    return plan


def record_service(store: Store, plan: dict[str, Any]) -> None:
    """Make ``plan``'s spec the service's record (a deploy at once; a release's
    candidate once promoted)."""
    spec = plan["spec"]
    record = {"spec": spec, "package": plan["package"], "generation": plan["generation"]}
    current = _current(store, spec["name"])
    if current is None:
        try:
            store.create_service(spec["name"], record)
        except AlreadyExists:
            current = store.get_service(spec["name"])
    if current is not None:
        store.update_service(spec["name"], record, expected_version=current.version)


def _current(store: Store, name: str) -> Any:
    try:
        return store.get_service(name)
    except UnknownService:
        return None


def command(store: Store, op_id: str, what: str) -> OperationRecord:
    """Leave the operator's ``what`` on release ``op_id``, durable before it returns."""
    if what not in COMMANDS:
        raise InvalidSpec("command", [f"{what!r} is not one of {', '.join(COMMANDS)}"])
    op = store.get_operation(op_id)  # UnknownOperation: NOT_FOUND
    if op.kind not in WEIGHTED:
        raise InvalidSpec("command", [f"{op_id} is a {op.kind}, not a canary or blue-green"])
    return store.command_operation(op_id, what)

"""The Keeper's write path, served by every replica.

``deploy`` makes a request durable (operation row with its full plan and the service
record, in one transaction) before it returns, whichever replica took it; only the
leader acts on it. A canary or blue-green (``kind``) leaves the service record alone: its
candidate becomes the record only when the leader has promoted it. ``command`` leaves an
operator's promote/pause/resume/abort on a release for the leader.

Retries are safe under the caller's ``op_id``: the same request again is answered with
the operation it created (``duplicate``), another request under a used ``op_id`` is
refused (``OpIdReused``, ALREADY_EXISTS). Each plan carries a digest of the request it
was made from, since the plan itself (its generation) depends on when it was made.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ha_serving._errors import InvalidSpec, UnknownService, UserError
from ha_serving._spec import ServiceSpec, parse_spec
from ha_serving.keeper._analysis import AnalysisPolicy
from ha_serving.keeper._plan import Plan
from ha_serving.keeper._releases import make_plan, plan_targets
from ha_serving.keeper._weighted import COMMANDS, WEIGHTED, release_plan
from ha_serving.store import (
    AlreadyExists,
    OperationRecord,
    ServiceRecord,
    Store,
    UnknownOperation,
)

KINDS = ("deploy", "config", "code", "scale", *WEIGHTED)
"""What a Deploy request may ask for ("" is "deploy")."""

MAX_OP_ID = 24
"""Op ids are stored in 64-character columns (``operations``, ``instructions``,
``events``), and the leader's instructions carry ids made from them, the longest
``<op_id>#restore@<cluster>`` with cluster names of up to 31 characters (the placement's
pattern): 64 - 9 - 31 = 24. Generated ids (``blue_green-`` and 12 hex digits) fit."""
OP_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""No '#' or '@': they separate the parts of the instruction ids made from an op id."""


class OpIdReused(UserError):
    """A Deploy under an op_id that names an operation made from another request."""

    grpc_status = "ALREADY_EXISTS"

    def __init__(self, op_id: str) -> None:
        self.op_id = op_id
        super().__init__(
            f"op_id {op_id} names an operation made from another request: use a new op_id"
        )


def check_op_id(op_id: str) -> None:
    """``InvalidSpec`` (INVALID_ARGUMENT, one line) unless ``op_id`` fits the store."""
    if len(op_id) > MAX_OP_ID or not OP_ID_PATTERN.fullmatch(op_id):
        shown = op_id if len(op_id) <= 40 else op_id[:40] + "..."
        raise InvalidSpec(
            "op_id",
            [
                f"{shown!r}: up to {MAX_OP_ID} letters, digits, '.', '_' or '-', "
                "starting with a letter or a digit"
            ],
        )


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
    kind = kind or "deploy"
    spec, options = _parse(spec_json, op_id, kind, options_json)
    request = _request_digest(spec, package, kind, options)
    if op_id:
        try:
            return _repeated(store.get_operation(op_id), request)
        except UnknownOperation:
            pass
    current = _current(store, spec.name)
    digest = _package(store, spec, kind, package, current)
    generation = (current.spec_version + 1) if current is not None else 1
    registered = [c.name for c in store.list_clusters()]
    plan = _plan(spec, digest, generation, kind, registered, options)
    plan = plan.model_copy(update={"request": request})
    op = OperationRecord(
        op_id=op_id or f"{kind}-{uuid.uuid4().hex[:12]}",
        service=spec.name,
        kind=kind,
        plan=plan.to_record(),
    )
    # durable: the leader acts on this row alone; with the service record, atomically
    try:
        if kind in WEIGHTED:
            stored, created = store.create_operation(op), True
        else:
            record = _service_record(plan)
            version = current.version if current is not None else None
            stored, created = store.create_operation_with_service(
                op, record, expected_version=version
            )
    except AlreadyExists:  # a concurrent request under this op_id got there first
        return _repeated(store.get_operation(op.op_id), request)
    if not created:
        return _repeated(stored, request)
    return stored.op_id, False


def _parse(
    spec_json: str, op_id: str, kind: str, options_json: str
) -> tuple[ServiceSpec, ReleaseOptions]:
    """The request's spec and options; ``InvalidSpec`` for anything malformed in it."""
    if kind not in KINDS:
        raise InvalidSpec("kind", [f"{kind[:40]!r} is not one of {', '.join(KINDS)}"])
    if op_id:
        check_op_id(op_id)
    try:
        data = json.loads(spec_json)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise InvalidSpec("spec", [f"not JSON: {exc}"]) from None
    return parse_spec(data), _options(options_json)


def _package(
    store: Store, spec: ServiceSpec, kind: str, package: bytes, current: ServiceRecord | None
) -> str:
    """The digest of the code the operation rolls out (stored first if new); refuses a
    service deployed directly on a cluster, and a release of one not deployed yet."""
    if current is not None and current.spec.get("direct"):
        cluster = current.spec["direct"]
        raise InvalidSpec(
            "deploy",
            [
                f"{spec.name} is deployed directly on cluster {cluster}, not through the "
                f"Keepers: change it with --cluster {cluster}, or use another name"
            ],
        )
    if kind in WEIGHTED and current is None:
        raise InvalidSpec(kind, [f"{spec.name} is not deployed: deploy it before a {kind}"])
    if package:
        return store.put_package(package)
    if current is not None:
        return str(current.spec["package"])
    raise InvalidSpec("deploy", [f"{spec.name} is new: its code package is required"])


def _request_digest(spec: ServiceSpec, package: bytes, kind: str, options: ReleaseOptions) -> str:
    """What a Deploy asked for, as a digest: a retry under the same op_id must match it."""
    asked = {
        "spec": spec.model_dump(mode="json"),
        "package": hashlib.sha256(package).hexdigest() if package else "",
        "kind": kind,
        "options": options.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def _repeated(op: OperationRecord, request: str) -> tuple[str, bool]:
    """A Deploy under the op_id of a stored operation: the same request is a retry
    (answered with that operation), any other is refused."""
    if op.plan.get("request") != request:
        raise OpIdReused(op.op_id)
    return op.op_id, True


def _plan(  # noqa: PLR0917 - everything a plan is made of
    spec: ServiceSpec,
    digest: str,
    generation: int,
    kind: str,
    registered: list[str],
    options: ReleaseOptions,
) -> Plan:
    try:
        release = None
        if kind in WEIGHTED:
            release = release_plan(
                kind,
                plan_targets(spec, registered),
                steps=options.steps,
                pause_s=options.pause_s,
                canary_instances=options.canary_instances,
                analysis=options.analysis,
            )
        drain = options.drain and release is None
        return make_plan(spec, digest, generation, kind, registered, drain=drain, release=release)
    except ValueError as exc:
        raise InvalidSpec(kind, [str(exc)]) from None


def _service_record(plan: Plan) -> dict[str, Any]:
    """The service record ``plan`` makes (its spec, code and generation)."""
    return {
        "spec": plan.spec.model_dump(mode="json"),
        "package": plan.package,
        "generation": plan.generation,
    }


def record_service(store: Store, plan: Plan) -> None:
    """Make ``plan``'s spec the service's record (a deploy at once; a release's
    candidate once promoted)."""
    name = plan.spec.name
    record = _service_record(plan)
    current = _current(store, name)
    if current is None:
        try:
            store.create_service(name, record)
        except AlreadyExists:
            current = store.get_service(name)
    if current is not None:
        store.update_service(name, record, expected_version=current.version)


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

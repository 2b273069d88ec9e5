"""The leader's instructions to an AppMaster, as typed values both roles share.

The leader builds one body per cluster and step (``keeper._releases.cluster_body``,
``keeper._weighted.release_body``), the store keeps it as JSON (``instructions.body``),
a Keeper's ``Instructions`` stream carries that JSON, and the AppMaster parses it once,
at ``AppMasterCore.take_instruction``, with ``parse_instruction``: from there on both
roles hold these models, never a dict. A body that does not parse is rejected in one
line (``InvalidSpec``), which the AppMaster records as the instruction's rejection (the
leader then fails the operation with it): never a crash, never a link that reconnects
from the same instruction forever.

The ``kind`` tells the models apart (a discriminated union):

======================  ===========================================  ===================
kind                    fields                                       the AppMaster
======================  ===========================================  ===================
deploy, config, code,   spec (with this cluster's instance count),   adopts the spec and
scale                   package, generation                          rolls to it
release                 op, mode, spec, package, instances, weight   runs the candidate
                                                                     of release ``op`` /
                                                                     sets its weight
promote, abort          op                                           ends release ``op``
traffic                 weight (None: the placement's)               overrides this
                                                                     cluster's weight
======================  ===========================================  ===================

The JSON keys are the ones rows already hold: never rename one (the DB outlives the
code). A body without ``kind`` is a deploy, as it always was. A field this AppMaster
does not know is refused, not ignored: a setting is never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ha_serving._errors import InvalidSpec
from ha_serving._spec import ServiceSpec
from ha_serving._status import ReleaseMode

DEPLOY_KINDS = ("deploy", "config", "code", "scale")
"""The kinds of a rolling update (one cluster at a time)."""
END_KINDS = ("promote", "abort")
KINDS = (*DEPLOY_KINDS, "release", *END_KINDS, "traffic")

MAX_INSTANCES = 5000
"""A release's instance count can be no more than a spec's (``ServiceSpec.instances``)."""


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_record(self) -> dict[str, Any]:
        """The body as the store keeps it (JSON)."""
        return self.model_dump(mode="json")


class DeployBody(_Body):
    """Roll this cluster to ``spec`` (code in ``package``)."""

    kind: Literal["deploy", "config", "code", "scale"] = "deploy"
    spec: ServiceSpec
    """The service's spec with this cluster's instance count."""
    package: str
    """SHA-256 of the code package in the store."""
    generation: int = 0
    """The service record's generation the operation makes (0: not said)."""


class ReleaseBody(_Body):
    """Run ``spec`` as the candidate of release ``op`` beside the stable revision, on
    ``instances`` instances, with ``weight`` percent of this cluster's traffic; sent
    again with a new weight for each step."""

    kind: Literal["release"] = "release"
    op: str
    """The Keeper operation of the release."""
    mode: ReleaseMode
    spec: ServiceSpec
    package: str
    instances: int = Field(ge=0, le=MAX_INSTANCES, strict=True)
    weight: int = Field(ge=0, le=100, strict=True)


class EndReleaseBody(_Body):
    """Promote or abort release ``op``."""

    kind: Literal["promote", "abort"]
    op: str


class TrafficBody(_Body):
    """Override this cluster's traffic weight (a drained cluster's 0), or lift the
    override (None: the placement's weight)."""

    kind: Literal["traffic"] = "traffic"
    weight: int | None = Field(ge=0, le=1000, strict=True)


ReleaseInstruction = ReleaseBody | EndReleaseBody | TrafficBody
"""The instructions of a release or of a drained rolling update (``AppMasterCore.release``)."""
Body = DeployBody | ReleaseInstruction
"""Any instruction body."""

_BODY: TypeAdapter[Body] = TypeAdapter(Annotated[Body, Field(discriminator="kind")])


def parse_instruction(raw: str | bytes | Mapping[str, Any]) -> Body:
    """The body of an instruction (its JSON text, or that text parsed), if this AppMaster
    can carry it out; else ``InvalidSpec`` with the reasons in one line: not JSON, an
    unknown kind, a missing, unknown or wrong field, a spec that does not validate."""
    data: object = raw
    if isinstance(raw, str | bytes):
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise InvalidSpec("instruction", [f"not JSON: {exc}"]) from None
    if not isinstance(data, Mapping):
        raise InvalidSpec("instruction", [f"not a JSON object but {type(data).__name__}"])
    kind = data.get("kind", "deploy")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidSpec("instruction", [f"unknown kind {kind!r}"])
    try:
        return _BODY.validate_python({**data, "kind": kind})
    except ValidationError as exc:
        raise InvalidSpec("instruction", _problems(kind, exc)) from None


def _problems(kind: str, exc: ValidationError) -> list[str]:
    """Pydantic's errors, one short phrase each: the missing fields together first."""
    errors = exc.errors()
    # loc is (the kind's tag, field, ...): the union's member, then where in it
    missing = [str(e["loc"][1]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 2]
    out = [f"a {kind} instruction needs {', '.join(missing)}"] if missing else []
    for e in errors:
        where = [str(p) for p in e["loc"][1:]]
        if e["type"] == "missing" and len(where) == 1:
            continue
        if e["type"] == "extra_forbidden" and len(where) == 1:
            out.append(f"a {kind} instruction has no field {where[0]}")
        elif where and where[0] == "spec":
            out.append(f"bad spec: {'.'.join(where[1:]) or '(spec)'}: {e['msg']}")
        else:
            out.append(f"{'.'.join(where) or '(body)'}: {e['msg']}")
    return out

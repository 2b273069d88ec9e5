"""What the store and the service finally show, read into the checkers' ``FinalState``.

The store is read directly (the operations, the AppMasters' ``apply`` audit events and
their persisted applied-op windows, the service record); what each cluster serves comes
from the service itself (``served`` answers, asked by the runner through each cluster's
own proxies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chaos.checker import Applied, ClusterView, FinalState, StoredOp
from ha_serving.store import Store

MAX_EVENTS = 1_000_000


def operation_of(instruction_op_id: str) -> str | None:
    """The operation an AppMaster instruction belongs to (``op@cluster``); None for a
    sub-step (``op#drain@cluster``), which is not the op's own apply."""
    if "#" in instruction_op_id:
        return None
    return instruction_op_id.split("@", 1)[0]


def seq_of(spec: Any) -> int | None:
    config = spec.get("config") if isinstance(spec, Mapping) else None
    seq = config.get("seq") if isinstance(config, Mapping) else None
    return seq if isinstance(seq, int) else None


def last_event_id(db: Store, service: str) -> int:
    """The id of the service's latest audit event (0: none)."""
    latest = db.list_events(service=service, limit=1)
    return latest[-1].id if latest else 0


def final_state(
    db: Store,
    service: str,
    clusters: Sequence[str],
    served: Mapping[str, Sequence[int | None]],
    *,
    since_event: int = 0,
) -> FinalState:
    ops = tuple(
        StoredOp(
            op_id=o.op_id,
            status=o.status,
            seq=seq_of(o.plan.get("spec")),
            targets=tuple(str(t["name"]) for t in o.plan.get("clusters") or []),
            error=o.error or "",
        )
        for o in db.list_operations(service)
    )
    applies = []
    for e in db.list_events(service=service, limit=MAX_EVENTS):
        op = operation_of(e.op_id) if e.kind == "apply" and e.op_id else None
        if op is not None and e.cluster:
            applies.append(Applied(e.id, e.cluster, op, e.epoch))
    views = []
    for c in clusters:
        found = db.load_appmaster_state(c, service)
        window = (found[0].get("applied_ops") or []) if found else []
        applied = tuple(op for x in window if (op := operation_of(str(x))) is not None)
        views.append(ClusterView(c, applied, tuple(served.get(c, ()))))
    record = db.get_service(service).spec.get("spec")
    return FinalState(ops, tuple(applies), tuple(views), seq_of(record), since_event)

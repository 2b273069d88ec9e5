"""The Keeper's write path, served by every replica.

``deploy`` makes a request durable (operation row with its full plan, then the service
record) before it returns, whichever replica took it; only the leader acts on it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ha_serving._errors import InvalidSpec, UnknownService
from ha_serving._spec import parse_spec
from ha_serving.keeper._releases import make_plan
from ha_serving.store import AlreadyExists, OperationRecord, Store, UnknownOperation


def deploy(
    store: Store, spec_json: str, package: bytes, *, op_id: str = "", kind: str = ""
) -> tuple[str, bool]:
    """Record a deploy/update/scale; returns (op_id, duplicate)."""
    try:
        data = json.loads(spec_json)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("spec", [f"not JSON: {exc}"]) from None
    spec = parse_spec(data)
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
    if package:
        digest = store.put_package(package)
    elif current is not None:
        digest = current.spec["package"]
    else:
        raise InvalidSpec("deploy", [f"{spec.name} is new: its code package is required"])
    generation = (current.spec_version + 1) if current is not None else 1
    registered = [c.name for c in store.list_clusters()]
    try:
        plan = make_plan(spec, digest, generation, kind or "deploy", registered)
    except ValueError as exc:
        raise InvalidSpec("placement", [str(exc)]) from None
    op = OperationRecord(
        op_id=op_id or f"{kind or 'deploy'}-{uuid.uuid4().hex[:12]}",
        service=spec.name,
        kind=kind or "deploy",
        plan=plan,
    )
    stored = store.create_operation(op)  # durable: the leader acts on this row alone
    record = {"spec": spec.model_dump(mode="json"), "package": digest, "generation": generation}
    if current is None:
        try:
            store.create_service(spec.name, record)
        except AlreadyExists:
            current = store.get_service(spec.name)
    if current is not None:
        store.update_service(spec.name, record, expected_version=current.version)
    return stored.op_id, False


def _current(store: Store, name: str) -> Any:
    try:
        return store.get_service(name)
    except UnknownService:
        return None

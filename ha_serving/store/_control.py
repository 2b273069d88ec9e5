"""What the Keepers keep: the cluster registry, AppMaster registrations (heartbeats)
and the leader's instructions to AppMasters (an append-only, ordered log per target)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection

from ha_serving.store._schema import appmasters, clusters, instructions


@dataclass(frozen=True)
class ClusterRecord:
    name: str
    gcs_address: str
    dashboard_url: str | None
    zone: str
    tier: str = ""
    """A label of the operator's (e.g. primary/secondary); '' for clusters `up` registers."""


@dataclass(frozen=True)
class AppMasterRecord:
    cluster: str
    service: str
    actor_name: str
    epoch_seen: int
    heartbeat_at: float


@dataclass(frozen=True)
class Instruction:
    id: int
    cluster: str
    service: str
    op_id: str
    epoch: int
    body: dict[str, Any]


def _upsert(conn: Connection, table: sa.Table, key: Any, values: dict[str, Any]) -> None:
    if conn.execute(sa.update(table).where(key).values(**values)).rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(table).values(**values))
    except exc.IntegrityError:  # a concurrent insert won: update it
        conn.execute(sa.update(table).where(key).values(**values))


def register_cluster(conn: Connection, now: Any, record: ClusterRecord) -> None:
    values = {**record.__dict__, "updated_at": now}
    _upsert(conn, clusters, clusters.c.name == record.name, values)


def list_clusters(conn: Connection) -> list[ClusterRecord]:
    rows = conn.execute(sa.select(clusters).order_by(clusters.c.name)).all()
    return [ClusterRecord(r.name, r.gcs_address, r.dashboard_url, r.zone, r.tier) for r in rows]


def remove_cluster(conn: Connection, name: str) -> bool:
    return bool(conn.execute(sa.delete(clusters).where(clusters.c.name == name)).rowcount)


def heartbeat_appmaster(  # noqa: PLR0917 - one row's fields
    conn: Connection, now: Any, cluster: str, service: str, actor_name: str, epoch_seen: int
) -> None:
    key = (appmasters.c.cluster == cluster) & (appmasters.c.service == service)
    values = {
        "cluster": cluster,
        "service": service,
        "actor_name": actor_name,
        "address": None,
        "epoch_seen": epoch_seen,
        "heartbeat_at": now,
    }
    _upsert(conn, appmasters, key, values)


def list_appmasters(conn: Connection, service: str | None = None) -> list[AppMasterRecord]:
    query = sa.select(appmasters).order_by(appmasters.c.service, appmasters.c.cluster)
    if service is not None:
        query = query.where(appmasters.c.service == service)
    return [
        AppMasterRecord(
            r.cluster, r.service, r.actor_name, int(r.epoch_seen), float(r.heartbeat_at)
        )
        for r in conn.execute(query).all()
    ]


def add_instruction(  # noqa: PLR0917 - one row's fields
    conn: Connection,
    now: Any,
    cluster: str,
    service: str,
    op_id: str,
    epoch: int,
    body: dict[str, Any],
) -> int:
    result = conn.execute(
        sa.insert(instructions).values(
            cluster=cluster, service=service, op_id=op_id, epoch=epoch, body=body, created_at=now
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def list_instructions(
    conn: Connection, cluster: str, service: str, *, after: int = 0, limit: int = 100
) -> list[Instruction]:
    rows = conn.execute(
        sa.select(instructions)
        .where(
            (instructions.c.cluster == cluster)
            & (instructions.c.service == service)
            & (instructions.c.id > after)
        )
        .order_by(instructions.c.id)
        .limit(limit)
    ).all()
    return [
        Instruction(int(r.id), r.cluster, r.service, r.op_id, int(r.epoch), dict(r.body))
        for r in rows
    ]


def last_instruction(conn: Connection, cluster: str, service: str) -> Instruction | None:
    row = conn.execute(
        sa.select(instructions)
        .where((instructions.c.cluster == cluster) & (instructions.c.service == service))
        .order_by(instructions.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return Instruction(
        int(row.id), row.cluster, row.service, row.op_id, int(row.epoch), dict(row.body)
    )

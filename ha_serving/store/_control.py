"""What the Keepers keep: the cluster registry, AppMaster registrations (heartbeats)
and the leader's instructions to AppMasters (an append-only, ordered log per target)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import mysql, sqlite
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
class AppMasterBeat:
    """One heartbeat of an AppMaster's link, as a Keeper writes it."""

    cluster: str
    service: str
    actor_name: str
    epoch_seen: int


UNCACHED = {"compiled_cache": None}
"""Execution options for a statement whose shape varies with its input (one bind
parameter per row or target): SQLAlchemy caches each compiled shape, and a Keeper's
batches of 1 to 1,000 targets or rows each made one more entry of the engine's
500-entry cache - 2.2 GB measured for 500 shapes of the batched instructions read. Such
a statement is compiled each time instead (its cost grows with the statement anyway)."""


@dataclass(frozen=True)
class Instruction:
    id: int
    cluster: str
    service: str
    op_id: str
    epoch: int
    body: dict[str, Any]


@dataclass(frozen=True)
class InstructionsRead:
    """One read of the instructions for a Keeper's links (``Store.read_instructions``)."""

    high: int
    """The highest instruction id this read knows of: every instruction with an id up
    to it is in ``new`` or was below the ``since`` asked for."""
    new: tuple[Instruction, ...]
    """The instructions above ``since``, of every target, oldest first."""
    behind: dict[tuple[str, str], list[Instruction]]
    """Per target asked for: what ``list_instructions_for`` gives."""


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


def heartbeat_appmasters(conn: Connection, now: Any, beats: Iterable[AppMasterBeat]) -> None:
    """Upsert many AppMasters' heartbeats in one statement (a Keeper's batch).

    Several beats of one (cluster, service) keep the last, as one write after another
    would. Rows go in key order, so two Keepers' batches lock the rows they share in the
    same order (InnoDB) and cannot deadlock on each other."""
    latest = {(b.cluster, b.service): b for b in beats}
    rows = [
        {
            "cluster": b.cluster,
            "service": b.service,
            "actor_name": b.actor_name,
            "address": None,
            "epoch_seen": b.epoch_seen,
            "heartbeat_at": now,
        }
        for _, b in sorted(latest.items())
    ]
    if not rows:
        return
    changed = ("actor_name", "address", "epoch_seen", "heartbeat_at")
    dialect = conn.dialect.name
    if dialect in {"mysql", "mariadb"}:
        upsert = mysql.insert(appmasters).values(rows)
        conn.execute(
            upsert.on_duplicate_key_update({c: upsert.inserted[c] for c in changed}),
            execution_options=UNCACHED,
        )
    elif dialect == "sqlite":
        insert = sqlite.insert(appmasters).values(rows)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[appmasters.c.cluster, appmasters.c.service],
                set_={c: insert.excluded[c] for c in changed},
            ),
            execution_options=UNCACHED,
        )
    else:  # no multi-row upsert known for it: one upsert each, still one transaction
        for row in rows:
            heartbeat_appmaster(
                conn, now, row["cluster"], row["service"], row["actor_name"], row["epoch_seen"]
            )


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


TARGETS_PER_STATEMENT = 1000
"""Targets one batched instructions read names: 3 bind parameters each, within
SQLite's 32,766 (3.32+) and far within MySQL's 65,535."""


def list_instructions_for(
    conn: Connection, after_by_target: Mapping[tuple[str, str], int], *, limit: int = 100
) -> dict[tuple[str, str], list[Instruction]]:
    """For each (cluster, service) given, its instructions with an id above its own
    ``after``, oldest first, at most ``limit`` of them: exactly what
    ``list_instructions(cluster, service, after=after, limit=limit)`` returns for each,
    in one statement per ``TARGETS_PER_STATEMENT`` targets (the caller's one transaction
    reads them all from one snapshot). Every target given is a key of the result."""
    found: dict[tuple[str, str], list[Instruction]] = {t: [] for t in after_by_target}
    targets = sorted(after_by_target)
    c = instructions.c
    for start in range(0, len(targets), TARGETS_PER_STATEMENT):
        chunk = targets[start : start + TARGETS_PER_STATEMENT]
        wanted = sa.or_(*(_past(key, after_by_target[key]) for key in chunk))
        rank = (
            sa.func.row_number()
            .over(partition_by=(c.cluster, c.service), order_by=c.id)
            .label("rank")
        )
        ranked = sa.select(instructions, rank).where(wanted).subquery()
        query = (
            sa.select(*(ranked.c[col.name] for col in instructions.c))
            .where(ranked.c.rank <= limit)
            .order_by(ranked.c.id)
        )
        for r in conn.execute(query, execution_options=UNCACHED).all():
            found[(r.cluster, r.service)].append(
                Instruction(int(r.id), r.cluster, r.service, r.op_id, int(r.epoch), dict(r.body))
            )
    return found


def read_instructions(
    conn: Connection,
    since: int | None,
    behind: Mapping[tuple[str, str], int],
    *,
    limit: int = 100,
    new_limit: int = 10_000,
) -> InstructionsRead:
    """The instructions above id ``since`` of every target (at most ``new_limit``, the
    lowest ids first), and ``list_instructions_for(behind)``, from one snapshot. With
    ``since`` None, no rows for the first part: only the highest id there is. A primary
    key range, so a read with nothing new costs an index probe whatever the number of
    targets and links."""
    c = instructions.c
    new: list[Instruction] = []
    if since is None:
        high = int(conn.execute(sa.select(sa.func.max(c.id))).scalar() or 0)
    else:
        rows = conn.execute(
            sa.select(instructions).where(c.id > since).order_by(c.id).limit(new_limit)
        ).all()
        new = [
            Instruction(int(r.id), r.cluster, r.service, r.op_id, int(r.epoch), dict(r.body))
            for r in rows
        ]
        high = new[-1].id if new else since
    found = list_instructions_for(conn, behind, limit=limit) if behind else {}
    return InstructionsRead(high, tuple(new), found)


def _past(target: tuple[str, str], after: int) -> sa.ColumnElement[bool]:
    """The instructions of ``target`` after the one with id ``after``."""
    cluster, service = target
    c = instructions.c
    return (c.cluster == cluster) & (c.service == service) & (c.id > after)


def last_instructions(
    conn: Connection, targets: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Instruction]:
    """Each target's last instruction (targets with none are left out), one statement
    per ``TARGETS_PER_STATEMENT`` targets: the highest id per target (an index range
    each, on ``ix_instructions_target``), joined back to its row."""
    c = instructions.c
    out: dict[tuple[str, str], Instruction] = {}
    for start in range(0, len(targets), TARGETS_PER_STATEMENT):
        chunk = targets[start : start + TARGETS_PER_STATEMENT]
        highest = (
            sa.select(sa.func.max(c.id).label("id"))
            .where(sa.tuple_(c.cluster, c.service).in_(chunk))
            .group_by(c.cluster, c.service)
            .subquery()
        )
        query = sa.select(instructions).join(highest, c.id == highest.c.id)
        for r in conn.execute(query).all():
            out[(r.cluster, r.service)] = Instruction(
                int(r.id), r.cluster, r.service, r.op_id, int(r.epoch), dict(r.body)
            )
    return out


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

"""Pruning old history: what the leader deletes, and what it must keep.

Each pruner deletes at most ``batch`` rows older than ``cutoff`` (the store's clock) in
the caller's transaction, and returns how many it deleted. Keys are selected first and
deleted by key (portable: SQLite has no ``DELETE ... LIMIT``, MySQL no subquery on the
table it deletes from), the age condition repeated in the DELETE, so a row refreshed
meanwhile (a package put again) stays.

Kept whatever their age: pending or running operations, and each service's latest
operation that was not superseded (the leader keeps AppMasters running for its
targets); per (cluster, service), the latest instruction (the leader decides what to
send next by it) and any its AppMaster has not consumed yet; packages that a service,
an operation, an AppMaster's state or an instruction still names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ha_serving._status import ACTIVE, OperationStatus
from ha_serving.store._rates import prune_rates
from ha_serving.store._schema import (
    appmaster_state,
    events,
    instructions,
    operations,
    packages,
    services,
)

_ACTIVE = sorted(str(s) for s in ACTIVE)
"""``ACTIVE`` as plain values, for SQL."""
_DIGEST = re.compile(r"[0-9a-f]{64}")

Cutoff = sa.ColumnElement[float]
Pruner = Callable[[Connection, Cutoff, int], int]


def prune_operations(conn: Connection, cutoff: Cutoff, batch: int) -> int:
    """Finished operations last updated before ``cutoff``, but each service's latest
    one that was not superseded."""
    c = operations.c
    keep = set()
    for service in conn.execute(sa.select(c.service).distinct()).scalars():
        latest = conn.execute(
            sa.select(c.op_id)
            .where(c.service == service, c.status != OperationStatus.SUPERSEDED.value)
            .order_by(c.created_at.desc(), c.op_id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if latest is not None:
            keep.add(latest)
    query = (
        sa.select(c.op_id)
        .where(c.status.not_in(_ACTIVE), c.updated_at < cutoff)
        .order_by(c.updated_at, c.op_id)
        .limit(batch)
    )
    if keep:
        query = query.where(c.op_id.not_in(sorted(keep)))
    doomed = list(conn.execute(query).scalars())
    if not doomed:
        return 0
    deleted = conn.execute(
        sa.delete(operations).where(
            c.op_id.in_(doomed), c.status.not_in(_ACTIVE), c.updated_at < cutoff
        )
    )
    return int(deleted.rowcount)


def prune_instructions(conn: Connection, cutoff: Cutoff, batch: int) -> int:
    """Instructions written before ``cutoff`` that their AppMaster has consumed, but the
    latest one per (cluster, service)."""
    c = instructions.c
    consumed = {
        (row.cluster, row.service): _last_instruction(row.state)
        for row in conn.execute(
            sa.select(appmaster_state.c.cluster, appmaster_state.c.service, appmaster_state.c.state)
        )
    }
    targets = conn.execute(
        sa.select(c.cluster, c.service, sa.func.max(c.id)).group_by(c.cluster, c.service)
    ).all()
    total = 0
    for cluster, service, newest in targets:
        below = min(int(newest), consumed.get((cluster, service), 0) + 1)
        if total >= batch or below <= 0:
            continue
        target = (c.cluster == cluster) & (c.service == service) & (c.id < below)
        doomed = list(
            conn.execute(
                sa.select(c.id)
                .where(target, c.created_at < cutoff)
                .order_by(c.id)
                .limit(batch - total)
            ).scalars()
        )
        if doomed:
            deleted = conn.execute(sa.delete(instructions).where(c.id.in_(doomed)))
            total += int(deleted.rowcount)
    return total


def prune_events(conn: Connection, cutoff: Cutoff, batch: int) -> int:
    """Audit-log events recorded before ``cutoff``."""
    c = events.c
    doomed = list(
        conn.execute(sa.select(c.id).where(c.at < cutoff).order_by(c.id).limit(batch)).scalars()
    )
    if not doomed:
        return 0
    return int(conn.execute(sa.delete(events).where(c.id.in_(doomed))).rowcount)


def prune_packages(conn: Connection, cutoff: Cutoff, batch: int) -> int:
    """Packages last put before ``cutoff`` that nothing names any more."""
    named = _named_digests(
        [
            conn.execute(sa.select(services.c.spec)).scalars(),
            conn.execute(sa.select(operations.c.plan)).scalars(),
            conn.execute(sa.select(appmaster_state.c.state)).scalars(),
            conn.execute(sa.select(instructions.c.body)).scalars(),
        ]
    )
    c = packages.c
    query = sa.select(c.digest).where(c.created_at < cutoff).order_by(c.created_at).limit(batch)
    if named:
        query = query.where(c.digest.not_in(sorted(named)))
    doomed = list(conn.execute(query).scalars())
    if not doomed:
        return 0
    deleted = conn.execute(sa.delete(packages).where(c.digest.in_(doomed), c.created_at < cutoff))
    return int(deleted.rowcount)


PRUNERS: tuple[tuple[str, Pruner], ...] = (
    ("operations", prune_operations),
    ("instructions", prune_instructions),
    ("events", prune_events),
    ("rate_samples", prune_rates),
    ("packages", prune_packages),  # last: what the others dropped names nothing now
)


def _last_instruction(state: Any) -> int:
    found = state.get("last_instruction", 0) if isinstance(state, dict) else 0
    return found if isinstance(found, int) else 0


def _named_digests(documents: Iterable[Iterable[Any]]) -> set[str]:
    """Every package digest (64 hex digits) named anywhere in JSON documents."""
    named: set[str] = set()
    for rows in documents:
        for doc in rows:
            _collect(doc, named)
    return named


def _collect(value: Any, into: set[str]) -> None:
    if isinstance(value, str):
        if len(value) >= 64:
            into.update(_DIGEST.findall(value))
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, into)
    elif isinstance(value, list):
        for item in value:
            _collect(item, into)

"""Leases with a fencing epoch: Keeper leadership and any other "one owner at a time".

Theory of operation
-------------------
A lease is one row ``(name, holder, epoch, expires_at)``. "now" is the DB's clock (or an
injected fake clock, bound as a literal), never the caller's, so holders on machines with
skewed clocks still agree on who holds what. Each transition is one compare-and-set
statement; which caller wins a race is decided by the DB's row lock (UPDATE) or primary
key (INSERT), never by a read followed by a write.

States (``h`` a holder, ``e`` the epoch):

==============  ============================================
absent          no row yet
free(e)         holder IS NULL (released)
held(e, h)      holder = h and now <  expires_at
expired(e, h)   holder = h and now >= expires_at
==============  ============================================

Transitions:

=================  =========================  =================  ======================
from               call                       to                 returns
=================  =========================  =================  ======================
absent             acquire(h)                 held(1, h)         the new Lease
free(e)            acquire(h)                 held(e+1, h)       the new Lease
expired(e, any)    acquire(h)                 held(e+1, h)       the new Lease
held(e, h)         acquire(h)                 held(e, h)         the same Lease, as is
held(e, h)         acquire(h2), h2 != h       held(e, h)         None
held(e, h)         renew(h, e)                held(e, h), later  the renewed Lease
held/exp.(e, h)    take(h2, from h)           held(e+1, h2)      the new Lease
anything else      renew(h, e)                unchanged          raises LeaseLost
anything else      take(h2, from h)           unchanged          None
held/expired(e,h)  release(h, e)              free(e)            True
anything else      release(h, e)              unchanged          False
held(e, h)         time reaches expires_at    expired(e, h)      -
=================  =========================  =================  ======================

So the epoch grows by exactly one whenever the lease changes hands, including back to the
same holder after expiry or release; a holder stamps its epoch on every action, and
whoever checks it (an AppMaster) rejects epochs below the highest it has seen. An expired
lease cannot be renewed even if nobody took it: the holder may already have been fenced
off by its peers' view of time, so it must acquire again (and get a new epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection

from ha_serving._errors import LeaseLost
from ha_serving.store._schema import leases

Now = sa.ColumnElement[float]
"""The SQL expression for "now": ``db_now()`` or a bound fake-clock literal."""

KEEPER_LEADER = "keeper-leader"
"""The Keepers' leadership lease. Its epoch is the fencing token on every instruction:
AppMasters check an epoch they have not seen yet against it (no Keeper was granted an
epoch above the lease's)."""


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str | None
    """None once released."""
    epoch: int
    """Fencing token: grows by one on every change of holder."""
    expires_at: float
    """Epoch seconds on the store's clock (``Store.now()``), not the caller's."""

    def held_at(self, now: float) -> bool:
        """Whether someone holds it at store time ``now``."""
        return self.holder is not None and now < self.expires_at

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "holder": self.holder,
            "epoch": self.epoch,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_record(cls, row: Mapping[Any, Any]) -> Lease:
        return cls(
            name=row["name"],
            holder=row["holder"],
            epoch=int(row["epoch"]),
            expires_at=float(row["expires_at"]),
        )


_COLUMNS = (leases.c.name, leases.c.holder, leases.c.epoch, leases.c.expires_at)


def get(conn: Connection, name: str) -> Lease | None:
    row = conn.execute(sa.select(*_COLUMNS).where(leases.c.name == name)).one_or_none()
    return None if row is None else Lease.from_record(row._mapping)


def acquire(conn: Connection, now: Now, name: str, holder: str, ttl_s: float) -> Lease | None:
    """Take ``name`` for ``holder`` for ``ttl_s`` seconds, or return None if someone else
    holds it. Already holding it unexpired returns the current lease unchanged."""
    _check_ttl(ttl_s)
    row = conn.execute(
        sa.select(*_COLUMNS, now.label("now")).where(leases.c.name == name)
    ).one_or_none()
    if row is None:
        return _create(conn, now, name, holder, ttl_s)
    current = Lease.from_record(row._mapping)
    if current.held_at(float(row.now)):
        return current if current.holder == holder else None
    # Free or expired: compare-and-set on the epoch we saw, so of several racing
    # acquirers exactly one matches; the others find the epoch already moved.
    taken = conn.execute(
        sa.update(leases)
        .where(
            leases.c.name == name,
            leases.c.epoch == current.epoch,
            sa.or_(leases.c.holder.is_(None), leases.c.expires_at <= now),
        )
        .values(holder=holder, epoch=leases.c.epoch + 1, expires_at=now + ttl_s)
    )
    if taken.rowcount != 1:
        return None
    return _get_existing(conn, name)


def take(  # noqa: PLR0917 - acquire's arguments and the holder it is taken from
    conn: Connection, now: Now, name: str, holder: str, from_holder: str, ttl_s: float
) -> Lease | None:
    """Take ``name`` from ``from_holder``, whom the caller knows to be dead, expired or
    not: held(e, from_holder) -> held(e+1, holder). None if it is no longer
    ``from_holder``'s (another taker won, or it moved on). For a holder whose death is
    learnt from elsewhere (Ray's actor table, for an AppMaster's warm standby) rather
    than from the lease running out."""
    _check_ttl(ttl_s)
    taken = conn.execute(
        sa.update(leases)
        .where(leases.c.name == name, leases.c.holder == from_holder)
        .values(holder=holder, epoch=leases.c.epoch + 1, expires_at=now + ttl_s)
    )
    if taken.rowcount != 1:
        return None
    return _get_existing(conn, name)


def renew(conn: Connection, now: Now, lease: Lease, ttl_s: float) -> Lease:
    """Extend a lease still held at its epoch; raise ``LeaseLost`` otherwise."""
    _check_ttl(ttl_s)
    holder = lease.holder or ""
    renewed = conn.execute(
        sa.update(leases)
        .where(
            leases.c.name == lease.name,
            leases.c.holder == holder,
            leases.c.epoch == lease.epoch,
            leases.c.expires_at > now,
        )
        .values(expires_at=now + ttl_s)
    )
    if renewed.rowcount != 1:
        raise LeaseLost(lease.name, holder, lease.epoch)
    return _get_existing(conn, lease.name)


def release(conn: Connection, now: Now, lease: Lease) -> bool:
    """Free a lease still held (or expired, untaken) at its epoch; False if it was not."""
    if lease.holder is None:
        return False
    released = conn.execute(
        sa.update(leases)
        .where(
            leases.c.name == lease.name,
            leases.c.holder == lease.holder,
            leases.c.epoch == lease.epoch,
        )
        .values(holder=None, expires_at=now)
    )
    return released.rowcount == 1


def _create(conn: Connection, now: Now, name: str, holder: str, ttl_s: float) -> Lease | None:
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(leases).values(name=name, holder=holder, epoch=1, expires_at=now + ttl_s)
            )
    except exc.IntegrityError:
        return None  # a concurrent acquirer created it first, so it holds it now
    return _get_existing(conn, name)


def _get_existing(conn: Connection, name: str) -> Lease:
    found = get(conn, name)
    if found is None:  # we just wrote it in this transaction
        raise RuntimeError(f"lease {name!r} vanished inside its own transaction")
    return found


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"lease ttl must be positive seconds, got {ttl_s!r}")

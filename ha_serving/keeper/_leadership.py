"""Keeper leadership: one acting leader at a time, fenced by a growing epoch.

Theory of operation
-------------------
Every Keeper replica runs ``Leadership.tick()`` every ``ttl/3``. Leadership is the
store's lease row ``keeper-leader`` (expiry judged by the DB's clock); its epoch is the
fencing token stamped on every instruction the leader sends. A leader also keeps a
*local* deadline: the local monotonic time at which it sent its last successful renew,
plus the TTL minus a safety margin. It acts only before that deadline, so even when it
cannot reach the DB (or was paused by SIGSTOP) it stops acting before any other replica
can have taken the lease. Whatever a stale leader still sends carries an old epoch, and
AppMasters refuse epochs below the highest they have seen.

The lease's holder is ``<keeper id>#<instance>``, the instance a random token of this
process: two processes started with the same ``--id`` are two holders, so at most one of
them leads at any epoch (``keeper_of`` gives the id back for display).

==========  ===========================================  ==========
from        event                                        to
==========  ===========================================  ==========
follower    acquire succeeded (epoch e)                  leader(e)
follower    acquire refused or DB down                   follower
leader(e)   renew succeeded                              leader(e)
leader(e)   renew refused (LeaseLost)                    follower
leader(e)   DB down and local deadline passed            follower
leader(e)   DB down, deadline not passed                 leader(e)
leader(e)   resign (shutdown): lease released            follower
==========  ===========================================  ==========
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ha_serving._errors import HAServingError, LeaseLost, StoreUnavailable
from ha_serving.store import KEEPER_LEADER, Lease, Store
from ha_serving.util.clock import Clock
from ha_serving.util.logs import bound

LEASE_NAME = KEEPER_LEADER
INSTANCE_SEP = "#"


def keeper_of(holder: str | None) -> str:
    """The Keeper id in a lease holder ``<id>#<instance>`` ("" for none)."""
    if not holder:
        return ""
    head, sep, _ = holder.rpartition(INSTANCE_SEP)
    return head if sep else holder


class Role(str, enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


class NotLeader(HAServingError):
    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"{holder} is not the acting leader")


@dataclass(frozen=True)
class Term:
    """What a leader acts under: its epoch and the local time it must stop acting by."""

    epoch: int
    deadline: float


class Leadership:
    def __init__(
        self,
        store: Store,
        holder: str,
        *,
        ttl_s: float,
        clock: Clock,
        margin_s: float | None = None,
        on_change: Callable[[Role, int], None] | None = None,
    ) -> None:
        self.store = store
        self.holder = holder
        self.instance = f"{holder}{INSTANCE_SEP}{uuid.uuid4().hex[:12]}"
        """This process's name on the lease: unique even if another runs the same id."""
        self.ttl_s = ttl_s
        self.margin_s = ttl_s / 4 if margin_s is None else margin_s
        self.clock = clock
        self._lease: Lease | None = None
        self._term: Term | None = None
        self._on_change = on_change
        self.store_failed_at: float | None = None
        """When (monotonic) a tick last found the store unavailable; None if never.
        The leader reads it: heartbeats could not be written while the store was down
        (``Reconciler``)."""
        self.log = bound("ha_serving.keeper", keeper=holder)

    @property
    def role(self) -> Role:
        return Role.LEADER if self.term() is not None else Role.FOLLOWER

    def term(self) -> Term | None:
        """The current term if this replica may act as leader right now, else None."""
        term = self._term
        if term is not None and self.clock.monotonic() >= term.deadline:
            self._demote("local deadline passed without a renew")
            return None
        return term

    def require(self) -> Term:
        """The term to stamp on an instruction; NotLeader if this replica may not act."""
        term = self.term()
        if term is None:
            raise NotLeader(self.holder)
        return term

    def tick(self) -> Role:
        """One step of the table above (blocking: run it in a thread from async code)."""
        started = self.clock.monotonic()
        deadline = started + self.ttl_s - self.margin_s
        try:
            if self._lease is None:
                lease = self.store.acquire_lease(LEASE_NAME, self.instance, self.ttl_s)
                if lease is not None:
                    # Re-acquiring a lease we still hold returns it unchanged, expiry
                    # included; renew so it really runs a full TTL from ``started``.
                    lease = self.store.renew_lease(lease, self.ttl_s)
                    self._lease = lease
                    self._term = Term(lease.epoch, deadline)
                    self.log.info("elected leader at epoch %d", lease.epoch)
                    self._notify(Role.LEADER, lease.epoch)
            else:
                self._lease = self.store.renew_lease(self._lease, self.ttl_s)
                self._term = Term(self._lease.epoch, deadline)
        except LeaseLost:
            self._demote("lease lost to another replica")
        except StoreUnavailable as exc:
            self.store_failed_at = self.clock.monotonic()
            self.log.warning("store unavailable during %s: %s", self.role.value, exc)
            self.term()  # demotes once the local deadline has passed
        return self.role

    def resign(self) -> None:
        """Give up leadership now (clean shutdown), so a successor need not wait the TTL."""
        lease = self._lease
        self._demote("resigned")
        if lease is not None:
            with contextlib.suppress(StoreUnavailable):  # else it expires on its own
                self.store.release_lease(lease)

    def _demote(self, why: str) -> None:
        if self._lease is None and self._term is None:
            return
        epoch = self._lease.epoch if self._lease else 0
        self._lease = None
        self._term = None
        self.log.warning("stepped down from epoch %d: %s", epoch, why)
        self._notify(Role.FOLLOWER, epoch)

    def _notify(self, role: Role, epoch: int) -> None:
        if self._on_change is not None:
            self._on_change(role, epoch)

    async def run(self) -> None:
        """Tick forever, every ttl/3 of the injected clock."""
        while True:
            await asyncio.to_thread(self.tick)
            await self.clock.sleep(self.ttl_s / 3)

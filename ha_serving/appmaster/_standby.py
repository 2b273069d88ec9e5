"""Which of a service's two AppMasters on a cluster is the active one: a warm standby.

A Keeper-managed service runs two AppMaster actors per cluster (``<service>-appmaster``
and ``<service>-appmaster-2``), both started, both with their modules imported. One
holds the lease ``appmaster/<cluster>/<service>`` in the store and runs the control loop
and the Keeper link; the other waits. Ray restarts a crashed actor, but on this 2-core
machine that took 2.1-2.5 s from the kill to the new process's ``__init__`` (a new
worker process, Ray imported, the class unpickled); the standby is already running, so
it only has to learn of the death and take over.

How the lease moves (``Standby.claim``):

- Nobody holds it (a new service): ``acquire``; of the two, the first wins.
- Its holder is an *incarnation*, ``<actor>@<node ip>:<pid>``. A holder that is this
  actor's own name with another pid is this actor's previous process, which is dead
  (Ray restarted it). A holder that is the peer is asked about in Ray's actor table
  (``Peers.alive``): alive only while the peer actor is ALIVE with that very node and
  pid. A dead holder's lease is *taken* (``Store.take_lease``: compare-and-set on the
  holder, the epoch grows by one); of several takers exactly one wins.
- A live holder is watched (``Peers.watch``): a call to its ``hold`` that returns only
  when that incarnation is gone (the call fails: Ray tells its caller at once, within
  ``death_info_wait_ms``), or when the callee is not that incarnation, or after a while
  (so a missed change is seen again); then the lease is looked at again.

Fencing: every state write of the active AppMaster carries the lease's epoch
(``AppMasterCore.fence``); once the standby took the lease, a write of the old holder,
if it still ran, fails with ``LeaseLost``, its loop stops and its process exits, and Ray
restarts it, as the standby. The lease is never renewed (its TTL is a year): it moves
only when its holder is known dead, so a slow holder is never deposed by a timer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from ha_serving._errors import TransientError
from ha_serving.store import Store
from ha_serving.store._lease import Lease

LEASE_TTL_S = 365 * 24 * 3600.0
"""The lease never expires in practice: it moves only when its holder is known dead."""

log = logging.getLogger(__name__)


def lease_name(cluster: str, service: str) -> str:
    return f"appmaster/{cluster}/{service}"


def standby_name(service: str) -> str:
    """The second AppMaster actor of a Keeper-managed service (the first is
    ``appmaster_name``)."""
    return f"{service}-appmaster-2"


@dataclass(frozen=True)
class Holder:
    """One incarnation of an AppMaster actor: its name, its node's address, its pid."""

    actor: str
    address: str
    pid: int

    def __str__(self) -> str:
        return f"{self.actor}@{self.address}:{self.pid}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        actor, sep, where = text.rpartition("@")
        address, sep2, pid = where.rpartition(":")
        if not (sep and sep2 and actor and address and pid.isdigit()):
            return None
        return cls(actor, address, int(pid))


class Peers(Protocol):
    """What the standby asks Ray (``appmaster._actor.RayPeers``; a fake in unit tests)."""

    async def alive(self, holder: Holder) -> bool:
        """Whether that very incarnation runs (the actor ALIVE at that node and pid)."""
        ...

    async def watch(self, holder: Holder) -> None:
        """Return once that incarnation is gone, or after a while (bounded)."""
        ...


class Standby:
    def __init__(
        self,
        store: Store,
        cluster: str,
        service: str,
        me: Holder,
        peers: Peers,
        *,
        retry_s: float = 0.2,
    ) -> None:
        self.store = store
        self.name = lease_name(cluster, service)
        self.me = me
        self.peers = peers
        self.retry_s = retry_s

    async def claim(self) -> Lease:
        """Wait until this incarnation holds the lease; return it."""
        while True:
            try:
                lease = await self._try()
            except TransientError as exc:  # the store is down: wait for it, as the loop does
                log.warning("AppMaster lease %s: %s", self.name, exc)
                await asyncio.sleep(self.retry_s * 5)
                continue
            if lease is not None:
                return lease

    async def _try(self) -> Lease | None:
        mine = str(self.me)
        lease = await asyncio.to_thread(self.store.get_lease, self.name)
        if lease is None or lease.holder is None:
            got = await asyncio.to_thread(self.store.acquire_lease, self.name, mine, LEASE_TTL_S)
            return got if got is not None and got.holder == mine else None
        if lease.holder == mine:
            return lease
        holder = Holder.parse(lease.holder)
        if holder is None or not await self._alive(holder):
            got = await asyncio.to_thread(
                self.store.take_lease, self.name, mine, lease.holder, LEASE_TTL_S
            )
            if got is not None:
                log.warning("AppMaster lease %s taken over from %s", self.name, lease.holder)
            return got
        began = asyncio.get_running_loop().time()
        await self.peers.watch(holder)
        # bounds the rate should a watch return at once (a death goes straight on)
        spent = asyncio.get_running_loop().time() - began
        await asyncio.sleep(max(0.0, self.retry_s - spent))
        return None

    async def _alive(self, holder: Holder) -> bool:
        if holder.actor == self.me.actor:
            # this actor's own name, not this process: its previous incarnation, gone
            return holder == self.me
        return await self.peers.alive(holder)

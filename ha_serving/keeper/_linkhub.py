"""A Keeper's AppMaster links, served together: one instructions read per period for
every link it holds open, and the links' heartbeats written in batches.

Before this, each open ``Instructions`` stream read its own target's instructions every
``link_period_s`` and each ``Heartbeat`` call wrote its own row: about six DB statements
a second per AppMaster, each through the thread pool. Now:

- **Instructions.** Each link keeps its own cursor (``Link.after``: the id of the last
  instruction its stream sent) and, once it has sent what it had, waits
  (``Link.next``). Every ``link_period_s`` the hub reads, in one transaction
  (``Store.read_instructions``), the instructions of *every* target above its own
  global cursor (``LinkHub.high``, the highest id it has read), and, for the waiting
  links that are *behind* (new, or absent from the last read because their stream was
  sending, or handed only ``limit`` rows), their targets after their own cursors (the
  lowest, if several links wait on one target). A link caught up at the last read
  (``Link.synced`` is the hub's cursor) is handed the new rows of its target; a link
  behind, its own rows. Either way only rows past its own cursor, or ``[]`` (a beat)
  when there are none or the store is down. A link's cursor is read only while it
  waits and moved only by its stream after the stream sent the instruction, so nothing
  is sent twice.

  In steady state (nothing new, every link caught up) a period's read is one primary-key
  range probe, whatever the number of links: the per-target read it replaced named
  every waiting target (3,000 at 1,000 services x 3 clusters), and building and
  running that statement was the largest part of a Keeper's CPU in the scale
  simulation (``docs/scale.md``).

  Nothing is skipped, although ``id > cursor`` passes over an id that commits after a
  higher one: instruction ids are committed in id order. Only the leader writes them
  (``Reconciler``), one at a time (a round is sequential, every ``add_instruction``
  its own transaction, awaited before the next), and fenced: the write locks the lease
  row (``FOR UPDATE``) and checks the epoch in its transaction, so a new leader's
  lease takeover waits for an old leader's pending write to commit (or be refused)
  before any instruction of the new epoch gets an id. When the hub's cursor is behind
  the highest id a link has already sent (ids are not reused), the link's own cursor
  still filters what it is handed.

- **Heartbeats.** ``beat`` queues one heartbeat and waits for it to be committed: the
  first beat of a batch opens it, those arriving within ``link_heartbeat_window_s``
  join it, and the batch is one multi-row upsert in one transaction
  (``Store.heartbeat_appmasters``); one batch is written at a time. The Keeper's beats
  reach all its links at once each period and their answers arrive together, so the
  links' heartbeats cost about one write per period. A call is answered only once its
  row is committed (an acknowledged heartbeat is a persisted one); a failed write fails
  every call of its batch with the store's error (the API answers UNAVAILABLE, as for
  a single write).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ha_serving._errors import StoreUnavailable
from ha_serving._settings import KeeperSettings
from ha_serving.store import AppMasterBeat, Instruction, InstructionsRead, Store
from ha_serving.util.aiotasks import guard
from ha_serving.util.clock import Clock, SystemClock

Target = tuple[str, str]
"""(cluster, service): whose instructions a link carries."""


@dataclass(eq=False)
class Link:
    """One open ``Instructions`` stream, as its hub sees it."""

    hub: LinkHub
    target: Target
    after: int
    """Id of the last instruction this stream sent (its request's ``after`` at first);
    moved by the stream only, after sending, and never while it waits."""
    waiter: asyncio.Future[list[Instruction]] | None = field(default=None, repr=False)
    """Set while the stream waits for the hub's next read (``next``)."""
    synced: int | None = None
    """The hub's cursor after the last read that handed this link every instruction of
    its target up to it; None: never. Equal to the hub's cursor: the next read hands it
    the new rows of its target only."""

    async def next(self) -> list[Instruction]:
        """Wait for the hub's next read: this target's instructions after ``after``,
        oldest first, or ``[]`` when there are none or the store did not answer. A bug
        in the read is raised here."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.hub.wake()
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self.hub.close(self)


class LinkHub:
    """Every AppMaster link one Keeper holds: one instructions read per period, and the
    links' heartbeats in batches (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        settings: KeeperSettings,
        *,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        clock: Clock | None = None,
        limit: int = 100,
        new_limit: int = 10_000,
    ) -> None:
        self.store = store
        self.settings = settings
        self.log = log
        self.clock = clock or SystemClock()
        self.limit = limit
        """Most instructions one link is handed per period (as the per-link read's)."""
        self.new_limit = new_limit
        """Most new instructions (of all targets) one period reads past the cursor."""
        self._links: set[Link] = set()
        self._reader: asyncio.Task[None] | None = None
        self._beats: list[tuple[AppMasterBeat, asyncio.Future[None]]] = []
        self._first_beat_at = 0.0
        self._writer: asyncio.Task[None] | None = None
        self.reads = 0
        """Batched instruction reads done (one per period with links waiting)."""
        self.high: int | None = None
        """The highest instruction id read (None before the first read): the global
        cursor every period's read starts after."""

    # --- instructions -----------------------------------------------------------------

    def open(self, cluster: str, service: str, after: int) -> Link:
        """A link for (cluster, service) that has sent everything up to id ``after``;
        ``close`` it when its stream ends."""
        link = Link(self, (cluster, service), after)
        self._links.add(link)
        return link

    def close(self, link: Link) -> None:
        self._links.discard(link)

    def wake(self) -> None:
        """Make sure the reading loop runs (it starts with the first waiting link)."""
        if self._reader is None or self._reader.done():
            self._reader = guard(self._read_loop(), name="link-hub-reads", logger=self.log)

    async def _read_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.link_period_s)
            await self.read_once()

    async def read_once(self) -> None:
        """One period's read for every waiting link, handed to each."""
        waiting = [
            (link, link.waiter)
            for link in self._links
            if link.waiter is not None and not link.waiter.done()
        ]
        if not waiting:
            return
        since = self.high
        late = {link for link, _ in waiting if since is None or link.synced != since}
        behind: dict[Target, int] = {}
        for link in late:
            behind[link.target] = min(behind.get(link.target, link.after), link.after)
        self.reads += 1
        try:
            read = await asyncio.to_thread(
                self.store.read_instructions,
                since,
                behind,
                limit=self.limit,
                new_limit=self.new_limit,
            )
        except StoreUnavailable:  # a beat for each: silence would drop a live Keeper
            read = None
        except Exception as exc:  # a bug: each stream ends with it, as its own read would
            for _, waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        if read is None:
            for _, waiter in waiting:
                if not waiter.done():
                    waiter.set_result([])
            return
        self.high = read.high
        new: dict[Target, list[Instruction]] = {}
        for i in read.new:
            new.setdefault((i.cluster, i.service), []).append(i)
        for link, waiter in waiting:
            if not waiter.done():  # else its stream ended meanwhile
                waiter.set_result(self._hand(link, read, new, behind=link in late))

    def _hand(
        self,
        link: Link,
        read: InstructionsRead,
        new: dict[Target, list[Instruction]],
        *,
        behind: bool,
    ) -> list[Instruction]:
        """What ``link`` gets from ``read`` (``new``: its new rows by target): its
        target's rows past its own cursor, at most ``limit``; it is caught up to the
        read's cursor unless some were left over."""
        if behind:
            rows = read.behind.get(link.target, [])
            whole = len(rows) < self.limit  # else the read stopped at the limit
        else:
            rows = new.get(link.target, [])
            whole = True
        mine = [i for i in rows if i.id > link.after]
        handed = mine[: self.limit]
        link.synced = read.high if whole and len(handed) == len(mine) else None
        return handed

    # --- heartbeats -------------------------------------------------------------------

    async def beat(self, beat: AppMasterBeat) -> None:
        """Record ``beat``; returns once it is committed, raises what the write raised."""
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._beats:
            self._first_beat_at = self.clock.monotonic()
        self._beats.append((beat, committed))
        if self._writer is None or self._writer.done():
            self._writer = guard(
                self._write_loop(), name="link-hub-heartbeats", logger=self.log, finite=True
            )
        await committed

    async def _write_loop(self) -> None:
        """Write batches, one at a time, while beats are waiting."""
        while self._beats:
            waited = self.clock.monotonic() - self._first_beat_at
            await self.clock.sleep(self.settings.link_heartbeat_window_s - waited)
            batch, self._beats = self._beats, []
            await self._write(batch)

    async def _write(self, batch: Sequence[tuple[AppMasterBeat, asyncio.Future[None]]]) -> None:
        try:
            await asyncio.to_thread(self.store.heartbeat_appmasters, [b for b, _ in batch])
        except asyncio.CancelledError:  # the Keeper stops: nobody waits forever
            for _, committed in batch:
                committed.cancel()
            raise
        except Exception as exc:  # handed to every caller, who answers for it
            for _, committed in batch:
                if not committed.done():
                    committed.set_exception(exc)
        else:
            for _, committed in batch:
                if not committed.done():  # else its caller went away meanwhile
                    committed.set_result(None)

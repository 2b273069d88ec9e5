"""A Keeper's discovery ``Watch`` streams, served together: one endpoints read per
period for every service a stream waits on.

Before this, each open ``Watch`` stream read its own service's endpoints
(``Store.list_endpoints``) through the thread pool every ``watch_period_s``: with
thousands of discovery clients, thousands of reads a second per Keeper, most of them of
the same few services. Now each stream registers the service it watches
(``WatchHub.open``) and, once it has sent what it had to, waits for the hub's next read
(``Watcher.next``). Every ``watch_period_s`` the hub reads, in one transaction
(``Store.list_endpoints_for``), the endpoints of every service with a waiting stream, and
hands each stream its own service's list (``[]`` when it has none), or ``None`` when the
store did not answer (``StoreUnavailable``): the stream then sends nothing, as before, so
an empty list never stands for "unknown". A bug in the read (any other exception) ends
every waiting stream with it, as its own read did. Whether a list is sent (it changed,
or the keepalive is due) is still each stream's decision (``KeeperServer.Watch``). A
stream that ends (client gone, cancelled) closes its watcher (``Watcher.close``), and a
watcher that is not waiting is never read for.

**A new stream's first list.** A client should not wait up to a period for its first
answer, nor should each new stream cost a read of its own: a client storm (the clients
of a Keeper that died arrive on this one together) would then be as many reads as
clients. So a stream's first wait brings the hub's next read forward, to
``FIRST_READ_GAP`` of a period after the hub's previous turn, or at once if that has
passed. The new streams of that gap share the read (with every other stream then
waiting), and the period starts again from it. A first answer thus comes within 50 ms
(plus the read) by default, and a Keeper reads at most ``1 / FIRST_READ_GAP`` times a
period, however fast streams open.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field

from ha_serving._errors import StoreUnavailable
from ha_serving._settings import KeeperSettings
from ha_serving.store import Endpoint, Store
from ha_serving.util.aiotasks import guard
from ha_serving.util.clock import Clock, SystemClock

FIRST_READ_GAP = 0.1
"""The least time, as a fraction of ``watch_period_s``, between the hub's previous turn
and a read brought forward for a new stream: bounds the reads a storm of new streams
costs (see the module's docstring)."""


@dataclass(eq=False)
class Watcher:
    """One open ``Watch`` stream, as its hub sees it."""

    hub: WatchHub
    service: str
    answered: bool = False
    """Whether the hub has answered this stream once (its first wait is hurried)."""
    waiter: asyncio.Future[list[Endpoint] | None] | None = field(default=None, repr=False)
    """Set while the stream waits for the hub's next read (``next``)."""

    async def next(self) -> list[Endpoint] | None:
        """Wait for the hub's next read: this service's unexpired endpoints (``[]`` with
        none), or None when the store did not answer. A bug in the read is raised here."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.hub.wake(first=not self.answered)
        try:
            found = await self.waiter
        finally:
            self.waiter = None
        self.answered = True
        return found

    def close(self) -> None:
        self.hub.close(self)


class WatchHub:
    """Every ``Watch`` stream one Keeper serves: one endpoints read per period for all
    (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        settings: KeeperSettings,
        *,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.log = log
        self.clock = clock or SystemClock()
        self._watchers: set[Watcher] = set()
        self._reader: asyncio.Task[None] | None = None
        self._turn_at = -math.inf
        """When the reading loop last took its turn (read, or found nobody waiting)."""
        self._hurry = False
        """A new stream waits: the next read is brought forward."""
        self._nudge: asyncio.Future[None] | None = None
        """Set while the loop sleeps a whole period: a new stream wakes it early."""
        self.reads = 0
        """Batched endpoint reads done (one per period with streams waiting, and those
        brought forward for new streams)."""

    def open(self, service: str) -> Watcher:
        """A watcher of ``service``; ``close`` it when its stream ends."""
        watcher = Watcher(self, service)
        self._watchers.add(watcher)
        return watcher

    def close(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    @property
    def watching(self) -> int:
        """Open watchers (streams that have not ended)."""
        return len(self._watchers)

    def wake(self, *, first: bool = False) -> None:
        """Make sure the reading loop runs (it starts with the first waiting stream);
        ``first``: a new stream waits, so bring the next read forward."""
        if first:
            self._hurry = True
            if self._nudge is not None and not self._nudge.done():
                self._nudge.set_result(None)
        if self._reader is None or self._reader.done():
            self._reader = guard(self._read_loop(), name="watch-hub-reads", logger=self.log)

    async def _read_loop(self) -> None:
        while True:
            await self._next_turn()
            await self.read_once()

    async def _next_turn(self) -> None:
        """Wait until the next read is due: a period after the last turn, or
        ``FIRST_READ_GAP`` of one after it once a new stream waits."""
        period = self.settings.watch_period_s
        while True:
            after = period * (FIRST_READ_GAP if self._hurry else 1.0)
            left = self._turn_at + after - self.clock.monotonic()
            if left <= 0:
                break
            if self._hurry:  # nothing brings it any sooner
                await self.clock.sleep(left)
            else:
                await self._sleep_unless_nudged(left)
        self._hurry = False
        self._turn_at = self.clock.monotonic()

    async def _sleep_unless_nudged(self, seconds: float) -> None:
        """Sleep ``seconds`` on the hub's clock, or until a new stream waits (``wake``)."""
        nudge = self._nudge = asyncio.get_running_loop().create_future()
        sleeping = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((sleeping, nudge), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            self._nudge = None

    async def read_once(self) -> None:
        """One read for every waiting stream, handed to each."""
        waiting = [
            (watcher, watcher.waiter)
            for watcher in self._watchers
            if watcher.waiter is not None and not watcher.waiter.done()
        ]
        if not waiting:
            return
        self.reads += 1
        found: dict[str, list[Endpoint]] | None
        try:
            found = await asyncio.to_thread(
                self.store.list_endpoints_for, {watcher.service for watcher, _ in waiting}
            )
        except StoreUnavailable:  # unknown: each stream sends nothing this period
            found = None
        except asyncio.CancelledError:  # the Keeper stops: nobody waits forever
            for _, waiter in waiting:
                waiter.cancel()
            raise
        except Exception as exc:  # a bug: each stream ends with it, as its own read would
            for _, waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for watcher, waiter in waiting:
            if not waiter.done():  # else its stream ended meanwhile
                waiter.set_result(None if found is None else found.get(watcher.service, []))

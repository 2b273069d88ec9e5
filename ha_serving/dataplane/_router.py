"""Router: picks a backend instance for each call, pure and synchronous.

Its caller is a proxy (``ProxyServer``) or a client in direct mode (``ha_serving.client``),
which holds one per service: the same choice, caps and ejection either way.

It holds the latest ``RoutingTable`` (a table older than the one held is ignored, so a
late, reordered update cannot resurrect a drained instance) and its caller's in-flight
count per instance. ``acquire`` chooses by *power of two choices*: two random instances
under their ``max_concurrency`` cap, the one with fewer calls in flight wins. That
balances nearly as well as "least loaded" at O(1) cost and without the herding of a
global minimum. If every instance is at its cap, there is no choice and the caller
answers RESOURCE_EXHAUSTED (backpressure) instead of queueing without bound.

Version groups (canary, blue-green): the table sends ``candidate_weight`` percent of
calls to the "candidate" group and the rest to "stable". Each call first draws its group
by weight, then picks within it; when that group has no room the call spills to the
other, and "retiring" instances are used only when neither has room, because an answer
is worth more than an exact split.

Outlier ejection (as Envoy's): a worker that could not be reached is ``eject``ed at once,
and none of its instances is chosen until ``readmit`` (the caller probes it, or lets
time pass) or until a table no longer lists it; the AppMaster's next table may be
seconds away, and every call routed to a dead worker meanwhile would fail.

An instance absent from the table is never chosen; that is how draining works. Its
in-flight count stays visible in ``inflight()`` until its last call is released, so the
AppMaster can see the proxy side of a drain finish.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from ha_serving._wire import RouteEntry, RoutingTable


class Router:
    def __init__(self, service: str, *, rng: random.Random | None = None) -> None:
        self.service = service
        self._rng = rng or random.Random()  # noqa: S311 - load balancing, not crypto
        self._table = RoutingTable(service, version=-1)
        self._entries: list[RouteEntry] = []
        self._groups: dict[str, list[RouteEntry]] = {}
        """Entries by group, when the table has more than the stable group."""
        self._inflight: dict[str, int] = {}
        self._routed: dict[str, int] = {}
        self._ejected: set[str] = set()
        """Workers that just failed; their instances are skipped until readmitted."""

    @property
    def table(self) -> RoutingTable:
        return self._table

    @property
    def version(self) -> int:
        """Version of the table held; -1 before the first update."""
        return self._table.version

    def update(self, table: RoutingTable) -> int:
        """Adopt ``table`` unless it is older than the one held; return the held version."""
        if table.service != self.service:
            raise ValueError(f"routing table for {table.service!r} sent to {self.service!r}")
        if table.version > self._table.version:
            self._table = table
            self._entries = list(table.entries)
            groups: dict[str, list[RouteEntry]] = {}
            for e in self._entries:
                groups.setdefault(e.group, []).append(e)
            self._groups = {} if set(groups) <= {"stable"} else groups
            self._ejected &= {e.worker for e in self._entries}  # forget removed workers
        return self._table.version

    def eject(self, worker: str) -> bool:
        """Stop choosing ``worker``'s instances; False if it is not in the table or
        already ejected (then nobody needs to start probing it)."""
        if worker in self._ejected or not any(e.worker == worker for e in self._entries):
            return False
        self._ejected.add(worker)
        return True

    def readmit(self, worker: str) -> None:
        """``worker`` answers again: choose its instances again."""
        self._ejected.discard(worker)

    def ejected(self, worker: str) -> bool:
        """Whether ``worker`` is ejected (a table that dropped it forgets it)."""
        return worker in self._ejected

    def acquire(self, exclude: Collection[str] = ()) -> RouteEntry | None:
        """Choose an instance (not in ``exclude``) and count the call; None if all are full."""
        entry = self._choose(exclude)
        if entry is not None:
            self._inflight[entry.instance_id] = self._inflight.get(entry.instance_id, 0) + 1
            self._routed[entry.instance_id] = self._routed.get(entry.instance_id, 0) + 1
        return entry

    def release(self, instance_id: str) -> None:
        """The call counted by ``acquire`` ended (whatever its outcome)."""
        left = self._inflight.get(instance_id, 0) - 1
        if left < 0:
            raise ValueError(f"release of {instance_id!r} without a matching acquire")
        if left == 0:
            del self._inflight[instance_id]  # keeps the map as small as the busy set
        else:
            self._inflight[instance_id] = left

    def inflight(self) -> dict[str, int]:
        """Calls in flight per instance: every routed instance, plus absent busy ones."""
        counts = {e.instance_id: 0 for e in self._entries}
        counts.update(self._inflight)
        return counts

    def routed(self) -> dict[str, int]:
        """Calls ever sent per instance (a counter: what went to an instance between two
        readings is their difference)."""
        return dict(self._routed)

    def at_capacity(self) -> bool:
        """True if the table has instances but each is at its cap."""
        return bool(self._entries) and all(not self._free(e) for e in self._entries)

    def has_room(self, entry: RouteEntry) -> bool:
        """Whether ``entry`` is under its cap (calls this caller has in flight on it)."""
        return self._free(entry)

    def _count(self, entry: RouteEntry) -> int:
        return self._inflight.get(entry.instance_id, 0)

    def _free(self, entry: RouteEntry) -> bool:
        return self._count(entry) < entry.max_concurrency

    def _choose(self, exclude: Collection[str]) -> RouteEntry | None:
        if not self._groups:
            return self._pick(self._entries, exclude)
        stable = self._groups.get("stable", [])
        candidate = self._groups.get("candidate", [])
        if self._rng.random() * 100 < self._table.candidate_weight:
            order = (candidate, stable)
        else:
            order = (stable, candidate)
        for pool in (*order, self._groups.get("retiring", [])):
            entry = self._pick(pool, exclude)
            if entry is not None:
                return entry
        return None

    def _pick(self, entries: list[RouteEntry], exclude: Collection[str]) -> RouteEntry | None:
        if len(entries) >= 2:
            # Fast path, O(1): the two random picks usually include a usable one.
            pair = [
                e
                for e in self._rng.sample(entries, 2)
                if self._free(e) and e.instance_id not in exclude and e.worker not in self._ejected
            ]
            if pair:
                return min(pair, key=self._count)
        # Slow path: near saturation, look at everything still usable.
        usable = [
            e
            for e in entries
            if self._free(e) and e.instance_id not in exclude and e.worker not in self._ejected
        ]
        if len(usable) <= 1:
            return usable[0] if usable else None
        a, b = self._rng.sample(usable, 2)
        return a if self._count(a) <= self._count(b) else b

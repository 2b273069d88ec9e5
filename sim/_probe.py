"""Instruments: DB statements counted by SQLAlchemy engine events, a process's CPU and
memory read from /proc, and a Store that tells a ``Propagation`` when discovery changes."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from sqlalchemy import event

from ha_serving.store import Store
from sim._figures import EndpointChange, Propagation, cpu_seconds_from_stat

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


@dataclass
class QueryCounter:
    """Statements an engine sent, how many of them wrote, and its transactions (each
    costs round trips no statement count shows: the pool's ping, BEGIN, COMMIT)."""

    queries: int = 0
    writes: int = 0
    transactions: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    """Writes by kind ("UPDATE appmaster_state"): which statements make the write rate."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def attach(cls, store: Store) -> QueryCounter:
        counter = cls()

        def count(
            _conn: Any, _cursor: Any, statement: str, _params: Any, _ctx: Any, _many: bool
        ) -> None:
            write = statement.lstrip()[:7].upper().startswith(_WRITES)
            with counter._lock:
                counter.queries += 1
                counter.writes += int(write)
                if write:
                    kind = statement_kind(statement)
                    counter.kinds[kind] = counter.kinds.get(kind, 0) + 1

        def begin(_conn: Any) -> None:
            with counter._lock:
                counter.transactions += 1

        event.listen(store._engine, "before_cursor_execute", count)  # the store's own engine
        event.listen(store._engine, "begin", begin)
        return counter

    def snapshot(self, role: str) -> dict[str, int]:
        with self._lock:
            return {
                f"{role}.queries": self.queries,
                f"{role}.writes": self.writes,
                f"{role}.transactions": self.transactions,
                **{f"{role}.write.{k}": v for k, v in self.kinds.items()},
            }


def statement_kind(statement: str) -> str:
    """ "UPDATE appmaster_state" from a statement: its verb and the table it names first."""
    words = statement.split(None, 4)
    verb = words[0].upper() if words else "?"
    table = next(
        (w.strip("`(") for w in words[1:] if w.upper() not in ("INTO", "FROM", "IGNORE")), "?"
    )
    return f"{verb} {table}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:  # noqa: PTH123 - a procfs read
        return cpu_seconds_from_stat(f.read(), os.sysconf("SC_CLK_TCK"))


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class ProbedStore(Store):
    """The simulated AppMasters' store: every endpoint write that changes what discovery
    shows (a new address, a new weight, a removal) is recorded as a change to await."""

    probe: Propagation | None = None

    @classmethod
    def open(cls, url: str, probe: Propagation) -> ProbedStore:
        store = cls.connect(url)
        if not isinstance(store, ProbedStore):  # Store.connect builds ``cls``
            raise TypeError(f"Store.connect built a {type(store).__name__}")
        store.probe = probe
        return store

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: dict[tuple[str, str, str], int] = {}
        self._shown_lock = threading.Lock()
        self._lost: set[str] = set()
        """Clusters lost: a write their dying AppMasters still had in flight is not a
        change to await (the leader withdraws it again every round)."""

    def upsert_endpoint(
        self, service: str, cluster: str, address: str, labels: dict[str, Any], ttl_s: float
    ) -> None:
        at = time.time()  # before the write: a watcher may show it before we return
        super().upsert_endpoint(service, cluster, address, labels, ttl_s)
        weight = int(labels.get("weight", 100))
        with self._shown_lock:
            if cluster in self._lost:
                return
            changed = self._shown.get((service, cluster, address)) != weight
            self._shown[(service, cluster, address)] = weight
        if changed:
            self._record(service, address, weight, at)

    def remove_endpoint(self, service: str, cluster: str, address: str) -> bool:
        at = time.time()
        removed = super().remove_endpoint(service, cluster, address)
        self._forget(service, cluster, {address}, at)
        return removed

    def remove_endpoints(self, service: str, cluster: str, *, keep: set[str] | None = None) -> int:
        at = time.time()
        removed = super().remove_endpoints(service, cluster, keep=keep)
        with self._shown_lock:
            gone = {a for (s, c, a) in self._shown if s == service and c == cluster} - (
                keep or set()
            )
        self._forget(service, cluster, gone, at)
        return removed

    def forget_cluster(self, cluster: str) -> list[tuple[str, str]]:
        """Forget a lost cluster's endpoints (its AppMasters are gone); returns them."""
        with self._shown_lock:
            self._lost.add(cluster)
            keys = [k for k in self._shown if k[1] == cluster]
            for k in keys:
                del self._shown[k]
        return [(s, a) for s, _, a in keys]

    def _forget(self, service: str, cluster: str, addresses: set[str], at: float) -> None:
        for address in addresses:
            with self._shown_lock:
                known = self._shown.pop((service, cluster, address), None) is not None
            if known:
                self._record(service, address, None, at)

    def _record(self, service: str, address: str, weight: int | None, at: float) -> None:
        if self.probe is not None:
            self.probe.change(EndpointChange(service, address, weight, at))

"""One simulated Keeper replica, as its own process: the real ``KeeperServer`` (gRPC
link, heartbeat, discovery Watch and Deploy endpoints, leadership loop) with the real
``Reconciler``, timed. It writes its figures to a JSON file every ``STATS_PERIOD_S``
(atomically), so even a replica killed with SIGKILL leaves what it measured.

Two engines, so the figures tell them apart: the reconciler's own (``reconciler``) and
the server's (``api``: AppMaster links and heartbeats, Watch streams, leadership).

It serves without credentials (``KeeperSettings.insecure``, as ``keeper run --insecure``):
the simulation's AppMasters, watchers and client are in-process stand-ins on a private
loopback /24 against a private DB, and job submission (where the leader mints an
AppMaster's credential) is not simulated. So the figures leave out the authentication
interceptor and the lookups of minted credentials (one store read per token per
``CACHE_S``)."""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ha_serving._settings import KeeperSettings
from ha_serving.keeper._leadership import Term
from ha_serving.keeper._reconciler import Reconciler
from ha_serving.keeper._server import KeeperServer
from ha_serving.store import ClusterRecord, Store, StoreRef
from sim._probe import QueryCounter

STATS_PERIOD_S = 0.5
PROFILE_EVERY = 8
"""Stats periods between two dumps of the profile (dumping is not free)."""


class SimSubmitter:
    """Job submission is not simulated: the simulation starts each cluster's AppMasters
    itself when it deploys. A submission (an AppMaster silent for 5 s) is counted."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.submitted: list[tuple[float, str, str]] = []
        """(when, cluster, service) of each submission."""

    def submit(self, cluster: ClusterRecord, service: str) -> str:
        self.submitted.append((time.time(), cluster.name, service))
        return f"sim-job-{next(self._ids)}"


class TimedReconciler(Reconciler):
    """The real reconciler; each round's wall time is recorded (start, duration)."""

    def __init__(self, *args: Any, profile: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: list[tuple[float, float]] = []
        self.failed = 0
        self._profile_to = profile
        self._profiler = cProfile.Profile() if profile is not None else None
        self._lock = threading.Lock()
        """A round and a dump of its profile never overlap (rounds run in a thread)."""

    def round(self, term: Term) -> None:
        with self._lock:
            if self._profiler is not None:
                self._profiler.enable()
            started, t0 = time.time(), time.perf_counter()
            try:
                super().round(term)
            except Exception:
                self.failed += 1
                raise
            finally:
                self.rounds.append((started, time.perf_counter() - t0))
                if self._profiler is not None:
                    self._profiler.disable()

    def dump_profile(self) -> None:
        """Write the rounds' profile so far (cProfile format) if asked to profile."""
        if self._profiler is None or self._profile_to is None:
            return
        with self._lock:
            self._profiler.dump_stats(self._profile_to)


async def serve(  # noqa: PLR0917 - the CLI's arguments, in order
    keeper_id: str,
    address: str,
    db: StoreRef,
    stats: Path,
    lease_ttl_s: float,
    profile: Path | None = None,
) -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = KeeperSettings(lease_ttl_s=lease_ttl_s, insecure=True)
    api_store = Store.connect(db)
    reconciler_store = Store.connect(db)
    counters = {
        "api": QueryCounter.attach(api_store),
        "reconciler": QueryCounter.attach(reconciler_store),
    }
    submitter = SimSubmitter()
    server = KeeperServer(api_store, keeper_id, address, settings, submitter=submitter)
    reconciler = TimedReconciler(
        reconciler_store, server.leadership, submitter, settings=settings, profile=profile
    )
    server.reconciler = reconciler
    await server.start()
    for beat in itertools.count():
        term = server.leadership.term()
        figures: dict[str, Any] = {
            "keeper": keeper_id,
            "pid": os.getpid(),
            "at": time.time(),
            "leader": term is not None,
            "epoch": term.epoch if term else 0,
            "rounds": list(reconciler.rounds),
            "failed_rounds": reconciler.failed,
            "submitted": list(submitter.submitted),
            "counts": {k: v for role, c in counters.items() for k, v in c.snapshot(role).items()},
        }
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(figures))
        tmp.replace(stats)
        if reconciler.rounds and beat % PROFILE_EVERY == 0:
            await asyncio.to_thread(reconciler.dump_profile)
        await asyncio.sleep(STATS_PERIOD_S)


def read_stats(path: Path) -> dict[str, Any] | None:
    """A replica's last figures, or None before its first write."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None

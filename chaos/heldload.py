"""The autoscaler drills' load: ``callers`` callers, each call held ``hold_s`` by the
drill service's code, so about ``callers`` calls are in flight; one such load per stack
(run directory) and service, started and stopped by the drill's actions (``heal``
stops every one, so a drill that failed half-way leaves no callers behind). Each call
carries its id, which the service's workers append to their ledger: a call that ran
twice shows there (``ran_twice``)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import infra
from chaos import target
from chaos.target import DrillError
from ha_serving._spec import load_spec
from loadtest.callers import Load

DRILL_SERVICE = Path(__file__).resolve().parents[1] / "examples" / "drill"


def drill_spec(
    service: str, ledger: Path, clusters: Sequence[str], policy: Mapping[str, Any] | None
) -> str:
    """The drill service's spec as ``service`` at one instance, on ``clusters`` (equal
    weights), its workers writing their ledger to ``ledger``, with ``policy`` as its
    ``autoscaling`` section (None: off)."""
    base = load_spec(DRILL_SERVICE / "drill.yaml").model_dump(mode="json")
    base.update(
        name=service,
        instances=1,
        config={"seq": 0, "ledger_dir": str(ledger)},
        placement={"clusters": [{"name": c} for c in clusters]},
        autoscaling=None if policy is None else dict(policy),
    )
    return json.dumps(base)


def start_load(topo: infra.Topology, service: str, callers: int, hold_s: float) -> Load:
    """The load (not started yet), once discovery lists ``service``'s endpoints."""
    load = Load(
        topo,
        service,
        method="call",
        payload=lambda call_id: json.dumps({"id": call_id, "hold_s": hold_s}).encode(),
        threads=callers,
        rate=callers / hold_s * 2,  # more than they can do: always one call in flight each
        deadline_s=10.0,
    )
    target.poll(f"discovery of {service}", lambda: bool(load.discovery.endpoints), 60)
    return load


def latest_event(topo: infra.Topology) -> int:
    """The id of the store's newest event (0: none): what came after it is the drill's."""
    db = target.store(topo)
    try:
        latest = db.list_events(limit=1)
    finally:
        db.close()
    return latest[-1].id if latest else 0


def ran_twice(ledger: Path, ids: set[str]) -> tuple[str, ...]:
    """Which of ``ids`` the service's ledger in ``ledger`` shows run more than once."""
    counts: Counter[str] = Counter()
    for path in ledger.glob("calls-*.log"):
        counts.update(line for line in path.read_text().split() if line in ids)
    return tuple(sorted(i for i, n in counts.items() if n > 1))


class _Run(Protocol):
    load: Load


R = TypeVar("R", bound=_Run)


class Loads(Generic[R]):
    """The running load of one drill service per stack."""

    def __init__(self, service: str, starter: str) -> None:
        self.service, self.starter = service, starter
        self._runs: dict[Path, R] = {}
        self._lock = threading.Lock()

    def put(self, run_dir: Path, run: R) -> None:
        with self._lock:
            self._runs[run_dir] = run

    def get(self, run_dir: Path) -> R:
        with self._lock:
            run = self._runs.get(run_dir)
        if run is None:
            raise DrillError(f"no {self.service} load runs (start it with {self.starter})")
        return run

    def stop(self, run_dir: Path) -> str | None:
        """End the load on the stack in ``run_dir``, if one runs; what it saw."""
        with self._lock:
            run = self._runs.pop(run_dir, None)
        if run is None:
            return None
        run.load.close()
        calls = run.load.since(0)
        failed = sum(1 for c in calls if not c.ok)
        return f"{self.service} load stopped: {len(calls)} calls, {failed} failed"

"""The leader prunes old history every prune period, one bounded batch at a time (what
is pruned and what is kept is the store's contract: tests/store_contract.py)."""

from __future__ import annotations

from pathlib import Path

from ha_serving._settings import KeeperSettings
from ha_serving.keeper import Leadership
from ha_serving.keeper._reconciler import Reconciler
from ha_serving.store import ClusterRecord, Store
from ha_serving.util.clock import FakeClock


class NoJobs:
    def submit(self, cluster: ClusterRecord, service: str) -> str:
        raise AssertionError(f"no job expected ({cluster.name}, {service})")


def test_the_leader_prunes_a_bounded_batch_every_prune_period(tmp_path: Path) -> None:
    """Before: nothing was ever deleted; events, operations, instructions and packages
    grew for as long as the stack ran."""
    clock = FakeClock()
    store = Store.connect(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    try:
        leadership = Leadership(store, "k1", ttl_s=1e6, clock=clock)
        leadership.tick()
        retention = KeeperSettings(retention_s=3600, prune_period_s=60, prune_batch=2)
        reconciler = Reconciler(store, leadership, NoJobs(), clock=clock, settings=retention)
        for n in range(5):
            store.append_event("drill", detail={"n": n})
        clock.advance(3000)
        store.append_event("recent")
        clock.advance(601)  # the first five are older than the retention now

        def events() -> list[str]:
            return [e.kind for e in store.list_events()]

        def leader_round() -> None:
            term = leadership.term()
            assert term is not None
            reconciler.round(term)

        leader_round()
        assert events() == ["drill"] * 3 + ["recent"]  # one batch of 2
        leader_round()
        assert len(events()) == 4  # not again before the prune period has passed
        clock.advance(60)
        leader_round()
        leader_round()
        assert events() == ["drill", "recent"]
        clock.advance(60)
        leader_round()
        assert events() == ["recent"]
    finally:
        store.close()

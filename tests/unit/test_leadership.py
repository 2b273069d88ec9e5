"""Keeper leadership in fake time: one acting leader at a time, epochs only grow, a
paused or partitioned leader stops acting before anyone else can take over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ha_serving._errors import StoreUnavailable
from ha_serving.keeper import Leadership, Role
from ha_serving.store import Store
from ha_serving.util.clock import FakeClock

TTL = 3.0


class FlakyStore:
    """The real store, or StoreUnavailable for everything while ``down``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if self.down and callable(attr):

            def unavailable(*_: Any, **__: Any) -> Any:
                raise StoreUnavailable("db down (test)")

            return unavailable
        return attr


def _replicas(tmp: Path, n: int) -> tuple[FakeClock, FlakyStore, list[Leadership]]:
    clock = FakeClock()
    store = FlakyStore(Store.connect(f"sqlite:///{tmp / 'lease.db'}", clock=clock))
    replicas = [
        Leadership(store, f"k{i}", ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
        for i in range(n)
    ]
    return clock, store, replicas


def test_first_ticker_leads_and_others_follow(tmp_path: Path) -> None:
    """The first replica to tick takes the lease at epoch 1; the others stay followers."""
    _, _, (a, b, c) = _replicas(tmp_path, 3)
    assert a.tick() == Role.LEADER
    assert (b.tick(), c.tick()) == (Role.FOLLOWER, Role.FOLLOWER)
    assert a.require().epoch == 1


def test_dead_leader_is_replaced_after_the_ttl_with_a_higher_epoch(tmp_path: Path) -> None:
    """A leader that stops renewing (killed) is replaced once its lease expires."""
    clock, _, (a, b, _) = _replicas(tmp_path, 3)
    a.tick()
    clock.advance(TTL - 0.1)
    assert b.tick() == Role.FOLLOWER
    clock.advance(0.2)
    assert b.tick() == Role.LEADER
    assert b.require().epoch == 2


def test_paused_leader_stops_acting_before_the_lease_can_move(tmp_path: Path) -> None:
    """SIGSTOP past the lease: the old leader's own deadline passed before the lease
    expired, and its renew after SIGCONT is refused."""
    clock, _, (a, b, _) = _replicas(tmp_path, 3)
    a.tick()
    clock.advance(TTL * 0.8)  # past a's local deadline (ttl - ttl/4), lease still valid
    assert a.term() is None
    assert b.tick() == Role.FOLLOWER
    clock.advance(TTL)
    assert b.tick() == Role.LEADER
    assert a.tick() == Role.FOLLOWER  # acquire refused: b holds it
    assert b.require().epoch == 2


def test_leader_cut_off_from_the_db_steps_down_by_its_local_deadline(tmp_path: Path) -> None:
    """With the DB down, a leader keeps acting only until its local deadline."""
    clock, store, (a, _, _) = _replicas(tmp_path, 3)
    a.tick()
    store.down = True
    clock.advance(1.0)
    assert a.tick() == Role.LEADER
    clock.advance(1.5)
    assert a.tick() == Role.FOLLOWER


def test_resign_lets_a_successor_take_over_at_once(tmp_path: Path) -> None:
    """A clean shutdown releases the lease: no TTL wait, the epoch still grows."""
    _, _, (a, b, _) = _replicas(tmp_path, 3)
    a.tick()
    a.resign()
    assert b.tick() == Role.LEADER
    assert b.require().epoch == 2


class LeadershipMachine(RuleBasedStateMachine):
    """Random ticks, pauses, DB outages and clock moves over three replicas."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.clock, self.store, self.replicas = _replicas(Path(self._dir.name), 3)
        self.paused: set[int] = set()
        self.epochs_seen: list[int] = []

    def teardown(self) -> None:
        self.store._store.close()
        self._dir.cleanup()

    @rule(i=st.integers(0, 2))
    def tick(self, i: int) -> None:
        if i in self.paused:
            return
        before = self.replicas[i].term()
        self.replicas[i].tick()
        after = self.replicas[i].term()
        if after is not None and (before is None or before.epoch != after.epoch):
            self.epochs_seen.append(after.epoch)

    @rule(i=st.integers(0, 2))
    def pause_or_resume(self, i: int) -> None:
        self.paused ^= {i}

    @rule()
    def toggle_db(self) -> None:
        self.store.down = not self.store.down

    @rule(dt=st.floats(0.05, 5.0))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @invariant()
    def at_most_one_acting_leader(self) -> None:
        acting = [r.holder for r in self.replicas if r.term() is not None]
        assert len(acting) <= 1, acting

    @invariant()
    def new_leaders_have_higher_epochs(self) -> None:
        fresh = [e for i, e in enumerate(self.epochs_seen) if e not in self.epochs_seen[:i]]
        assert fresh == sorted(fresh)


TestLeadershipMachine = LeadershipMachine.TestCase
TestLeadershipMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_require_refuses_a_follower(tmp_path: Path) -> None:
    """A follower cannot stamp an instruction."""
    from ha_serving.keeper import NotLeader

    _, _, (a, b, _) = _replicas(tmp_path, 3)
    a.tick()
    b.tick()
    with pytest.raises(NotLeader):
        b.require()


def test_two_processes_with_the_same_keeper_id_never_lead_at_once(tmp_path: Path) -> None:
    """Two Keepers started with the same --id are two lease holders: the second does not
    take the first's lease as its own (same epoch, both acting); it leads only after the
    first's lease expired, at a higher epoch."""
    clock, store, _ = _replicas(tmp_path, 0)
    first = Leadership(store, "k1", ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    twin = Leadership(store, "k1", ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    assert first.tick() == Role.LEADER
    assert twin.tick() == Role.FOLLOWER
    assert first.tick() == Role.LEADER
    assert [r.term() is not None for r in (first, twin)] == [True, False]
    clock.advance(TTL + 0.1)  # the first stops renewing (killed, paused)
    assert twin.tick() == Role.LEADER
    assert twin.require().epoch == 2
    assert first.tick() == Role.FOLLOWER  # its renew is refused: the lease moved on


def test_status_names_the_keeper_not_its_instance() -> None:
    from ha_serving.keeper._leadership import keeper_of

    assert keeper_of("k1#0123456789ab") == "k1"
    assert keeper_of("k1") == "k1"
    assert keeper_of(None) == ""


def test_status_answers_without_the_lease_only_while_the_store_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Status`` reports this replica's own view when the lease cannot be read because
    the store is down; any other failure to read it is a bug and is raised, not hidden
    behind a "no leader" answer."""
    import asyncio

    from ha_serving._settings import KeeperSettings
    from ha_serving.keeper._server import KeeperServer
    from ha_serving.proto import keeper_pb2

    store = Store.connect(f"sqlite:///{tmp_path / 'state.db'}")
    server = KeeperServer(store, "k1", "127.0.0.1:1", KeeperSettings())
    request = keeper_pb2.StatusRequest()

    def down(_name: str) -> None:
        raise StoreUnavailable("state store: connection refused")

    monkeypatch.setattr(store, "get_lease", down)
    status = asyncio.run(server.Status(request, None))  # type: ignore[arg-type]
    assert (status.keeper_id, status.leader, status.epoch, status.leader_id) == ("k1", False, 0, "")

    def bug(_name: str) -> None:
        raise KeyError("holder")

    monkeypatch.setattr(store, "get_lease", bug)
    with pytest.raises(KeyError, match="holder"):
        asyncio.run(server.Status(request, None))  # type: ignore[arg-type]
    store.close()

"""The AppMaster's warm standby (``appmaster._standby``) on a real SQLite store, Ray's
answers faked (``FakePeers``): the first of two claims the lease; the other waits while
the holder runs and takes over once it is gone; a restarted process takes its own dead
incarnation's lease; of two takers one wins; and the old holder, fenced by the lease's
epoch, can no longer write its state (``AppMasterCore`` then stops)."""

from __future__ import annotations

import asyncio

import pytest

from ha_serving._errors import LeaseLost
from ha_serving.appmaster._standby import Holder, Standby, lease_name
from ha_serving.store import Store
from tests.unit.fixtures.control import Harness, run, spec

A1 = Holder("echo-appmaster", "127.0.1.2", 100)
A2 = Holder("echo-appmaster", "127.0.1.2", 101)  # the same actor, restarted by Ray
B1 = Holder("echo-appmaster-2", "127.0.1.2", 200)
NAME = lease_name("a", "echo")


class FakePeers:
    """Which incarnations run; ``watch`` returns once the watched one is gone."""

    def __init__(self, *running: Holder) -> None:
        self.running = set(running)
        self.watched: list[Holder] = []
        self.changed = asyncio.Event()

    async def alive(self, holder: Holder) -> bool:
        return holder in self.running

    async def watch(self, holder: Holder) -> None:
        self.watched.append(holder)
        while holder in self.running:
            self.changed.clear()
            await self.changed.wait()

    def dies(self, holder: Holder) -> None:
        self.running.discard(holder)
        self.changed.set()


def _standby(store: Store, me: Holder, peers: FakePeers) -> Standby:
    return Standby(store, "a", "echo", me, peers, retry_s=0.01)


def test_the_first_claims_the_other_waits_and_takes_over_when_it_dies(
    store: Store,
) -> None:
    async def scenario() -> None:
        peers = FakePeers(A1, B1)
        first = await _standby(store, A1, peers).claim()
        assert (first.holder, first.epoch) == (str(A1), 1)
        waiting = asyncio.create_task(_standby(store, B1, peers).claim())
        await asyncio.sleep(0.1)
        assert not waiting.done()  # A1 runs: B1 only watches it
        assert peers.watched == [A1]
        peers.dies(A1)
        taken = await asyncio.wait_for(waiting, 2.0)
        assert (taken.holder, taken.epoch) == (str(B1), 2)

    run(scenario())


def test_a_restarted_process_takes_its_own_dead_incarnations_lease(store: Store) -> None:
    async def scenario() -> None:
        peers = FakePeers(A2, B1)
        await _standby(store, A1, FakePeers(A1)).claim()
        # A1's process died and Ray restarted it as A2; B1 was not told (its watch is elsewhere)
        taken = await asyncio.wait_for(_standby(store, A2, peers).claim(), 2.0)
        assert (taken.holder, taken.epoch) == (str(A2), 2)
        assert peers.watched == []  # its own name: no need to ask Ray

    run(scenario())


def test_a_holder_reported_alive_is_never_taken_from(store: Store) -> None:
    async def scenario() -> None:
        peers = FakePeers(A1, B1)
        await _standby(store, A1, peers).claim()
        waiting = asyncio.create_task(_standby(store, B1, peers).claim())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        waiting.cancel()
        lease = store.get_lease(NAME)
        assert lease is not None
        assert lease.holder == str(A1)

    run(scenario())


def test_of_the_standby_and_the_restarted_process_one_wins(store: Store) -> None:
    async def scenario() -> None:
        await _standby(store, A1, FakePeers(A1)).claim()
        peers = FakePeers(A2, B1)  # A1 died; both see it at once
        b = asyncio.create_task(_standby(store, B1, peers).claim())
        a = asyncio.create_task(_standby(store, A2, peers).claim())
        done, pending = await asyncio.wait({a, b}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        winner = done.pop().result()
        assert winner.epoch == 2
        await asyncio.sleep(0.2)
        assert all(not t.done() for t in pending)  # the loser watches the winner
        for t in pending:
            t.cancel()

    run(scenario())


def test_a_holder_parses_back_from_its_lease_text() -> None:
    assert Holder.parse(str(B1)) == B1
    assert Holder.parse("garbage") is None
    assert Holder.parse("x@host:notapid") is None


def test_a_deposed_appmaster_cannot_write_and_its_loop_stops(h: Harness) -> None:
    """The active AppMaster's writes carry the lease's epoch: once the standby took the
    lease, its next write fails with LeaseLost, and ``run`` ends with it."""

    async def scenario() -> None:
        lease = await _standby(h.store, A1, FakePeers(A1)).claim()
        h.core.fence = (lease.name, lease.epoch)
        await h.deploy(spec(), "echo_v1", "op-1")
        assert h.store.take_lease(NAME, str(B1), str(A1), 1000.0) is not None
        with pytest.raises(LeaseLost):
            await h.deploy(spec(config={"prefix": ">"}), "echo_v1", "op-2", kind="config")
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(h.core.run(), 5.0)

    run(scenario())

"""A Keeper's Watch streams served together (``keeper/_watchhub.py``): one endpoints read
per period for every watched service, each stream handed its own service's list, nothing
sent while the store does not answer, a new stream's first list brought forward, and a
stream that ends leaving the hub; ``KeeperServer.Watch`` still pushes each change and
re-sends an unchanged list every ``watch_keepalive_s``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterable
from typing import Any, NoReturn, cast

import grpc
import pytest

from ha_serving._errors import StoreUnavailable
from ha_serving._settings import KeeperSettings
from ha_serving.keeper import KeeperServer
from ha_serving.keeper._watchhub import FIRST_READ_GAP, Watcher, WatchHub
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import Endpoint, Store, _catalog
from ha_serving.util.clock import FakeClock
from tests.unit.fixtures.control import TOKEN, running_keeper
from tests.unit.test_linkhub import FakeContext, Statements, Wrapped, until

SETTINGS = KeeperSettings()
PERIOD = SETTINGS.watch_period_s
GAP = PERIOD * FIRST_READ_GAP
KEEPALIVE = SETTINGS.watch_keepalive_s
LOG = logging.getLogger("test_watchhub")
pytestmark = pytest.mark.timeout(60)  # a read never handed would hang a test in fake time


def _hub(store: Any, clock: FakeClock) -> WatchHub:
    return WatchHub(store, SETTINGS, log=LOG, clock=clock)


def asleep(clock: FakeClock) -> bool:
    """The hub's loop sleeps on ``clock`` (a sleep it gave up on stays listed, done)."""
    return any(not waiter.done() for _, waiter in clock._waiters)


def waiting(watchers: Iterable[Watcher]) -> bool:
    return all(w.waiter is not None and not w.waiter.done() for w in watchers)


def addresses(found: list[Endpoint] | None) -> list[str] | None:
    return None if found is None else [e.address for e in found]


async def served(
    clock: FakeClock, watchers: list[Watcher], advance: float
) -> list[list[Endpoint] | None]:
    """Every watcher waits; once the hub's loop sleeps, ``advance`` passes: what each got."""
    answers = [asyncio.ensure_future(w.next()) for w in watchers]
    await until(lambda: waiting(watchers) and asleep(clock), "watchers waiting, hub asleep")
    clock.advance(advance)
    return list(await asyncio.gather(*answers))


def _publish(store: Store, services: int) -> None:
    """Service ``svc{k}`` gets k endpoints (``svc0`` none), on two clusters."""
    for k in range(services):
        for n in range(k):
            store.upsert_endpoint(f"svc{k}", "ab"[n % 2], f"127.0.{k}.{n}:5000", {}, ttl_s=60)


# --- the hub ----------------------------------------------------------------------------


def test_n_watchers_of_k_services_cost_one_read_per_period(store: Store) -> None:
    """Thirty watchers of six services (one with no endpoint): each period, one SELECT in
    one transaction for all of them (it was one per stream), and each watcher is handed
    its own service's list, the one with none an empty list."""
    _publish(store, 6)
    statements = Statements(store)
    watched = [f"svc{n % 6}" for n in range(30)]

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(store, clock)
        watchers = [hub.open(service) for service in watched]
        statements.take()
        first = await asyncio.gather(*(w.next() for w in watchers))  # at once: new streams
        assert statements.take() == ["SELECT"]
        for service, got in zip(watched, first, strict=True):
            assert got == store.list_endpoints(service), service
        assert first[0] == []
        assert len(first[5] or []) == 5
        store.upsert_endpoint("svc0", "a", "127.0.9.9:5000", {}, ttl_s=60)
        expected = [addresses(store.list_endpoints(service)) for service in watched]
        assert expected[0] == ["127.0.9.9:5000"]
        statements.take()
        for _ in range(3):
            again = await served(clock, watchers, PERIOD)
            assert statements.take() == ["SELECT"]
            assert [addresses(got) for got in again] == expected
        assert hub.reads == 4

    asyncio.run(scenario())


def test_a_period_with_no_watcher_waiting_reads_nothing(store: Store) -> None:
    statements = Statements(store)

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(store, clock)
        watcher = hub.open("echo")
        await watcher.next()
        statements.take()
        await hub.read_once()  # open, but not waiting (its stream is sending)
        watcher.close()
        await hub.read_once()
        assert statements.take() == []
        assert hub.reads == 1

    asyncio.run(scenario())


def test_a_new_watchers_first_list_comes_a_tenth_of_a_period_after_the_last_read(
    store: Store,
) -> None:
    """A new stream does not wait a whole period for its first list: it brings the next
    read forward, to FIRST_READ_GAP of a period after the hub's last turn, or at once when
    that has passed; the streams that arrive within that gap, and all those waiting, share
    that one read; the others' period is a whole period."""
    _publish(store, 3)

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(store, clock)
        old = hub.open("svc1")
        assert addresses(await old.next()) == ["127.0.1.0:5000"]  # at once: the first ever
        older = asyncio.ensure_future(old.next())
        await until(lambda: waiting([old]) and asleep(clock), "the hub asleep for a period")
        clock.advance(PERIOD / 2)
        new = hub.open("svc2")  # the last turn is half a period ago: read at once
        assert addresses(await new.next()) == ["127.0.2.0:5000", "127.0.2.1:5000"]
        assert addresses(await older) == ["127.0.1.0:5000"]
        assert hub.reads == 2

        # Right after a read, new streams wait the gap, and share one read.
        pending = [asyncio.ensure_future(old.next()), asyncio.ensure_future(new.next())]
        await until(lambda: waiting([old, new]) and asleep(clock), "the hub asleep")
        newcomers = [hub.open("svc0"), hub.open("svc1")]
        firsts = [asyncio.ensure_future(w.next()) for w in newcomers]
        await until(lambda: waiting(newcomers), "the new streams waiting")
        clock.advance(GAP * 0.9)
        await asyncio.sleep(0.01)
        assert not any(f.done() for f in [*pending, *firsts])
        clock.advance(GAP * 0.2)
        got = await asyncio.gather(*firsts, *pending)
        assert [addresses(g) for g in got] == [
            [],
            ["127.0.1.0:5000"],
            ["127.0.1.0:5000"],
            ["127.0.2.0:5000", "127.0.2.1:5000"],
        ]
        assert hub.reads == 3

        # With no new stream, the next read is a whole period later.
        everyone = [old, new, *newcomers]
        answers = [asyncio.ensure_future(w.next()) for w in everyone]
        await until(lambda: waiting(everyone) and asleep(clock), "the hub asleep")
        clock.advance(PERIOD * 0.9)
        await asyncio.sleep(0.01)
        assert not any(a.done() for a in answers)
        clock.advance(PERIOD * 0.2)
        await asyncio.gather(*answers)
        assert hub.reads == 4

    asyncio.run(scenario())


def test_a_store_that_does_not_answer_hands_unknown_and_a_bug_ends_the_streams(
    store: Store,
) -> None:
    """While the store does not answer each watcher is handed None ("unknown", never an
    empty list); a bug in the read ends every waiting stream; then the lists come back."""
    _publish(store, 2)
    wrapped = Wrapped(store)

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(wrapped, clock)
        watchers = [hub.open("svc1"), hub.open("svc0")]
        await asyncio.gather(*(w.next() for w in watchers))

        def down(*_: Any) -> NoReturn:
            raise StoreUnavailable("db down (test)")

        wrapped.replace("list_endpoints_for", down)
        assert await served(clock, watchers, PERIOD) == [None, None]

        def bug(*_: Any) -> NoReturn:
            raise KeyError("bug (test)")

        wrapped.replace("list_endpoints_for", bug)
        with pytest.raises(KeyError):
            await served(clock, watchers[:1], PERIOD)
        wrapped.replace("list_endpoints_for", store.list_endpoints_for)
        got = await served(clock, watchers, PERIOD)
        assert [addresses(g) for g in got] == [["127.0.1.0:5000"], []]
        assert wrapped.calls["list_endpoints_for"] == hub.reads == 4

    asyncio.run(scenario())


def test_the_batched_read_takes_many_statements_for_many_services_in_one_answer(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SERVICES_PER_STATEMENT services the read takes several statements (in its one
    transaction), and the answer is the same."""
    _publish(store, 5)
    monkeypatch.setattr(_catalog, "SERVICES_PER_STATEMENT", 2)
    statements = Statements(store)
    services = [f"svc{k}" for k in range(5)]
    got = store.list_endpoints_for(services)
    assert statements.take() == ["SELECT"] * 3
    assert got == {s: store.list_endpoints(s) for s in services}


# --- KeeperServer.Watch ------------------------------------------------------------------


def _watch(server: KeeperServer, service: str) -> AsyncGenerator[keeper_pb2.Endpoints, None]:
    request = keeper_pb2.ResolveRequest(service=service)
    stream = server.Watch(request, FakeContext())  # type: ignore[arg-type]
    return cast("AsyncGenerator[keeper_pb2.Endpoints, None]", stream)


async def tick(clock: FakeClock, hub: WatchHub, sending: asyncio.Future[Any]) -> bool:
    """One stream waits on ``hub``: a period passes, the stream handles the hub's read
    (and waits again, unless it sent something): whether it sent something."""
    await until(lambda: waiting(hub._watchers) and asleep(clock), "the stream waiting")
    [watcher] = hub._watchers
    before = watcher.waiter
    assert before is not None
    clock.advance(PERIOD)
    await until(
        lambda: before.done() and (sending.done() or waiting([watcher])),
        "the stream handled the read",
    )
    return sending.done()


def _sent(message: keeper_pb2.Endpoints) -> list[str]:
    return [e.address for e in message.endpoints]


def test_watch_pushes_each_change_resends_at_keepalive_and_says_nothing_while_the_db_is_down(
    store: Store,
) -> None:
    """Through ``KeeperServer.Watch`` in fake time: the first list at once; an unchanged
    list again only after watch_keepalive_s; a change at the next period; nothing at all
    while the store does not answer, however long; the list once it answers again."""
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {"zone": "z1"}, ttl_s=60)
    wrapped = Wrapped(store)
    clock = FakeClock()
    server = KeeperServer(wrapped, "k-test", "127.0.0.1:1", SETTINGS, clock=clock)  # type: ignore[arg-type]
    hub = server.watches

    async def scenario() -> None:
        stream = _watch(server, "echo")
        assert _sent(await anext(stream)) == ["127.0.1.2:5000"]
        sending = asyncio.ensure_future(anext(stream))
        periods = round(KEEPALIVE / PERIOD)
        for _ in range(periods - 1):
            assert not await tick(clock, hub, sending)
        store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {"zone": "z1"}, ttl_s=60)
        assert await tick(clock, hub, sending)  # the keepalive (a renewal is no change)
        assert _sent(await sending) == ["127.0.1.2:5000"]

        sending = asyncio.ensure_future(anext(stream))
        store.upsert_endpoint("echo", "b", "127.0.2.2:5000", {}, ttl_s=60)
        assert await tick(clock, hub, sending)
        assert _sent(await sending) == ["127.0.1.2:5000", "127.0.2.2:5000"]

        def down(*_: Any) -> NoReturn:
            raise StoreUnavailable("db down (test)")

        sending = asyncio.ensure_future(anext(stream))
        wrapped.replace("list_endpoints_for", down)
        for _ in range(3 * periods):
            assert not await tick(clock, hub, sending)
        wrapped.replace("list_endpoints_for", store.list_endpoints_for)
        assert await tick(clock, hub, sending)
        assert _sent(await sending) == ["127.0.1.2:5000", "127.0.2.2:5000"]
        assert wrapped.calls.get("list_endpoints", 0) == 0
        await stream.aclose()
        assert hub.watching == 0

    asyncio.run(scenario())


def test_a_watch_stream_that_ends_leaves_the_hub_and_is_no_longer_read_for(
    store: Store,
) -> None:
    """A stream closed by its client between two messages, and one cancelled while it
    waits, are unregistered: the hub holds only the live stream and reads only its
    service."""
    wrapped = Wrapped(store)
    asked: list[set[str]] = []

    def recording(services: set[str]) -> dict[str, list[Endpoint]]:
        asked.append(set(services))
        return store.list_endpoints_for(services)

    wrapped.replace("list_endpoints_for", recording)
    clock = FakeClock()
    server = KeeperServer(wrapped, "k-test", "127.0.0.1:1", SETTINGS, clock=clock)  # type: ignore[arg-type]
    hub = server.watches

    async def scenario() -> None:
        streams = [_watch(server, s) for s in ("live", "closed", "cancelled")]
        await asyncio.gather(*(anext(s) for s in streams))  # one read, at once
        assert asked == [{"live", "closed", "cancelled"}]
        assert hub.watching == 3
        live = asyncio.ensure_future(anext(streams[0]))
        cancelled = asyncio.ensure_future(anext(streams[2]))
        await until(lambda: sum(w.waiter is not None for w in hub._watchers) == 2, "waiting")
        await streams[1].aclose()  # its client left between two messages
        cancelled.cancel()  # its client left while it waited
        await until(lambda: hub.watching == 1, "the ended streams unregistered")
        asked.clear()
        ticks = [await tick(clock, hub, live) for _ in range(round(KEEPALIVE / PERIOD))]
        assert ticks[-1]  # the keepalive
        assert _sent(await live) == []
        assert asked == [{"live"}] * len(ticks)
        await streams[0].aclose()
        assert hub.watching == 0

    asyncio.run(scenario())


# --- over gRPC ------------------------------------------------------------------------------


def test_open_watch_streams_share_the_keepers_reads(store: Store) -> None:
    """Ten clients watch two services on one Keeper: each gets its service's list and
    then its change, while the Keeper reads for all at once (well under one read per
    stream per period, as before); once the clients are gone the hub holds none."""
    _publish(store, 3)
    wrapped = Wrapped(store)
    metadata = [("authorization", f"Bearer {TOKEN}")]
    with running_keeper(wrapped) as keeper, grpc.insecure_channel(keeper.address) as channel:  # type: ignore[arg-type]
        period = keeper.server.settings.watch_period_s
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        streams = [
            stub.Watch(
                keeper_pb2.ResolveRequest(service=f"svc{1 + n % 2}"),
                metadata=metadata,
                timeout=30,
            )
            for n in range(10)
        ]
        first = [_sent(next(s)) for s in streams]
        store.upsert_endpoint("svc1", "c", "127.0.1.9:5000", {}, ttl_s=60)
        changed = [_sent(next(s)) for s in streams[::2]]
        time.sleep(10 * period)
        elapsed = time.monotonic() - started
        for s in streams:
            s.cancel()
        hub = keeper.server.watches
        deadline = time.monotonic() + 10
        while hub.watching and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hub.watching == 0
    assert first[::2] == [["127.0.1.0:5000"]] * 5
    assert first[1::2] == [["127.0.2.0:5000", "127.0.2.1:5000"]] * 5
    assert changed == [["127.0.1.0:5000", "127.0.1.9:5000"]] * 5
    assert wrapped.calls.get("list_endpoints", 0) == 0
    reads = wrapped.calls["list_endpoints_for"]
    assert reads == hub.reads
    assert reads < len(streams) * (elapsed / period) / 3

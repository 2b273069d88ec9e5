"""A Keeper's AppMaster links served together (``keeper/_linkhub.py``): one instructions
read per period for every open link, each link handed exactly its own instructions once,
and heartbeats written in batches, each acknowledged only once committed."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import grpc
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import event

from ha_serving._errors import StoreUnavailable
from ha_serving._settings import KeeperSettings
from ha_serving.keeper import KeeperServer
from ha_serving.keeper._linkhub import Link, LinkHub
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import AppMasterBeat, Instruction, Store
from ha_serving.util.clock import FakeClock
from tests.unit.fixtures.control import TOKEN, running_keeper, sqlite_store

SETTINGS = KeeperSettings()
PERIOD = SETTINGS.link_period_s
WINDOW = SETTINGS.link_heartbeat_window_s
LOG = logging.getLogger("test_linkhub")


class Statements:
    """The SQL statements a store's engine sent (BEGIN and the like left out)."""

    def __init__(self, store: Store) -> None:
        self.sent: list[str] = []
        self.texts: list[str] = []

        def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            verb = statement.lstrip().split(None, 1)[0].upper()
            if verb in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
                self.sent.append(verb)
                self.texts.append(statement)

        event.listen(store._engine, "before_cursor_execute", count)

    def take(self) -> list[str]:
        sent, self.sent, self.texts = self.sent, [], []
        return sent


class Wrapped:
    """The real store, with some methods replaced (``replace``) and calls counted."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted

    def replace(self, name: str, fn: Callable[..., Any]) -> None:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        setattr(self, name, counted)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    with sqlite_store(tmp_path) as store:
        yield store


def _hub(store: Any, clock: FakeClock, **kw: Any) -> LinkHub:
    return LinkHub(store, SETTINGS, log=LOG, clock=clock, **kw)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop (and the threads it waits on) run until ``condition`` holds."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


async def asleep(clock: FakeClock) -> None:
    """Wait until the hub's loop sleeps on ``clock`` (so advancing it wakes the loop)."""
    await until(lambda: bool(clock._waiters), "the hub's loop asleep")


async def period(clock: FakeClock, links: list[Link]) -> list[list[Instruction]]:
    """Every link waits, one link period passes: what each was handed."""
    waiting = [asyncio.ensure_future(link.next()) for link in links]
    await until(lambda: all(link.waiter is not None for link in links), "links waiting")
    await asleep(clock)
    clock.advance(PERIOD)
    return list(await asyncio.gather(*waiting))


# --- instructions -----------------------------------------------------------------------


def test_n_open_links_cost_one_read_per_period(db: Store) -> None:
    """Thirty links on thirty targets: each period, one transaction for all of them (it
    was one per link), and each link gets its own target's instructions. Once they are
    caught up, a period is one SELECT past the hub's cursor that names no target: the
    same statement for thirty links as for one."""
    statements = Statements(db)
    targets = [(cluster, f"svc{k}") for cluster in "abc" for k in range(10)]
    for n, target in enumerate(targets):
        db.add_instruction(*target, f"op-{n}", 1, {"n": n})

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(db, clock)
        links = [hub.open(*target, 0) for target in targets]
        statements.take()
        first = await period(clock, links)
        assert [[i.op_id for i in got] for got in first] == [[f"op-{n}"] for n in range(30)]
        assert statements.take() == ["SELECT", "SELECT"]  # the highest id, the targets'
        for link, got in zip(links, first, strict=True):
            link.after = got[-1].id
        assert await period(clock, links) == [[]] * 30  # beats
        caught_up = statements.texts
        assert statements.take() == ["SELECT"]
        db.add_instruction("b", "svc4", "op-new", 2, {})
        statements.take()
        handed = await period(clock, links)
        assert [[i.op_id for i in got] for got in handed] == [
            ["op-new"] if target == ("b", "svc4") else [] for target in targets
        ]
        assert statements.texts == caught_up
        assert statements.take() == ["SELECT"]
        assert hub.reads == 3

        one = _hub(db, clock)
        alone = one.open("a", "svc0", links[0].after)
        await period(clock, [alone])  # its first: the highest id and its target
        statements.take()
        assert await period(clock, [alone]) == [[]]
        assert statements.texts == caught_up

    asyncio.run(scenario())


def test_a_link_that_missed_a_read_is_read_for_on_its_own_target(db: Store) -> None:
    """A link whose stream was sending during a period (not waiting) did not see that
    period's new rows: its next read asks for its own target after its own cursor."""

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(db, clock)
        busy, idle = hub.open("a", "echo", 0), hub.open("b", "echo", 0)
        assert await period(clock, [busy, idle]) == [[], []]
        db.add_instruction("a", "echo", "op-1", 1, {})
        db.add_instruction("b", "echo", "op-2", 1, {})
        got = await period(clock, [idle])  # busy's stream is elsewhere
        assert [[i.op_id for i in g] for g in got] == [["op-2"]]
        assert busy.synced != hub.high
        got = await period(clock, [busy, idle])
        assert [[i.op_id for i in g] for g in got] == [["op-1"], []]
        assert busy.synced == hub.high == idle.synced

    asyncio.run(scenario())


def test_a_period_with_no_link_waiting_reads_nothing(db: Store) -> None:
    statements = Statements(db)

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(db, clock)
        link = hub.open("a", "echo", 0)
        await period(clock, [link])
        link.close()
        statements.take()
        await hub.read_once()
        assert statements.take() == []
        assert hub.reads == 1

    asyncio.run(scenario())


# Steps of a link's life, drawn by Hypothesis: the leader writes an instruction for a
# target, a period passes with some links waiting (the others are busy sending), or a
# new link opens on a target at some cursor.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 2)),
        st.tuples(st.just("period"), st.sets(st.integers(0, 5))),
        st.tuples(st.just("open"), st.integers(0, 2), st.integers(0, 6)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, new_limit=st.integers(1, 4))
def test_every_link_gets_each_instruction_of_its_target_once_in_order(
    steps: list[tuple[Any, ...]], new_limit: int
) -> None:
    """Whatever the leader writes between periods, whichever links wait in a period
    (several links on one target, at different cursors, among them), and with few
    instructions handed per period and few new ones read past the hub's cursor: each
    link is handed exactly its target's instructions after its first cursor, in id
    order, none twice, none left out."""
    targets = [("a", "echo"), ("b", "echo"), ("a", "other")]
    with tempfile.TemporaryDirectory() as folder, sqlite_store(Path(folder)) as store:

        async def scenario() -> None:
            clock = FakeClock()
            hub = _hub(store, clock, limit=2, new_limit=new_limit)
            links: list[tuple[Link, int, list[int]]] = [(hub.open(*t, 0), 0, []) for t in targets]

            async def tick(which: set[int]) -> None:
                chosen = [links[k] for k in sorted(which) if k < len(links)]
                if not chosen:  # nobody waits: the period reads nothing
                    return
                handed = await period(clock, [link for link, _, _ in chosen])
                for (link, _, got), rows in zip(chosen, handed, strict=True):
                    for i in rows:  # the stream sends each, then moves its cursor
                        assert (i.cluster, i.service) == link.target
                        got.append(i.id)
                        link.after = i.id

            for step in steps:
                if step[0] == "write":
                    store.add_instruction(*targets[step[1]], "op", 1, {})
                elif step[0] == "period":
                    await tick(step[1])
                else:
                    link = hub.open(*targets[step[1]], step[2])
                    links.append((link, step[2], []))
            for _ in range(20):  # then every link waits until it has caught up
                await tick(set(range(len(links))))
            for link, start, got in links:
                mine = store.list_instructions(*link.target, after=start, limit=1000)
                assert got == [i.id for i in mine]

        asyncio.run(scenario())


def test_a_store_that_does_not_answer_gives_each_link_a_beat_and_a_bug_ends_them(
    db: Store,
) -> None:
    """The Keeper keeps beating while the DB is down (its silence would make the
    AppMasters leave a live Keeper); a bug in the read ends every waiting stream."""
    db.add_instruction("a", "echo", "op-1", 1, {})
    store = Wrapped(db)

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(store, clock)
        links = [hub.open("a", "echo", 0), hub.open("b", "echo", 0)]

        def down(*_: Any, **__: Any) -> NoReturn:
            raise StoreUnavailable("db down (test)")

        store.replace("read_instructions", down)
        assert await period(clock, links) == [[], []]

        def bug(*_: Any, **__: Any) -> NoReturn:
            raise KeyError("bug (test)")

        store.replace("read_instructions", bug)
        with pytest.raises(KeyError):
            await period(clock, links[:1])
        store.replace("read_instructions", db.read_instructions)
        assert [[i.op_id for i in got] for got in await period(clock, links)] == [["op-1"], []]

    asyncio.run(scenario())


# --- heartbeats ----------------------------------------------------------------------------


def _beat(n: int, epoch: int = 0) -> AppMasterBeat:
    return AppMasterBeat("a", f"svc{n}", f"svc{n}-appmaster", epoch)


def test_heartbeats_within_a_window_are_one_write_each_answered_after_its_commit(
    db: Store,
) -> None:
    """Twenty links' heartbeats arriving together are one INSERT; none is answered
    before that write committed (the write is held until the test lets it go), a beat
    arriving meanwhile goes into the next batch, and every answered beat is in the DB."""
    statements = Statements(db)
    store = Wrapped(db)
    writing, release = threading.Event(), threading.Event()

    def held(beats: list[AppMasterBeat]) -> None:
        writing.set()
        assert release.wait(10)
        db.heartbeat_appmasters(beats)

    store.replace("heartbeat_appmasters", held)

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(store, clock)
        beats = [asyncio.ensure_future(hub.beat(_beat(n))) for n in range(20)]
        await until(lambda: len(hub._beats) == 20, "beats queued")
        await asleep(clock)
        statements.take()
        clock.advance(WINDOW)
        await until(writing.is_set, "the batch being written")
        late = asyncio.ensure_future(hub.beat(_beat(99)))
        await until(lambda: len(hub._beats) == 1, "the late beat queued")
        assert not any(b.done() for b in [*beats, late])
        assert db.list_appmasters() == []
        release.set()
        await asyncio.gather(*beats)
        assert statements.take().count("INSERT") == 1
        assert {a.service for a in db.list_appmasters()} == {f"svc{n}" for n in range(20)}
        assert not late.done()
        assert store.calls["heartbeat_appmasters"] == 1
        await asleep(clock)
        clock.advance(WINDOW)
        await late
        assert store.calls["heartbeat_appmasters"] == 2
        assert "svc99" in {a.service for a in db.list_appmasters()}

    asyncio.run(scenario())


def test_a_failed_heartbeat_write_fails_every_waiting_call_and_the_next_batch_is_written(
    db: Store,
) -> None:
    store = Wrapped(db)
    failures = [StoreUnavailable("db down (test)")]

    def flaky(beats: list[AppMasterBeat]) -> None:
        if failures:
            raise failures.pop()
        db.heartbeat_appmasters(beats)

    store.replace("heartbeat_appmasters", flaky)

    async def scenario() -> None:
        clock = FakeClock()
        hub = _hub(store, clock)
        beats = [asyncio.ensure_future(hub.beat(_beat(n))) for n in range(5)]
        await until(lambda: len(hub._beats) == 5, "beats queued")
        await asleep(clock)
        clock.advance(WINDOW)
        results = await asyncio.gather(*beats, return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert db.list_appmasters() == []
        again = asyncio.ensure_future(hub.beat(_beat(0, epoch=4)))
        await until(lambda: len(hub._beats) == 1, "beat queued")
        await asleep(clock)
        clock.advance(WINDOW)
        await again
        [am] = db.list_appmasters()
        assert am.epoch_seen == 4

    asyncio.run(scenario())


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        super().__init__(f"{code.name}: {details}")


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)


def test_the_heartbeat_rpc_answers_unavailable_when_its_batch_was_not_written(
    db: Store,
) -> None:
    """As when each call wrote its own row: the store's failure is UNAVAILABLE."""
    store = Wrapped(db)

    def down(_beats: list[AppMasterBeat]) -> NoReturn:
        raise StoreUnavailable("db down (test)")

    store.replace("heartbeat_appmasters", down)
    server = KeeperServer(store, "k-test", "127.0.0.1:1", KeeperSettings())  # type: ignore[arg-type]
    request = keeper_pb2.HeartbeatRequest(cluster="a", service="echo", actor_name="x")

    async def scenario() -> None:
        with pytest.raises(Aborted) as aborted:
            await server.Heartbeat(request, FakeContext())  # type: ignore[arg-type]
        assert aborted.value.code == grpc.StatusCode.UNAVAILABLE
        store.replace("heartbeat_appmasters", db.heartbeat_appmasters)
        await server.Heartbeat(request, FakeContext())  # type: ignore[arg-type]
        assert [a.service for a in db.list_appmasters()] == ["echo"]

    asyncio.run(scenario())


# --- over gRPC ------------------------------------------------------------------------------


def test_open_streams_share_the_keepers_reads(db: Store) -> None:
    """Five AppMaster links open on one Keeper: every stream gets its beats and its
    instruction, while the Keeper reads for all of them at once (the reads are fewer
    than the messages; before, every message was a read of its own)."""
    store = Wrapped(db)
    db.add_instruction("a", "svc3", "op-1", 1, {"n": 1})
    metadata = [("authorization", f"Bearer {TOKEN}")]
    with running_keeper(store) as keeper, grpc.insecure_channel(keeper.address) as channel:  # type: ignore[arg-type]
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        streams = [
            stub.Instructions(
                keeper_pb2.InstructionsRequest(cluster="a", service=f"svc{n}"),
                metadata=metadata,
                timeout=30,
            )
            for n in range(5)
        ]
        got = [[next(s) for _ in range(4)] for s in streams]
        for s in streams:
            s.cancel()
    assert [m.op_id for m in got[3] if m.id] == ["op-1"]
    assert all(m.id == 0 for n, msgs in enumerate(got) if n != 3 for m in msgs)
    messages = sum(len(m) for m in got)
    assert store.calls.get("list_instructions", 0) == 0
    assert store.calls["read_instructions"] < messages / 2
    assert store.calls["heartbeat_appmasters"] <= 5  # the links' opening heartbeats
    assert {a.service for a in db.list_appmasters()} == {f"svc{n}" for n in range(5)}


def test_batched_reads_and_writes_of_any_size_leave_the_statement_cache_alone(db: Store) -> None:
    """A batch's statement has a shape per size (a bind parameter per target or row);
    cached, each size was one more entry of the engine's compiled cache (2.2 GB for
    500 sizes of the instructions read, measured). They are compiled uncached."""
    cache = db._engine._compiled_cache
    assert cache is not None
    db.list_instructions_for({("a", "svc0"): 0})
    db.heartbeat_appmasters([_beat(0)])
    before = len(cache)
    for n in range(2, 40):
        db.list_instructions_for({("a", f"svc{k}"): 0 for k in range(n)})
        db.heartbeat_appmasters([_beat(k) for k in range(n)])
        db.read_instructions(0, {("a", f"svc{k}"): 0 for k in range(n)})
    assert len(cache) - before <= 2  # the fixed-shape statements of read_instructions

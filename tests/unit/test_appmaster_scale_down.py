"""Nothing the spec no longer asks for keeps running: a dropped proxy leaves discovery,
drains, is killed and forgotten; an unneeded worker is stopped and forgotten even when
the AppMaster died half-way. The planner alone (pure), then the AppMaster on the fake
runtime with AppMaster restarts at every step, then a Hypothesis state machine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ha_serving._settings import AppMasterSettings
from ha_serving._spec import Revision
from ha_serving.appmaster import AppMasterCore, IllegalTransition, JobState, plan
from ha_serving.appmaster._planner import (
    Observed,
    ProxyView,
    StartProxy,
    StopProxy,
    StopWorker,
    WithdrawProxy,
    converged,
)
from ha_serving.appmaster._state import Proxy, ProxyPhase
from ha_serving.store import Store
from ha_serving.testing import FakeProxy, FakeRuntime
from ha_serving.util.clock import FakeClock
from tests.unit.fixtures.control import Harness, fake_core, run, spec

WITHDRAW_S = AppMasterSettings().withdraw_s
"""The harness's cores run with the default AppMaster settings."""

NOW = 1_000_000.0
P0, P1 = "echo-p0", "echo-p1"


class Crash(Exception):
    """The AppMaster dies here (the round is abandoned; a new AppMaster takes over)."""


# --- the planner, pure ----------------------------------------------------------------


def _state(proxies: int, *records: Proxy) -> JobState:
    return JobState(
        service="echo",
        cluster="a",
        spec=spec(instances=0, proxies=proxies),
        desired=Revision(version="v1", package="p", import_path="echo:Echo"),
        proxies={p.name: p for p in records},
    )


def _serving(name: str, port: int) -> Proxy:
    return Proxy(name=name, address=f"10.0.0.1:{port}", phase=ProxyPhase.SERVING)


def _seen(*names_ports: tuple[str, int]) -> Observed:
    return Observed(proxies={n: ProxyView(0, f"10.0.0.1:{p}") for n, p in names_ports})


def _for(actions: list[Any], name: str) -> list[Any]:
    return [a for a in actions if getattr(a, "name", None) == name]


def test_plan_withdraws_a_proxy_the_spec_dropped_and_keeps_the_other() -> None:
    """proxies 2 -> 1: p1 is withdrawn (at its recorded address) and not yet stopped;
    p0 is left alone."""
    state = _state(1, _serving(P0, 1), _serving(P1, 2))
    actions = plan(state, _seen((P0, 1), (P1, 2)), NOW)
    assert _for(actions, P1) == [WithdrawProxy(P1, ("10.0.0.1:2",))]
    assert _for(actions, P0) == []
    assert not converged(state)


def test_plan_withdraws_both_addresses_of_a_proxy_ray_restarted_elsewhere() -> None:
    state = _state(1, _serving(P0, 1), _serving(P1, 2))
    actions = plan(state, _seen((P0, 1), (P1, 3)), NOW)
    assert _for(actions, P1) == [WithdrawProxy(P1, ("10.0.0.1:2", "10.0.0.1:3"))]


def test_plan_stops_a_withdrawn_proxy_only_once_stop_at_passed() -> None:
    withdrawn = _serving(P1, 2).to(ProxyPhase.WITHDRAWN, stop_at=NOW + 5)
    state = _state(1, _serving(P0, 1), withdrawn)
    seen = _seen((P0, 1), (P1, 2))
    assert _for(plan(state, seen, NOW + 4.9), P1) == []
    assert _for(plan(state, seen, NOW + 5), P1) == [StopProxy(P1)]
    # dead already: still stopped (kill is a no-op) so its record goes
    assert _for(plan(state, _seen((P0, 1)), NOW + 5), P1) == [StopProxy(P1)]


def test_plan_stops_at_once_a_dropped_proxy_that_never_served() -> None:
    """A proxy recorded starting was never published: nothing to withdraw."""
    state = _state(1, _serving(P0, 1), Proxy(name=P1, phase=ProxyPhase.STARTING))
    assert _for(plan(state, _seen((P0, 1), (P1, 2)), NOW), P1) == [StopProxy(P1)]


def test_plan_finishes_a_stopping_proxy_even_if_it_is_wanted_again() -> None:
    """A stop cannot be taken back: it completes, and the proxy is started anew after."""
    stopping = _serving(P1, 2).to(ProxyPhase.WITHDRAWN).to(ProxyPhase.STOPPING)
    state = _state(2, _serving(P0, 1), stopping)
    assert _for(plan(state, _seen((P0, 1), (P1, 2)), NOW), P1) == [StopProxy(P1)]
    gone = state.without_proxy(P1)
    assert _for(plan(gone, _seen((P0, 1)), NOW), P1) == [StartProxy(P1)]


def test_plan_serves_again_a_withdrawn_proxy_that_is_wanted_again() -> None:
    withdrawn = _serving(P1, 2).to(ProxyPhase.WITHDRAWN, stop_at=NOW + 5)
    state = _state(2, _serving(P0, 1), withdrawn)
    assert _for(plan(state, _seen((P0, 1), (P1, 2)), NOW), P1) == [StartProxy(P1)]


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (ProxyPhase.SERVING, ProxyPhase.STOPPING),  # never stopped while published
        (ProxyPhase.STARTING, ProxyPhase.WITHDRAWN),
        (ProxyPhase.STOPPING, ProxyPhase.SERVING),
        (ProxyPhase.STOPPING, ProxyPhase.STOPPING),
    ],
)
def test_an_illegal_proxy_transition_raises(src: ProxyPhase, dst: ProxyPhase) -> None:
    with pytest.raises(IllegalTransition, match=f"proxy {P1}: illegal transition"):
        Proxy(name=P1, phase=src).to(dst)


def test_the_proxies_share_of_max_concurrency_is_resent_when_their_number_changes() -> None:
    """Only serving proxies share an instance's cap; a change of their number is a new
    routing table (each proxy enforces the share it was sent)."""
    state = _state(2, _serving(P0, 1))
    assert state.concurrency_per_proxy() == 32
    two = state.with_proxy(_serving(P1, 2))
    assert (two.concurrency_per_proxy(), two.routes_version) == (16, state.routes_version + 1)
    withdrawn = two.with_proxy(two.proxies[P1].to(ProxyPhase.WITHDRAWN))
    assert withdrawn.concurrency_per_proxy() == 32
    assert withdrawn.routes_version == two.routes_version + 1
    gone = withdrawn.without_proxy(P1)
    assert gone.routes_version == withdrawn.routes_version  # no serving proxy left


def test_a_proxy_saved_before_phases_existed_reads_as_serving_and_is_retired() -> None:
    """Records of older AppMasters have no phase: they were serving. So a proxy an older
    AppMaster left running after a scale-down is withdrawn by the new one."""
    record = _state(1, _serving(P0, 1), _serving(P1, 2)).to_record()
    for proxy in record["proxies"].values():
        del proxy["phase"], proxy["stop_at"]
    state = JobState.from_record(record)
    assert {p.phase for p in state.proxies.values()} == {ProxyPhase.SERVING}
    assert _for(plan(state, _seen((P0, 1), (P1, 2)), NOW), P1) == [
        WithdrawProxy(P1, ("10.0.0.1:2",))
    ]


def test_plan_stops_a_dead_worker_no_instance_needs() -> None:
    """Forgotten, not left in the state: a dead worker recorded with stale resources would
    keep ``converged`` false forever."""
    state = _state(2).model_copy(update={"workers": {"echo-w9": "old resources"}})
    actions = plan(state, Observed(workers={"echo-w9": None}), NOW)
    assert StopWorker("echo-w9") in actions


# --- the AppMaster on the fake runtime ------------------------------------------------


class Events:
    """What happened to proxies and their endpoints, in (fake) time order."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.log: list[tuple[str, str, float]] = []
        self.removed_at: dict[str, float] = {}
        self.ever_listed: set[str] = set()
        store = h.store
        remove_one, remove_all = store.remove_endpoint, store.remove_endpoints
        upsert = store.upsert_endpoint

        def removing(call: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                before = self.listed()
                result = call(*args, **kwargs)
                for address in before - self.listed():
                    self.removed_at[address] = h.clock.now()
                    self.log.append(("withdrawn", address, h.clock.now()))
                return result

            return wrapped

        def upserting(service: str, cluster: str, address: str, *a: Any, **kw: Any) -> None:
            upsert(service, cluster, address, *a, **kw)
            self.removed_at.pop(address, None)
            self.ever_listed.add(address)

        store.remove_endpoint = removing(remove_one)  # type: ignore[method-assign]
        store.remove_endpoints = removing(remove_all)  # type: ignore[method-assign]
        store.upsert_endpoint = upserting  # type: ignore[method-assign]

    def listed(self) -> set[str]:
        return {e.address for e in self.h.store.list_endpoints("echo")}

    def on_stop(self, proxy: FakeProxy, address: str) -> None:
        """Checked as each proxy is stopped: out of discovery, for WITHDRAW_S already."""
        assert address not in self.listed(), f"{address} stopped while still listed"
        if address in self.ever_listed:
            assert self.h.clock.now() - self.removed_at[address] >= WITHDRAW_S
        self.log.append(("stopped", address, self.h.clock.now()))
        assert not proxy.stopped


class TrackedProxy(FakeProxy):
    """A FakeProxy whose stop is checked against discovery (``Events.on_stop``)."""

    events: ClassVar[Events | None] = None
    every: ClassVar[list[TrackedProxy]] = []

    def __init__(self, service: str, **kw: Any) -> None:
        super().__init__(service, **kw)
        TrackedProxy.every.append(self)

    @property
    def address(self) -> str:
        return f"127.0.9.1:{self._port}"

    async def stop(self, grace_s: float | None = None) -> None:
        if TrackedProxy.events is not None:
            TrackedProxy.events.on_stop(self, self.address)
        await super().stop(grace_s)


class ProxyHarness(Harness):
    def new_core(self) -> AppMasterCore:
        return fake_core(self.store, runtime=self.runtime, clock=self.clock, proxy=TrackedProxy)

    def live_proxies(self) -> dict[str, TrackedProxy]:
        return {n: a for n, a in self.runtime.actors.items() if isinstance(a, TrackedProxy)}

    def persisted(self) -> JobState:
        found = self.store.load_appmaster_state("a", "echo")
        assert found is not None
        return JobState.from_record(found[0])

    def check_discovery(self) -> None:
        """Discovery never sends a client to a proxy that was stopped."""
        by_address = {p.address: p for p in TrackedProxy.every}
        for e in self.store.list_endpoints("echo"):
            assert not by_address[e.address].stopped, f"discovery lists stopped {e.address}"


@pytest.fixture
def ph(store: Store) -> Iterator[ProxyHarness]:
    TrackedProxy.every = []
    harness = ProxyHarness(store, FakeRuntime(), FakeClock())
    TrackedProxy.events = Events(harness)
    try:
        yield harness
    finally:
        TrackedProxy.events = None


async def _converge(h: ProxyHarness, max_rounds: int = 100) -> None:
    """Rounds one fake second apart until converged, discovery checked after each."""
    for _ in range(max_rounds):
        busy = await h.core.round()
        h.check_discovery()
        if not busy and h.core.converged():
            return
        h.clock.advance(1.0)
    raise AssertionError(f"not converged: {h.core.describe()}")


async def _rounds(h: ProxyHarness, n: int) -> None:
    for _ in range(n):
        await h.core.round()
        h.check_discovery()
        h.clock.advance(1.0)


def _assert_only_p0_left(h: ProxyHarness, p0: TrackedProxy, p1: TrackedProxy) -> None:
    assert h.live_proxies() == {P0: p0}
    assert not p0.stopped
    assert p1.stopped
    assert h.runtime.killed.count(P1) == 1
    assert P0 not in h.runtime.killed
    assert {e.address for e in h.store.list_endpoints("echo")} == {p0.address}
    for state in (h.persisted(), h.core.state):
        assert state is not None
        assert list(state.proxies) == [P0]
        assert state.proxies[P0].phase == ProxyPhase.SERVING
    assert [p["name"] for p in h.core.describe()["proxies"]] == [P0]
    # p0 now takes all the traffic: it enforces the instance's whole cap
    assert {e.max_concurrency for e in p0.table.entries} == {32}


def test_scale_down_from_two_proxies_to_one_stops_exactly_the_extra_one(
    ph: ProxyHarness,
) -> None:
    """p1 leaves discovery first, keeps serving (and getting tables) for WITHDRAW_S, is
    stopped with the drain timeout as grace, killed, and forgotten in the DB; p0 is
    untouched and discovery never lists a stopped proxy."""

    async def scenario() -> None:
        await ph.deploy(spec(instances=2), "echo_v1", "op-1")
        await _converge(ph)
        p0, p1 = ph.live_proxies()[P0], ph.live_proxies()[P1]
        created = list(ph.runtime.created)
        await ph.deploy(spec(instances=2, proxies=1), "echo_v1", "op-2")
        await ph.core.round()
        # withdrawn, still running and routing, not yet stopped
        state = ph.persisted()
        assert state.proxies[P1].phase == ProxyPhase.WITHDRAWN
        assert {e.address for e in ph.store.list_endpoints("echo")} == {p0.address}
        assert not p1.stopped
        assert P1 in ph.live_proxies()
        assert not ph.core.converged()
        await _converge(ph)
        _assert_only_p0_left(ph, p0, p1)
        assert p1.stopped_with == spec().rollout.drain_timeout_s
        assert ph.runtime.created == created  # nothing restarted
        events = TrackedProxy.events
        assert events is not None
        (withdrawn,) = [t for e, a, t in events.log if e == "withdrawn" and a == p1.address]
        (stopped,) = [t for e, a, t in events.log if e == "stopped"]
        assert stopped - withdrawn >= WITHDRAW_S
        # p1 held the newest table until it stopped (a withdrawn proxy still routes)
        assert p1.table.version >= state.routes_version
        assert len(await ph.call_all()) == 2

    run(scenario())


def _crash_once(h: ProxyHarness, point: str, p1: TrackedProxy) -> None:
    """Make the AppMaster die at ``point`` of p1's retirement (once)."""
    if point == "withdrawing":  # endpoint removed, the withdrawal not recorded yet
        remove = h.store.remove_endpoint

        def remove_then_die(service: str, cluster: str, address: str) -> bool:
            h.store.remove_endpoint = remove  # type: ignore[method-assign]
            remove(service, cluster, address)
            raise Crash(point)

        h.store.remove_endpoint = remove_then_die  # type: ignore[method-assign]
    elif point == "stopping":  # recorded stopping, the stop call never returns

        async def die(grace_s: float | None = None) -> None:
            del p1.stop  # the next AppMaster's call reaches the real stop
            raise Crash(point)

        p1.stop = die  # type: ignore[method-assign]
    elif point == "killed":  # the actor is dead, its record not deleted yet
        kill = h.runtime.kill

        async def kill_then_die(name: str, *, restart: bool = False) -> None:
            await kill(name, restart=restart)
            if name == P1:
                h.runtime.kill = kill  # type: ignore[method-assign]
                raise Crash(point)

        h.runtime.kill = kill_then_die  # type: ignore[method-assign]


@pytest.mark.parametrize("point", ["withdrawing", "withdrawn", "stopping", "killed"])
def test_an_appmaster_restart_during_the_scale_down_leaves_no_proxy_running(
    ph: ProxyHarness, point: str
) -> None:
    """Wherever the AppMaster dies while retiring p1, the next one (from the DB) finishes
    the job: p1 not running, not in discovery, not in the state; p0 never touched; and
    p1 still leaves discovery WITHDRAW_S before it is stopped."""

    async def scenario() -> None:
        await ph.deploy(spec(instances=2), "echo_v1", "op-1")
        await _converge(ph)
        p0, p1 = ph.live_proxies()[P0], ph.live_proxies()[P1]
        await ph.deploy(spec(instances=2, proxies=1), "echo_v1", "op-2")
        _crash_once(ph, point, p1)
        if point == "withdrawn":  # dies while waiting for clients to leave p1
            await ph.core.round()
            assert ph.persisted().proxies[P1].phase == ProxyPhase.WITHDRAWN
        else:
            with pytest.raises(Crash):
                await _rounds(ph, 20)
        ph.core = ph.new_core()  # SIGKILLed; Ray starts a new one, which reads the DB
        assert await ph.core.load() is not None
        await _converge(ph)
        _assert_only_p0_left(ph, p0, p1)

    run(scenario())


def test_a_withdrawn_proxy_wanted_again_is_published_again_not_restarted(
    ph: ProxyHarness,
) -> None:
    async def scenario() -> None:
        await ph.deploy(spec(instances=2), "echo_v1", "op-1")
        await _converge(ph)
        p1 = ph.live_proxies()[P1]
        await ph.deploy(spec(instances=2, proxies=1), "echo_v1", "op-2")
        await ph.core.round()
        assert p1.address not in {e.address for e in ph.store.list_endpoints("echo")}
        await ph.deploy(spec(instances=2), "echo_v1", "op-3")
        await _converge(ph)
        assert ph.live_proxies()[P1] is p1
        assert not p1.stopped
        assert p1.address in {e.address for e in ph.store.list_endpoints("echo")}
        assert ph.persisted().proxies[P1].phase == ProxyPhase.SERVING

    run(scenario())


def test_a_max_concurrency_change_reaches_the_proxies(ph: ProxyHarness) -> None:
    """It changes no revision, so no instance moves, but each proxy's share is resent."""

    async def scenario() -> None:
        await ph.deploy(spec(instances=2), "echo_v1", "op-1")
        await _converge(ph)
        await ph.deploy(spec(instances=2, max_concurrency=10), "echo_v1", "op-2")
        await _converge(ph)
        for proxy in ph.live_proxies().values():
            assert {e.max_concurrency for e in proxy.table.entries} == {5}

    run(scenario())


def test_a_worker_killed_by_an_appmaster_that_died_is_forgotten(ph: ProxyHarness) -> None:
    """Scale-down stops the emptied worker (shutdown, then kill); if the AppMaster dies
    between the kill and forgetting it, the next one forgets it, and a later resource
    change still converges (a dead worker with old resources would block it)."""

    async def scenario() -> None:
        await ph.deploy(spec(), "echo_v1", "op-1")
        await _converge(ph)
        await ph.deploy(spec(instances=4), "echo_v1", "op-2", kind="scale")
        kill = ph.runtime.kill

        async def kill_then_die(name: str, *, restart: bool = False) -> None:
            await kill(name, restart=restart)
            if name == "echo-w2":
                raise Crash(name)

        ph.runtime.kill = kill_then_die  # type: ignore[method-assign]
        with pytest.raises(Crash):
            await _rounds(ph, 20)
        ph.runtime.kill = kill  # type: ignore[method-assign]
        assert ("echo-w2", "shutdown") in ph.runtime.calls
        assert "echo-w2" in ph.persisted().workers
        ph.core = ph.new_core()
        await ph.core.load()
        await _converge(ph)
        assert "echo-w2" not in ph.persisted().workers
        await ph.deploy(spec(instances=4, resources={"num_cpus": 0.5}), "echo_v1", "op-3")
        await _converge(ph)
        assert sorted(ph.persisted().workers) == ["echo-w0-r1", "echo-w1-r1"]

    run(scenario())


# --- a state machine: any proxy count, AppMaster restarts, proxy crashes, time ----------


class ProxyFleet(RuleBasedStateMachine):
    """Proxy counts change at random while rounds run, time passes, AppMasters restart
    and proxies crash (restarted by Ray at a new address, or gone). At every step no
    client is sent to a stopped proxy, and none is stopped sooner than WITHDRAW_S after
    it left discovery; once settled, exactly the wanted proxies run, are recorded and
    are listed."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        store = Store.connect(f"sqlite:///{Path(self.dir.name) / 'state.db'}")
        TrackedProxy.every = []
        self.h = ProxyHarness(store, FakeRuntime(), FakeClock())
        TrackedProxy.events = Events(self.h)
        self.loop = asyncio.new_event_loop()
        self.package = self.h.package("echo_v1")
        self.ops = 0
        self.wanted = 2
        self._apply(2)

    def _apply(self, proxies: int) -> None:
        self.ops += 1
        self.wanted = proxies
        s = spec(instances=0, proxies=proxies)
        self.loop.run_until_complete(self.h.core.apply(s, self.package, op_id=f"op-{self.ops}"))

    @rule(proxies=st.integers(min_value=1, max_value=3))
    def redeploy(self, proxies: int) -> None:
        self._apply(proxies)

    @rule()
    def round(self) -> None:
        self.loop.run_until_complete(self.h.core.round())

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, WITHDRAW_S]))
    def time_passes(self, seconds: float) -> None:
        self.h.clock.advance(seconds)

    @rule()
    def appmaster_restarts(self) -> None:
        self.h.core = self.h.new_core()
        self.loop.run_until_complete(self.h.core.load())

    @rule(index=st.integers(min_value=0, max_value=2), restart=st.booleans())
    def proxy_crashes(self, index: int, restart: bool) -> None:
        name = f"echo-p{index}"
        if name in self.h.runtime.actors:
            self.h.runtime.crash(name, restart=restart)

    @rule()
    def settle(self) -> None:
        self.loop.run_until_complete(_converge(self.h))
        wanted = {f"echo-p{k}" for k in range(self.wanted)}
        live = self.h.live_proxies()
        assert set(live) == wanted
        assert not any(p.stopped for p in live.values())
        state = self.h.persisted()
        assert set(state.proxies) == wanted
        assert {p.address for p in state.proxies.values()} == {p.address for p in live.values()}
        assert {e.address for e in self.h.store.list_endpoints("echo")} == {
            p.address for p in live.values()
        }

    @invariant()
    def discovery_never_lists_a_stopped_proxy(self) -> None:
        self.h.check_discovery()

    def teardown(self) -> None:
        TrackedProxy.events = None
        self.loop.close()
        self.h.store.close()
        self.dir.cleanup()


ProxyFleet.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_proxy_fleet = ProxyFleet.TestCase

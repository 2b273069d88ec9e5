"""The Keeper's capacity floors end to end in fake time: the leader reads each cluster's
own demand from its AppMaster's state, floors the survivors' counts when a cluster is
lost or cannot grow (``keeper/_capacity.py:floors``), writes them fenced where they
changed, and an AppMaster's autoscaler takes its floor as the last word of ``decide``
without counting it as its own demand (which would ratchet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ha_serving._errors import LeaseLost
from ha_serving._jobstate import JobState, Phase
from ha_serving._settings import KeeperSettings
from ha_serving._spec import Revision
from ha_serving.appmaster._autoscale import Reading, ScalerMemory, decide
from ha_serving.keeper._reconciler import Reconciler
from ha_serving.store import KEEPER_LEADER, ClusterRecord, Store
from ha_serving.util.clock import FakeClock
from tests.unit.fixtures.control import Harness, deploy_echo, leader, run, spec
from tests.unit.jobstates import job_state, rollout
from tests.unit.test_appmaster_autoscale import load, until

AUTO = {"min_instances": 1, "max_instances": 8, "target_inflight": 4}
REV = Revision(version="v1", package="p", import_path="echo:Echo")


# --- decide: the floor is applied last and not remembered -----------------------------


def test_a_floor_raises_the_count_and_is_not_the_clusters_own_demand() -> None:
    policy = spec(autoscaling=AUTO).autoscaling
    assert policy is not None
    memory = ScalerMemory()
    for t in range(60):  # a minute of 8 calls in flight: 2 instances at 4 each
        memory, d = decide(policy, memory, Reading(float(t), 8.0), 2)
    assert (d.desired, d.own) == (2, 2)
    memory, d = decide(policy, memory, Reading(60.0, 8.0), 2, floor=5, floor_why="b lost")
    assert (d.current, d.desired, d.own, d.demand, d.mode) == (2, 5, 2, 2, "keeper")
    assert "the Keeper's floor 5 (b lost" in d.reason
    memory, d = decide(policy, memory, Reading(61.0, 8.0), 5, floor=20)
    assert d.desired == 8  # within max_instances
    memory, d = decide(policy, memory, Reading(62.0, 8.0), 8, floor=5)
    assert (d.desired, d.own) == (5, 2)  # the floor holds 5; own is still the figures' 2
    memory, d = decide(policy, memory, Reading(63.0, 8.0), 5)  # lifted
    assert (d.desired, d.mode) == (3, "stable")  # at most halving: ceil(5 / 2)


# --- the AppMaster: reads its floor, keeps its own demand apart ----------------------


def test_the_appmaster_takes_the_keepers_floor_and_saves_its_own_demand(h: Harness) -> None:
    """A service on clusters a and b, 8 calls in flight on a (2 instances at 4 each).
    The Keeper floors a at 6 (b lost): a goes to 6 with the floor's reason, and its state
    still says its own demand is 2; the floor lifted, a goes back down once its figures
    have asked for less over the scale-down delay."""

    async def scenario() -> None:
        placed = {"clusters": [{"name": "a"}, {"name": "b"}]}
        auto = {**AUTO, "scale_down_delay_s": 30}
        await h.deploy(spec(instances=2, autoscaling=auto, placement=placed), "echo_v1", "op-1")
        await h.converge()
        load(h, {"echo-0": 4, "echo-1": 4})
        await until(h, lambda s: s.autoscale_demand == 2, 70)
        h.store.set_capacity_floor(
            "echo", "a", 6, "2 own + 4 of 4 unmet: b lost (4 unmet)",
            epoch=h.EPOCH, fence=KEEPER_LEADER,
        )  # fmt: skip
        await until(h, lambda s: s.autoscaled == 6, 10)
        state = h.core.state
        assert state is not None
        assert state.autoscale is not None
        assert (state.autoscale.mode, state.autoscale_demand) == ("keeper", 2)
        described = h.core.describe()["autoscale"]
        assert (described["own_demand"], described["keeper_floor"]) == (2, 6)
        assert "b lost" in state.autoscale.reason
        await h.converge()
        for _ in range(10):  # held at the floor's count, its own demand 2 all along
            await until(h, lambda s: s.autoscale_demand == 2 and s.autoscaled == 6, 1)
        h.store.set_capacity_floor("echo", "a", 0, "", epoch=h.EPOCH, fence=KEEPER_LEADER)
        await until(h, lambda s: s.autoscaled is not None and s.autoscaled < 6, 90)

    run(scenario())


def test_a_service_on_one_cluster_never_reads_a_floor(h: Harness) -> None:
    async def scenario() -> None:
        await h.deploy(spec(instances=2, autoscaling=AUTO), "echo_v1", "op-1")
        await h.converge()
        h.store.set_capacity_floor("echo", "a", 7, "stale", epoch=h.EPOCH, fence=KEEPER_LEADER)
        load(h, {"echo-0": 4, "echo-1": 4})
        await until(h, lambda s: s.autoscale_demand == 2, 70)
        assert h.core.state is not None
        assert h.core.state.autoscaled in (None, 2)

    run(scenario())


# --- the leader: spreads what no cluster serves --------------------------------------


def _store(folder: Path, clock: FakeClock) -> Store:
    store = Store.connect(f"sqlite:///{folder / 'state.db'}", clock=clock)
    for name in ("a", "b", "c"):  # GCS addresses nothing answers on
        store.register_cluster(ClusterRecord(name, "127.0.1.250:1", None, "z1"))
    return store


def _save(store: Store, cluster: str, state: JobState) -> None:
    state = state.model_copy(update={"cluster": cluster})
    found = store.load_appmaster_state(cluster, "echo")
    store.save_appmaster_state(
        cluster, "echo", state.to_record(), expected_version=None if found is None else found[1]
    )


def _floors(store: Store) -> dict[str, int]:
    return {f.cluster: f.floor for f in store.list_capacity_floors("echo")}


def _pass(reconciler: Reconciler, clock: FakeClock) -> None:
    clock.advance(reconciler.settings.capacity_period_s)
    reconciler._spread_capacity(reconciler.leadership.require())


def test_the_leader_floors_the_survivors_when_a_cluster_is_lost(tmp_path: Path) -> None:
    """echo on a, b, c (weights 100 each): a asks 2, b 4, c 3. b's GCS does not answer
        and its AppMaster is silent: lost. Its 4 go to a and c (2 each); the floors are
        written once, as events too (in the order of the clusters); when b is back, they are
    lifted (0)."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    reconciler = leader(store, _NoJobs(), clock)
    deploy_echo(store, ("a", "b", "c"), autoscaling=AUTO)
    s = spec(instances=1, autoscaling=AUTO)
    for cluster, own in (("a", 2), ("b", 4), ("c", 3)):
        _save(store, cluster, job_state(s, REV, autoscaled=own, autoscale_demand=own))
    _pass(reconciler, clock)
    assert _floors(store) == {}  # nothing unmet: no floor written
    for cluster in ("a", "c"):
        store.heartbeat_appmaster(cluster, "echo", "echo-appmaster", 1)
    reconciler._watch_clusters()
    assert reconciler.lost == {"a", "b", "c"} - {"a", "c"}
    _pass(reconciler, clock)
    assert _floors(store) == {"a": 4, "c": 5}  # b had none: no row of 0 written for it
    events = [e for e in store.list_events(service="echo", limit=50) if e.kind == "capacity_floor"]
    assert [(e.cluster, (e.detail or {})["floor"]) for e in events] == [("a", 4), ("c", 5)]
    _pass(reconciler, clock)  # nothing changed: nothing written again
    assert len([e for e in store.list_events(limit=50) if e.kind == "capacity_floor"]) == 2
    # b's clients arrive at a: a's own figures ask 2 more, so only 2 are still unmet
    _save(store, "a", job_state(s, REV, autoscaled=4, autoscale_demand=4))
    _pass(reconciler, clock)
    assert _floors(store) == {"a": 4 + 1, "c": 3 + 1}
    floor = store.capacity_floor("echo", "a")
    assert floor is not None
    assert floor.reason == (
        "4 own + 1 of 2 unmet: b lost (4 unmet), 2 absorbed by the others' own demand"
    )
    _save(store, "c", job_state(s, REV, autoscaled=5, autoscale_demand=5))
    _pass(reconciler, clock)  # all of b's demand shows at a and c now: no floor needed
    assert _floors(store) == {"a": 0, "c": 0}
    reconciler.lost.clear()  # b answers again
    _pass(reconciler, clock)
    assert _floors(store) == {"a": 0, "c": 0}
    assert reconciler._unmet_base == {}


def _on_a_and_b(tmp_path: Path) -> tuple[FakeClock, Store, Reconciler, KeeperSettings]:
    """echo autoscaled on a and b; a leader that judges a cluster stuck after 20 s."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    settings = KeeperSettings(capacity_stuck_s=20.0, capacity_period_s=2.0)
    reconciler = leader(store, _NoJobs(), clock, settings=settings)
    deploy_echo(store, ("a", "b"), autoscaling=AUTO)
    return clock, store, reconciler, settings


def test_a_cluster_short_for_longer_than_capacity_stuck_s_cannot_grow(tmp_path: Path) -> None:
    """a decided 6 but serves 3 (its nodes are full): after ``capacity_stuck_s`` its 3
    missing go to b, whose own demand is 2; once a serves its 6, b's floor is lifted."""
    clock, store, reconciler, settings = _on_a_and_b(tmp_path)
    s = spec(instances=1, autoscaling=AUTO)
    short = job_state(s, REV, count=3, autoscaled=6, autoscale_demand=6)
    _save(store, "a", short)
    _save(store, "b", job_state(s, REV, autoscaled=2, autoscale_demand=2))
    waited = 0.0
    while _floors(store).get("b", 0) == 0:
        _pass(reconciler, clock)
        waited += settings.capacity_period_s
        assert waited <= 40, "never judged stuck"
    assert 30 <= waited <= 34  # 3 x instance_start_s (10 s) is longer than 20 s
    assert _floors(store) == {"b": 5}
    _save(store, "a", job_state(s, REV, count=6, autoscaled=6, autoscale_demand=6))
    _pass(reconciler, clock)
    assert _floors(store) == {"b": 0}
    _save(store, "a", job_state(s, REV, count=6, phase=Phase.PENDING, autoscaled=6))
    _pass(reconciler, clock)  # short again: the wait starts afresh
    assert _floors(store) == {"b": 0}


def test_a_deposed_leader_writes_no_floor(tmp_path: Path) -> None:
    clock = FakeClock()
    store = _store(tmp_path, clock)
    reconciler = leader(store, _NoJobs(), clock)
    term = reconciler.leadership.require()
    deploy_echo(store, ("a", "b"), autoscaling=AUTO)
    s = spec(instances=1, autoscaling=AUTO)
    _save(store, "a", job_state(s, REV, autoscaled=2, autoscale_demand=2))
    _save(store, "b", job_state(s, REV, autoscaled=3, autoscale_demand=3))
    reconciler.lost.add("b")
    lease = store.get_lease(KEEPER_LEADER)
    assert lease is not None
    assert store.take_lease(KEEPER_LEADER, "k2", lease.holder, 1e6) is not None
    with pytest.raises(LeaseLost):
        reconciler._spread_capacity(term)
    assert _floors(store) == {}


class _NoJobs:
    def submit(self, _cluster: ClusterRecord, _service: str) -> str:
        raise AssertionError("no job is submitted in these tests")


def test_a_cluster_short_while_it_rolls_is_not_judged_stuck(tmp_path: Path) -> None:
    """Instances replaced by a rolling update serve fewer than decided for a while: that
    is not a cluster out of room, so no floor goes to the others however long it takes."""
    clock, store, reconciler, _ = _on_a_and_b(tmp_path)
    s = spec(instances=1, autoscaling=AUTO)
    rolling = job_state(
        s, REV, count=3, autoscaled=6, autoscale_demand=6, rollout=rollout("op-2", REV)
    )
    _save(store, "a", rolling)
    _save(store, "b", job_state(s, REV, autoscaled=2, autoscale_demand=2))
    for _ in range(30):  # 60 s
        _pass(reconciler, clock)
    assert _floors(store) == {}


def test_growth_before_the_loss_is_seen_counts_as_absorbed(tmp_path: Path) -> None:
    """b's clients move to a the moment b dies; the leader sees the loss ~2 s later. What
    a's own demand grew by since the last pass with nothing unmet is b's demand already
    absorbed: a asked 2 then, asks 4 when b is seen lost, so nothing is unmet."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    reconciler = leader(store, _NoJobs(), clock)
    deploy_echo(store, ("a", "b"), autoscaling=AUTO)
    s = spec(instances=1, autoscaling=AUTO)
    _save(store, "a", job_state(s, REV, autoscaled=2, autoscale_demand=2))
    _save(store, "b", job_state(s, REV, autoscaled=2, autoscale_demand=2))
    _pass(reconciler, clock)  # calm: a asks 2
    _save(store, "a", job_state(s, REV, autoscaled=4, autoscale_demand=4))
    reconciler.lost.add("b")
    _pass(reconciler, clock)
    assert _floors(store) == {}
    _save(store, "a", job_state(s, REV, autoscaled=3, autoscale_demand=3))
    _pass(reconciler, clock)  # a's figures lag behind: 1 of b's 2 is still unmet
    assert _floors(store) == {"a": 4}

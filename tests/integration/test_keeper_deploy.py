"""Multi-cluster serving through the Keepers, on a real 2-cluster stack with 3 Keepers:
deploy onto both clusters via Job Submission, discovery of every proxy, a rolling update
across clusters that survives the leader's death, and fencing of a stale leader."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import infra
from ha_serving._errors import CallError
from ha_serving._spec import load_spec, parse_spec
from ha_serving.appmaster._standby import Holder, lease_name
from ha_serving.backend import make_package
from ha_serving.client import discovered_client
from ha_serving.keeper import KeeperClient, KeeperError, KeeperRefused, keeper_status
from ha_serving.keeper._plan import Operation
from ha_serving.keeper._releases import cluster_body, instruction_op_id, make_plan
from ha_serving.store import EventRecord, OperationRecord, Store
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"


@pytest.fixture(scope="module")
def mstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Topology]:
    settings = stack_settings(tmp_path_factory.mktemp("mstack"))
    topo = infra.up(settings).topology
    try:
        yield topo
    finally:
        infra.down(settings.stack.run_dir)


@pytest.fixture(scope="module")
def keeper(mstack: infra.Topology) -> KeeperClient:
    return KeeperClient(
        [k.address for k in mstack.keepers], token=mstack.keeper_token(), tls=mstack.client_tls()
    )


def _spec_json(**changes: Any) -> str:
    spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
    spec.update(
        name="multi",
        instances=2,
        placement={"clusters": [{"name": "a"}, {"name": "b"}]},
        **changes,
    )
    return json.dumps(spec)


def _wait_op(keeper: KeeperClient, op_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for op in keeper.operations("multi"):
            if op["op_id"] == op_id and op["status"] in ("succeeded", "failed", "superseded"):
                return op
        time.sleep(0.25)
    raise TimeoutError(f"{op_id} not finished: {keeper.operations('multi')}")


def _leader(topo: infra.Topology) -> tuple[str, int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for k in topo.keepers:
            view = keeper_status(
                k.address, token=topo.keeper_token(), timeout_s=0.5, tls=topo.client_tls()
            )
            if view["alive"] and view["leader"]:
                return k.id, int(view["epoch"])
        time.sleep(0.05)
    raise TimeoutError("no Keeper leads")


def test_deploy_through_keepers_runs_on_both_clusters(
    mstack: infra.Topology, keeper: KeeperClient
) -> None:
    """One Deploy to any Keeper: serving jobs are submitted on a and b, and discovery
    returns both clusters' proxies; a client pinned to b calls b first."""
    package = make_package(ECHO / "code").data
    op_id = keeper.deploy(_spec_json(), package, kind="deploy")
    op = _wait_op(keeper, op_id)
    assert op["status"] == "succeeded", op
    addresses = [k.address for k in mstack.keepers]
    client, discovery = discovered_client(
        "multi", addresses, token=mstack.keeper_token(), cluster="b", tls=mstack.client_tls()
    )
    try:
        deadline = time.monotonic() + 30
        while len(discovery.endpoints) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted({e.cluster for e in discovery.endpoints}) == ["a", "b"]
        assert len(discovery.endpoints) == 4
        assert client.call("multi", "echo", "x") == {"echo": "x", "prefix": ">", "version": "1"}
    finally:
        discovery.stop()
        client.close()


def test_rolling_update_across_clusters_survives_the_leaders_death(
    mstack: infra.Topology, keeper: KeeperClient
) -> None:
    """A config update rolls cluster a then b; the leader is SIGKILLed while it runs: a
    new leader (higher epoch) finishes it, and every acknowledged operation succeeded."""
    old_leader, old_epoch = _leader(mstack)
    config = {"prefix": "rolled", "reconfigure_delay_s": 1.0}  # ~2 s per cluster
    op_id = keeper.deploy(_spec_json(config=config), b"", kind="config")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        op = next(o for o in keeper.operations("multi") if o["op_id"] == op_id)
        if op["status"] == "running":
            break
        time.sleep(0.05)
    infra.signal_keeper(mstack.run_dir, old_leader, signal.SIGKILL)
    op = _wait_op(keeper, op_id)
    assert op["status"] == "succeeded", op
    new_leader, new_epoch = _leader(mstack)
    assert new_leader != old_leader
    assert new_epoch > old_epoch
    assert op["epoch"] == new_epoch  # the successor made the last progress
    acknowledged = list(keeper.operations("multi"))
    assert [o["status"] for o in acknowledged] == ["succeeded"] * len(acknowledged)
    with Store.connect(mstack.db.ref()) as store:
        for cluster in ("a", "b"):
            found = store.load_appmaster_state(cluster, "multi")
            assert found is not None
            assert found[0]["desired"]["config"]["prefix"] == "rolled"
    infra.restart_keeper(mstack.run_dir, old_leader)


def test_a_stale_leaders_instruction_is_refused_by_the_appmaster(
    mstack: infra.Topology,
) -> None:
    """An instruction stamped with an epoch below the highest the AppMaster has seen
    (what a leader paused past its lease would send) is refused, and the state stays."""
    with Store.connect(mstack.db.ref()) as store:
        found = store.load_appmaster_state("a", "multi")
        assert found is not None
        before, _ = found
        stale = before["highest_epoch"] - 1
        body = {
            "spec": {**before["spec"], "config": {"prefix": "stale"}},
            "package": before["desired"]["package"],
            "kind": "config",
            "generation": 999,
        }
        store.add_instruction("a", "multi", "stale-op@a", stale, body)
        deadline = time.monotonic() + 30
        refused: list[Any] = []
        while not refused and time.monotonic() < deadline:
            refused = [e for e in store.list_events(service="multi") if e.kind == "refused"]
            time.sleep(0.1)
        assert refused, "the AppMaster never refused the stale instruction"
        assert refused[-1].op_id == "stale-op@a"
        after = store.load_appmaster_state("a", "multi")
        assert after is not None
        assert after[0]["desired"]["config"]["prefix"] == before["desired"]["config"]["prefix"]


def test_an_operation_that_cannot_be_carried_out_fails_and_the_next_flows(
    mstack: infra.Topology, keeper: KeeperClient
) -> None:
    """Issue 11: an operation that cannot be carried out (a "release" deploy, as an older
    Keeper recorded it; the control API refuses the kind now, and the leader cannot parse
    its plan) ends failed with a one-line reason instead of wedging the service, and the
    next operation of the service is carried out. Deploy validates op_ids and answers a
    repeated one with its operation. (The AppMaster's own rejection of an instruction it
    cannot carry out: tests/unit/test_appmaster.py and test_weighted.py.)"""
    _ensure_deployed(mstack, keeper)
    with pytest.raises(KeeperRefused) as refused:
        keeper.deploy(_spec_json(), b"", kind="release")
    assert refused.value.code == "INVALID_ARGUMENT"
    with pytest.raises(KeeperRefused) as too_long:
        keeper.deploy(_spec_json(), b"", kind="config", op_id="x" * 65)
    assert too_long.value.code == "INVALID_ARGUMENT"
    with Store.connect(mstack.db.ref()) as store:
        current = store.get_service("multi")
        spec = parse_spec(json.loads(_spec_json()))
        plan = make_plan(spec, current.spec["package"], 0, "deploy", ["a", "b"])
        old = {**plan.to_record(), "kind": "release"}  # as the older Keeper wrote it
        store.create_operation(
            OperationRecord(op_id="wedge-1", service="multi", kind="release", plan=old)
        )
    op = _wait_op(keeper, "wedge-1", timeout_s=60)
    assert op["status"] == "failed", op
    assert op["error"].startswith("the plan of wedge-1 does not parse: kind: "), op
    assert "\n" not in op["error"]
    body = _spec_json(config={"prefix": "after-reject"})
    op_id = keeper.deploy(body, b"", kind="config", op_id="after-reject-1")
    assert keeper.deploy(body, b"", kind="config", op_id="after-reject-1") == op_id
    assert [o["op_id"] for o in keeper.operations("multi")].count(op_id) == 1
    assert _wait_op(keeper, op_id)["status"] == "succeeded"


class ClusterLoad:
    """Client threads over every proxy of `multi` (no cluster preference), recording each
    request's outcome and, for successes, the cluster that answered."""

    def __init__(self, topo: infra.Topology, threads: int = 4) -> None:
        self.client, self.discovery = discovered_client(
            "multi",
            [k.address for k in topo.keepers],
            token=topo.keeper_token(),
            tls=topo.client_tls(),
        )
        self.stop = threading.Event()
        self.results: list[tuple[float, str]] = []  # (time, cluster or error code)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.client.call_raw("multi", "echo", b'"x"', timeout=5.0)
                outcome = reply.cluster or "?"
            except CallError as exc:
                outcome = exc.code
            with self.lock:
                self.results.append((time.monotonic(), outcome))

    def __enter__(self) -> ClusterLoad:
        deadline = time.monotonic() + 30
        while len(self.discovery.endpoints) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        self.discovery.stop()
        self.client.close()


def _ensure_deployed(topo: infra.Topology, keeper: KeeperClient) -> None:
    """Deploy `multi` unless an earlier test of the module did (so the test runs alone)."""
    with Store.connect(topo.db.ref()) as store:
        if all(store.load_appmaster_state(c, "multi") is not None for c in ("a", "b")):
            return
    op_id = keeper.deploy(_spec_json(), make_package(ECHO / "code").data, kind="deploy")
    assert _wait_op(keeper, op_id)["status"] == "succeeded"


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``check`` until it holds; return how long that took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


def _status_of(topo: infra.Topology, keeper_id: str) -> dict[str, Any]:
    address = next(k.address for k in topo.keepers if k.id == keeper_id)
    return keeper_status(address, token=topo.keeper_token(), timeout_s=1.0, tls=topo.client_tls())


def _holder(store: Store, cluster: str) -> Holder:
    lease = store.get_lease(lease_name(cluster, "multi"))
    assert lease is not None
    assert lease.holder is not None
    holder = Holder.parse(lease.holder)
    assert holder is not None
    return holder


def test_a_killed_appmaster_hands_over_to_its_standby(
    mstack: infra.Topology, keeper: KeeperClient
) -> None:
    """SIGKILL the active AppMaster of cluster a under load: its warm standby (the other
    actor) takes the lease at a higher epoch and links to the Keepers, a config update
    then goes through on both clusters, no call fails, and the killed actor comes back
    as the standby. Prints the seconds from the kill to the standby's first heartbeat."""
    _ensure_deployed(mstack, keeper)
    with Store.connect(mstack.db.ref()) as store, ClusterLoad(mstack) as load:
        active = _holder(store, "a")
        epoch = store.get_lease(lease_name("a", "multi")).epoch  # type: ignore[union-attr]
        killed_at = store.now()
        os.kill(active.pid, signal.SIGKILL)
        _wait_for("the standby holding the lease", lambda: _holder(store, "a") != active, 30)
        successor = _holder(store, "a")
        assert successor.actor != active.actor  # the standby, not the restarted process
        assert store.get_lease(lease_name("a", "multi")).epoch == epoch + 1  # type: ignore[union-attr]

        def linked() -> bool:
            return any(
                b.cluster == "a" and b.actor_name == successor.actor and b.heartbeat_at > killed_at
                for b in store.list_appmasters("multi")
            )

        _wait_for("the standby's link to the Keepers", linked, 30)
        beat = next(
            b.heartbeat_at
            for b in store.list_appmasters("multi")
            if b.cluster == "a" and b.actor_name == successor.actor
        )
        op_id = keeper.deploy(_spec_json(config={"prefix": "handed-over"}), b"", kind="config")
        assert _wait_op(keeper, op_id)["status"] == "succeeded"
        for cluster in ("a", "b"):
            found = store.load_appmaster_state(cluster, "multi")
            assert found is not None
            assert found[0]["desired"]["config"]["prefix"] == "handed-over"
        assert _holder(store, "a") == successor  # the restarted actor stood by
    with load.lock:
        outcomes = [o for _, o in load.results]
    failed = [o for o in outcomes if o not in ("a", "b")]
    print(
        f"\nAppMaster {active} killed: {successor} heartbeat {beat - killed_at:.2f}s later; "
        f"{len(outcomes)} requests, {len(failed)} failed"
    )
    assert failed == []


def test_a_paused_leader_is_fenced_after_it_resumes(
    mstack: infra.Topology, keeper: KeeperClient
) -> None:
    """SIGSTOP the leader mid-rollout, past its lease: another replica takes over at a
    higher epoch and finishes the rollout, under load, >= 99.9 % answered. SIGCONT
    the old leader: it acts as a follower (no instruction at its old epoch), and the
    instruction its interrupted round would have sent, stamped with its old epoch, is
    refused by the AppMaster, whose state keeps the new leader's epoch and revision.
    (The Keeper's own writes are fenced in the store too, so the test writes that
    instruction unfenced, to check the AppMaster's fence behind it.)
    Prints the takeover time and the request figures."""
    _ensure_deployed(mstack, keeper)
    old_leader, old_epoch = _leader(mstack)
    others = [k.id for k in mstack.keepers if k.id != old_leader]
    config = {"prefix": "fenced", "reconfigure_delay_s": 1.0}  # ~2 s per cluster
    with Store.connect(mstack.db.ref()) as store, ClusterLoad(mstack) as load:
        _wait_for("load", lambda: len(load.results) >= 100, 30)
        op_id = keeper.deploy(_spec_json(config=config), b"", kind="config")
        _wait_for("rollout start", lambda: store.get_operation(op_id).status == "running", 60)
        marks = {c: getattr(store.last_instruction(c, "multi"), "id", 0) for c in ("a", "b")}
        infra.signal_keeper(mstack.run_dir, old_leader, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            successor: dict[str, Any] = {}

            def taken_over() -> bool:
                for k in others:
                    view = _status_of(mstack, k)
                    if view["alive"] and view["leader"] and view["epoch"] > old_epoch:
                        successor.update(view)
                        return True
                return False

            takeover_s = _wait_for("a successor's leadership", taken_over, 30)
            new_leader, new_epoch = str(successor["id"]), int(successor["epoch"])

            def highest_epoch(cluster: str) -> int:
                found = store.load_appmaster_state(cluster, "multi")
                return int(found[0]["highest_epoch"]) if found else 0

            # the successor instructs b (the step after a): b's AppMaster sees its epoch
            try:
                seen_s = _wait_for(
                    "b seeing the new epoch", lambda: highest_epoch("b") >= new_epoch, 30
                )
            except AssertionError:
                now = store.now()
                ages = {a.cluster: now - a.heartbeat_at for a in store.list_appmasters("multi")}
                raise AssertionError(
                    f"b never saw epoch {new_epoch} while {old_leader} was paused; seconds "
                    f"since each AppMaster's link last beat: {ages} (growing with the pause: "
                    f"the link's stream is stuck on the paused replica)"
                ) from None
        finally:
            infra.signal_keeper(mstack.run_dir, old_leader, signal.SIGCONT)
        resumed = time.monotonic()

        # (a) the resumed replica is a follower of the successor, for several lease ticks
        while time.monotonic() - resumed < 3.0:
            view = _status_of(mstack, old_leader)
            assert view["alive"], view
            assert not view["leader"], f"{old_leader} acts as leader after resuming: {view}"
            assert view["leader_id"] == new_leader, view
            assert view["epoch"] == new_epoch, view
            time.sleep(0.1)

        # (b) what its interrupted round would have sent to b, at its old epoch: refused
        op = Operation.parse(store.get_operation(op_id))
        stale_op = instruction_op_id(op, "b")
        body = cluster_body(op.plan, op.plan.target("b")).to_record()
        stale_id = store.add_instruction("b", "multi", stale_op, old_epoch, body)

        def refusal() -> EventRecord | None:
            return next(
                (
                    e
                    for e in store.list_events(service="multi")
                    if e.kind == "refused" and e.op_id == stale_op and e.epoch == old_epoch
                ),
                None,
            )

        _wait_for("the AppMaster's refusal", lambda: refusal() is not None, 30)
        event = refusal()
        assert event is not None
        assert event.cluster == "b"
        assert event.detail is not None
        assert event.detail["highest_epoch"] >= new_epoch

        # the rollout completes under the successor
        done = _wait_op(keeper, op_id)
        assert done["status"] == "succeeded", done
        assert done["epoch"] == new_epoch
        finished = time.monotonic()
        _wait_for("b consuming the stale instruction", lambda: _consumed(store, "b", stale_id), 30)
        for cluster in ("a", "b"):
            found = store.load_appmaster_state(cluster, "multi")
            assert found is not None
            state = found[0]
            assert state["desired"]["config"]["prefix"] == "fenced"
            assert state["highest_epoch"] >= (new_epoch if cluster == "b" else old_epoch)
            sent = store.list_instructions(cluster, "multi", after=marks[cluster])
            late = [i for i in sent if i.epoch < new_epoch and i.id != stale_id]
            assert late == [], f"instructions below epoch {new_epoch} after the pause: {late}"
        assert _leader(mstack)[0] == new_leader
    with load.lock:
        outcomes = [o for _, o in load.results]
        window = [o for t, o in load.results if paused <= t <= finished]
    failed = [o for o in outcomes if o not in ("a", "b")]
    print(
        f"\nleader {old_leader} (epoch {old_epoch}) paused mid-rollout: {new_leader} led at "
        f"epoch {new_epoch} after {takeover_s:.2f}s, b saw it {seen_s:.2f}s later; "
        f"paused {resumed - paused:.2f}s; rollout done {finished - paused:.2f}s after the "
        f"pause; {len(outcomes)} requests ({len(window)} from pause to done), "
        f"{len(failed)} failed"
    )
    assert len(failed) <= len(outcomes) // 1000, failed[:10]


def _consumed(store: Store, cluster: str, instruction_id: int) -> bool:
    found = store.load_appmaster_state(cluster, "multi")
    return found is not None and int(found[0]["last_instruction"]) >= instruction_id


def test_cluster_loss_moves_traffic_and_the_service_returns_with_the_cluster(
    mstack: infra.Topology,
) -> None:
    """Kill cluster b under load: availability stays >= 99.9 %, b's endpoints are
    withdrawn, answers come only from a; after b restarts, its AppMaster serves again.
    Prints the availability, the withdrawal time and the last answer from b."""
    with Store.connect(mstack.db.ref()) as store, ClusterLoad(mstack) as load:
        deadline = time.monotonic() + 30
        while not any(r[1] == "b" for r in load.results) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_at = time.monotonic()
        infra.kill_cluster(mstack.run_dir, "b")
        while any(e.cluster == "b" for e in store.list_endpoints("multi")):
            assert time.monotonic() - killed_at < 30, "b's endpoints were never withdrawn"
            time.sleep(0.05)
        withdrawn_s = time.monotonic() - killed_at
        time.sleep(3.0)  # load keeps running on the survivor
        with load.lock:
            after_kill = [r for r in load.results if r[0] > killed_at]
        infra.restart_cluster(mstack.run_dir, "b")
        deadline = time.monotonic() + 120
        while not any(e.cluster == "b" for e in store.list_endpoints("multi")):
            assert time.monotonic() < deadline, "the service never came back on b"
            time.sleep(0.2)
        back = time.monotonic()
        while not any(r[1] == "b" and r[0] > back for r in load.results):
            assert time.monotonic() < deadline, "no answer from b after its return"
            time.sleep(0.1)
    with load.lock:
        total = len(load.results)
        good = sum(1 for _, outcome in load.results if outcome in ("a", "b"))
    last_b = max((t for t, o in after_kill if o == "b"), default=killed_at) - killed_at
    print(
        f"\ncluster b killed under load: availability {good / total:.5f} ({total - good} of "
        f"{total} failed), endpoints withdrawn after {withdrawn_s:.2f}s, last answer from b "
        f"{last_b:.2f}s after the kill"
    )
    assert good / total >= 0.999
    assert last_b < 2.0
    assert {o for t, o in after_kill if t > killed_at + 2.0} <= {"a"}


def test_db_outage_keeps_the_data_plane_and_loses_no_acknowledged_operation(
    mstack: infra.Topology, keeper: KeeperClient
) -> None:
    """The DB is killed for 30 s under load: every request still succeeds (proxies keep
    their tables, clients their endpoint lists), a control operation sent meanwhile fails
    cleanly (UNAVAILABLE), and the one acknowledged just before the outage is carried
    out after the DB returns, as is a new one."""
    with ClusterLoad(mstack) as load:
        deadline = time.monotonic() + 30
        while len(load.results) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        acked = keeper.deploy(_spec_json(config={"prefix": "acked"}), b"", kind="config")
        infra.kill_db(mstack.run_dir)
        killed = time.monotonic()
        with pytest.raises(KeeperError) as refused:
            keeper.deploy(_spec_json(config={"prefix": "during"}), b"", kind="config")
        assert refused.value.code == "UNAVAILABLE"
        while time.monotonic() - killed < 30:  # the outage itself, load running
            time.sleep(0.5)
        during = len(load.results)
        infra.restart_db(mstack.run_dir)
        assert _wait_op(keeper, acked)["status"] == "succeeded"
        after = keeper.deploy(_spec_json(config={"prefix": "after"}), b"", kind="config")
        assert _wait_op(keeper, after)["status"] == "succeeded"
    with load.lock:
        outcomes = [o for _, o in load.results]
    failed = [o for o in outcomes if o not in ("a", "b")]
    print(
        f"\nDB down 30 s under load: {len(outcomes)} requests ({during} by the DB's return), "
        f"{len(failed)} failed"
    )
    assert failed == []
    assert [o["op_id"] for o in keeper.operations("multi")].count(acked) == 1

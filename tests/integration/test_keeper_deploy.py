"""Multi-cluster serving through the Keepers, on a real 2-cluster stack with 3 Keepers:
deploy onto both clusters via Job Submission, discovery of every proxy, a rolling update
across clusters that survives the leader's death, and fencing of a stale leader."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import infra
from ha_serving._errors import CallError
from ha_serving._spec import load_spec
from ha_serving.backend import make_package
from ha_serving.client import discovered_client
from ha_serving.keeper import KeeperClient, KeeperError, keeper_status
from ha_serving.store import Store
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
    return KeeperClient([k.address for k in mstack.keepers], token=mstack.keeper_token())


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
            view = keeper_status(k.address, token=topo.keeper_token(), timeout_s=0.5)
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
        "multi", addresses, token=mstack.keeper_token(), cluster="b"
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
    with Store.connect(mstack.db.url) as store:
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
    with Store.connect(mstack.db.url) as store:
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


class ClusterLoad:
    """Client threads over every proxy of `multi` (no cluster preference), recording each
    request's outcome and, for successes, the cluster that answered."""

    def __init__(self, topo: infra.Topology, threads: int = 4) -> None:
        self.client, self.discovery = discovered_client(
            "multi", [k.address for k in topo.keepers], token=topo.keeper_token()
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


def test_cluster_loss_moves_traffic_and_the_service_returns_with_the_cluster(
    mstack: infra.Topology,
) -> None:
    """Kill cluster b under load: availability stays >= 99.9 %, b's endpoints are
    withdrawn, answers come only from a; after b restarts, its AppMaster serves again.
    Prints the availability, the withdrawal time and the last answer from b."""
    with Store.connect(mstack.db.url) as store, ClusterLoad(mstack) as load:
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

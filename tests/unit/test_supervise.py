"""The node supervisor (``infra.supervise``) without Ray: real processes (``sleep``)
stand in for the nodes, a real topology file and run-dir lock; only the wait for the
GCS to list a node is replaced. It starts again a node that died by itself, never one a
fault killed on purpose, a head only while Redis answers, a worker only while its head
runs; it leaves the stack alone while another command holds the lock; and ``down``
stops it before the nodes."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

import infra
from infra import procs, stack, supervise
from infra.supervise import Supervisor
from infra.topology import Cluster, Database, Node, NodePorts, Proc, Redis, Topology


def _sleeper(tmp_path: Path, name: str) -> Proc:
    return procs.spawn(["sleep", "120"], log=tmp_path / "logs" / f"{name}.log")


def _node(tmp_path: Path, name: str, role: str) -> Node:
    ports = NodePorts(
        gcs=None, node_manager=1, object_manager=2, metrics_export=3, dashboard_agent_grpc=4,
        dashboard_agent_listen=5, runtime_env_agent=6, ray_client_server=None, dashboard=None,
        min_worker=20, max_worker=30,
    )  # fmt: skip
    return Node(
        name=name, role=role, address="127.0.104.9", ports=ports,  # type: ignore[arg-type]
        temp_dir=tmp_path / "ray" / name, proc=_sleeper(tmp_path, name),
    )  # fmt: skip


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    head, worker = _node(tmp_path, "a-head", "head"), _node(tmp_path, "a-w1", "worker")
    t = Topology(
        run_dir=tmp_path,
        run_id="t",
        created_at=0.0,
        clusters=[
            Cluster(
                name="a",
                index=1,
                gcs_address="127.0.104.9:1",
                storage_namespace="ns-a",
                nodes=[head, worker],
            )
        ],
        db=Database(kind="external", public_url="sqlite://"),
        redis=None,
    )
    t.save()
    yield t
    now = infra.load(tmp_path)
    for c in (now or t).clusters:
        for n in c.nodes:
            procs.kill(n.proc)


class Waits:
    """Stands in for the wait until the GCS lists the started nodes."""

    def __init__(self) -> None:
        self.waited: list[list[str]] = []
        self.spawned_at: list[float] = []

    def __call__(
        self, _topo: Topology, _cluster: Cluster, nodes: list[Node], spawned_at: float
    ) -> None:
        self.waited.append([n.name for n in nodes])
        self.spawned_at.append(spawned_at)


def _pid(run_dir: Path, name: str) -> int:
    t = infra.load(run_dir)
    assert t is not None
    return t.find_node(name)[1].proc.pid


def test_a_node_that_died_by_itself_is_started_again(topo: Topology) -> None:
    waits = Waits()
    sup = Supervisor(topo.run_dir, wait=waits)
    assert sup.tick() == []  # all running: nothing to do
    old = _pid(topo.run_dir, "a-w1")
    procs.kill(topo.cluster("a").node("a-w1").proc)  # not through infra: by itself
    assert sup.tick() == ["a-w1"]
    new = _pid(topo.run_dir, "a-w1")
    assert new != old
    assert procs.alive_pid(new)
    assert waits.waited == [["a-w1"]]


def test_a_node_killed_on_purpose_is_left_to_whoever_killed_it(topo: Topology) -> None:
    sup = Supervisor(topo.run_dir, wait=Waits())
    infra.kill_node(topo.run_dir, "a-w1")
    assert sup.tick() == []
    killed = infra.load(topo.run_dir)
    assert killed is not None
    assert killed.find_node("a-w1")[1].held
    assert not procs.alive(killed.find_node("a-w1")[1].proc)


def test_a_head_waits_for_redis_and_its_workers_wait_for_the_head(
    topo: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_up = [False]
    monkeypatch.setattr(supervise, "redis_alive", lambda _r: redis_up[0])
    topo.redis = Redis(address="127.0.104.9:2", proc=topo.clusters[0].head.proc)
    topo.save()
    for n in topo.clusters[0].nodes:
        procs.kill(n.proc)
    waits = Waits()
    sup = Supervisor(topo.run_dir, wait=waits)
    assert sup.tick() == []  # Redis down: no head can start, and no worker without it
    redis_up[0] = True
    assert sup.tick() == ["a-head", "a-w1"]  # the head first, its worker with it
    after = infra.load(topo.run_dir)
    assert after is not None
    # every node had died: the cluster comes back empty, in a fresh GCS namespace
    assert after.clusters[0].storage_namespace.startswith("ns-a~")  # type: ignore[union-attr]


def test_a_worker_whose_head_is_down_on_purpose_is_not_started(topo: Topology) -> None:
    infra.kill_node(topo.run_dir, "a-head")
    procs.kill(topo.cluster("a").node("a-w1").proc)
    waits = Waits()
    assert Supervisor(topo.run_dir, wait=waits).tick() == []
    assert waits.waited == []


def test_it_leaves_the_stack_alone_while_another_command_holds_the_lock(topo: Topology) -> None:
    procs.kill(topo.cluster("a").node("a-w1").proc)
    sup = Supervisor(topo.run_dir, wait=Waits())
    with stack.locked(topo.run_dir):
        assert sup.tick() == []
    assert sup.tick() == ["a-w1"]


def test_a_start_that_fails_is_cleaned_and_tried_again_next_tick(topo: Topology) -> None:
    procs.kill(topo.cluster("a").node("a-w1").proc)
    fails = [True]

    def wait(_t: Topology, cluster: Cluster, nodes: list[Node], _spawned_at: float) -> None:
        if fails.pop(0) if fails else False:
            raise stack.NodeStartFailed(cluster.name, {n.name: "exited at start" for n in nodes})

    sup = Supervisor(topo.run_dir, wait=wait)
    assert sup.tick() == []  # started, failed, stopped again
    assert not procs.alive_pid(_pid(topo.run_dir, "a-w1"))
    assert sup.tick() == ["a-w1"]


def test_it_stops_when_the_stack_is_down(topo: Topology) -> None:
    infra.topology.remove(topo.run_dir)
    assert Supervisor(topo.run_dir, wait=Waits()).tick() is None


def test_down_stops_the_supervisor_before_the_nodes(topo: Topology) -> None:
    topo.supervisor = procs.spawn(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        log=topo.run_dir / "logs" / "supervisor.log",
    )
    topo.save()
    result = infra.down(topo.run_dir)
    assert result.was_up
    assert not procs.alive(topo.supervisor)
    assert all(not procs.alive(n.proc) for n in topo.clusters[0].nodes)


def test_sigterm_while_spawning_waits_until_the_nodes_are_saved(topo: Topology) -> None:
    sup = Supervisor(topo.run_dir, wait=Waits())
    sup._spawning = True
    sup.on_sigterm(signal.SIGTERM, None)  # deferred: no SystemExit here
    assert sup.stopping
    sup._spawning = False
    with pytest.raises(SystemExit):
        sup.on_sigterm(signal.SIGTERM, None)


def test_every_cluster_is_waited_for_from_the_time_its_nodes_were_spawned(
    topo: Topology, tmp_path: Path
) -> None:
    """Clusters are waited for one after the other: a later cluster's wait must count a
    node registered while the earlier one was waited for (the wait's start would not:
    catalogue run 3 of 2026-11-30 had a b-head that registered 1.4 s before the wait for
    it began taken for a failed start after 90 s, and killed)."""
    other = Cluster(
        name="b",
        index=2,
        gcs_address="127.0.104.9:3",
        storage_namespace="ns-b",
        nodes=[_node(tmp_path, "b-head", "head"), _node(tmp_path, "b-w1", "worker")],
    )
    topo.clusters.append(other)
    topo.save()
    procs.kill(topo.cluster("a").node("a-w1").proc)
    procs.kill(other.node("b-w1").proc)
    waits = Waits()

    def slow(t: Topology, cluster: Cluster, nodes: list[Node], spawned_at: float) -> None:
        waits(t, cluster, nodes, spawned_at)
        time.sleep(0.3)  # waiting for the first cluster's node takes a while

    before = time.time()
    assert Supervisor(topo.run_dir, wait=slow).tick() == ["a-w1", "b-w1"]
    assert waits.spawned_at[0] == waits.spawned_at[1]
    assert before <= waits.spawned_at[1] < before + 0.3

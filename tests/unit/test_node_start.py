"""Node starts (infra.stack.await_nodes) without Ray: a node counts as started only once
its GCS lists it, registered after its spawn; one that exits at start or misses its
registration is killed, its temp dir cleared, and started again, a bounded number of
times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra import stack
from infra.stack import NodeStartFailed, await_nodes
from infra.topology import Cluster, Node, NodePorts, Proc, Topology


def _node(tmp_path: Path, name: str, address: str) -> Node:
    ports = NodePorts(
        gcs=None, node_manager=1, object_manager=2, metrics_export=3, dashboard_agent_grpc=4,
        dashboard_agent_listen=5, runtime_env_agent=6, ray_client_server=None, dashboard=None,
        min_worker=20, max_worker=30,
    )  # fmt: skip
    proc = Proc(pid=1, pgid=1, argv=["ray", "start"], log=tmp_path / f"{name}.log")
    return Node(
        name=name, role="worker", address=address, ports=ports,
        temp_dir=tmp_path / name, proc=proc,
    )  # fmt: skip


class FakeNodes:
    """Which nodes run and what the GCS lists; ``spawn`` starts a node (pid + 1)."""

    def __init__(self, registers_on_start: list[bool]) -> None:
        self.registers_on_start = registers_on_start  # per start, in order
        self.running: set[int] = set()
        self.registered: dict[str, float] = {}
        self.starts = 0
        self.killed: list[int] = []

    def spawn(self, node: Node) -> None:
        node.proc = node.proc.model_copy(update={"pid": node.proc.pid + 1})
        ok = self.registers_on_start[self.starts]
        self.starts += 1
        if ok:
            self.running.add(node.proc.pid)
            self.registered[node.address] = 1000.0 + self.starts
        # else: `ray start` exited ("timed out during startup")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(stack, "alive_since", lambda _gcs: dict(self.registered))
        monkeypatch.setattr(stack.procs, "alive", lambda p: p.pid in self.running)
        monkeypatch.setattr(stack.procs, "kill", self._kill)
        monkeypatch.setattr(stack, "spawn_node", self.spawn)
        monkeypatch.setattr(stack.time, "time", lambda: 1000.0)
        monkeypatch.setattr(Topology, "save", lambda _self: None)

    def _kill(self, proc: Proc, **_: Any) -> int:
        self.killed.append(proc.pid)
        self.running.discard(proc.pid)
        return 1


def _topology(tmp_path: Path, node: Node) -> tuple[Topology, Cluster]:
    cluster = Cluster(name="a", index=1, gcs_address="127.0.1.1:1", storage_namespace=None,
                      nodes=[node])  # fmt: skip
    return Topology.model_construct(run_dir=tmp_path, clusters=[cluster]), cluster


def test_a_node_the_gcs_does_not_list_is_not_started_even_when_its_process_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeNodes([])
    fake.install(monkeypatch)
    node = _node(tmp_path, "a-w1", "127.0.1.2")
    fake.running.add(node.proc.pid)  # runs, never registers
    topo, cluster = _topology(tmp_path, node)
    with pytest.raises(NodeStartFailed, match="a-w1: not registered after 0s"):
        await_nodes(topo, cluster, [node], 0.3, spawned_at=0.0, attempts=1)


def test_a_node_that_exits_at_start_is_started_again_from_a_clean_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeNodes([True])  # the caller's start exited; the next one registers
    fake.install(monkeypatch)
    node = _node(tmp_path, "a-w1", "127.0.1.2")
    (node.temp_dir / "session_old").mkdir(parents=True)
    topo, cluster = _topology(tmp_path, node)
    reports: list[str] = []
    # the spawn the caller made: ray start exited at once
    await_nodes(topo, cluster, [node], 5.0, spawned_at=1000.0, report=reports.append)
    assert fake.starts == 1
    assert fake.killed == [1]  # what was left of the failed start
    assert not (node.temp_dir / "session_old").exists()
    assert reports == ["Ray node a-w1 failed to start; starting it again"]


def test_starts_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNodes([False, False])
    fake.install(monkeypatch)
    node = _node(tmp_path, "a-w1", "127.0.1.2")
    topo, cluster = _topology(tmp_path, node)
    with pytest.raises(NodeStartFailed, match="exited at start"):
        await_nodes(topo, cluster, [node], 5.0, spawned_at=1000.0, attempts=3)
    assert fake.starts == 2  # the caller's spawn, then 2 more starts: 3 in all


def test_a_restarted_node_counts_from_its_own_registration_whatever_order_the_gcs_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GCS restarted from Redis may list a node's dead predecessor at the same address
    as ALIVE beside it; whichever it lists last, the address counts as registered when
    the newest of them registered (CI run 19: a restarted worker was never seen)."""
    from infra import ray_nodes
    from infra.ray_nodes import GcsNode

    old = GcsNode(address="127.0.2.2", alive=True, is_head=False, start_time_s=100.0)
    new = GcsNode(address="127.0.2.2", alive=True, is_head=False, start_time_s=200.0)
    gone = GcsNode(address="127.0.2.3", alive=False, is_head=False, start_time_s=300.0)
    head = GcsNode(address="127.0.2.1", alive=True, is_head=True, start_time_s=150.0)
    for listing in ([new, old, gone, head], [old, new, gone, head]):
        monkeypatch.setattr(ray_nodes, "gcs_nodes", lambda _gcs, _l=listing: list(_l))
        assert ray_nodes.alive_since("127.0.2.1:15000") == {"127.0.2.2": 200.0, "127.0.2.1": 150.0}
    monkeypatch.setattr(ray_nodes, "gcs_nodes", lambda _gcs: None)
    assert ray_nodes.alive_since("127.0.2.1:15000") is None


def test_a_crashed_raylets_evidence_names_its_error_lines_not_only_its_stack_trace(
    tmp_path: Path,
) -> None:
    """A raylet that crashes ends its log with a stack trace; the node's evidence must
    carry the error line that says why (CI run 19 showed only the trace)."""
    node = _node(tmp_path, "b-w1", "127.0.2.2")
    node.proc.log.write_text("Local node IP: 127.0.2.2\n")
    logs = node.temp_dir / "session_latest" / "logs"
    logs.mkdir(parents=True)
    trace = [f"raylet(+0x{n:x}) boost::asio::detail::scheduler::run()" for n in range(12)]
    (logs / "raylet.out").write_text(
        "\n".join(
            [
                "[2026-11-30 15:13:20,001 I 42 42] main.cc:10: starting",
                "[2026-11-30 15:13:24,296 C 42 42] node_manager.cc:99: marked dead",
                "*** StackTrace Information ***",
                *trace,
            ]
        )
    )
    evidence = stack.node_evidence(node)
    assert "raylet errors: [2026-11-30 15:13:24,296 C 42 42] node_manager.cc:99" in evidence
    assert "starting" not in evidence.split("raylet errors:")[1].split("||")[0]
    assert "scheduler::run()" in evidence  # the tail is still there

"""The local stack on real Ray clusters, a real MariaDB and a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import infra
from infra import procs
from infra.topology import Topology

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).with_name("ray_driver.py")


def _driver(gcs: str, node_ip: str, mode: str) -> int:
    out = subprocess.run(
        [sys.executable, str(DRIVER), gcs, node_ip, mode],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("ha-serving")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _pids(topo: Topology, cluster: str) -> set[int]:
    return {p.pid for n in topo.cluster(cluster).nodes for p in procs.tree(n.proc)}


def test_up_starts_every_node_alive_and_status_json_lists_them(stack: Topology) -> None:
    """`status --json` shows 2 clusters x 2 alive nodes, with DB and Redis alive."""
    result = _cli("status", "--json", "--run-dir", str(stack.run_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["clusters"]] == ["a", "b"]
    for i, c in enumerate(report["clusters"], start=1):
        assert c["gcs_address"].startswith(f"127.0.{i}.1:")
        assert [(n["role"], n["address"], n["alive"]) for n in c["nodes"]] == [
            ("head", f"127.0.{i}.1", True),
            ("worker", f"127.0.{i}.2", True),
        ]
        assert all(isinstance(n["pgid"], int) for n in c["nodes"])
    assert report["db"]["alive"] is True
    assert report["db"]["url"].startswith("mysql+pymysql://")
    assert report["redis"]["alive"] is True


def test_every_node_runs_in_its_own_process_group(stack: Topology) -> None:
    """Each node's pgid is its own, so one node can be killed exactly."""
    pgids = [n.proc.pgid for c in stack.clusters for n in c.nodes]
    assert len(set(pgids)) == len(pgids)
    for c in stack.clusters:
        for n in c.nodes:
            assert n.proc.pgid == n.proc.pid
            assert procs.group_members(n.proc.pgid), n.name


def test_second_up_reports_already_up_and_changes_nothing(stack: Topology) -> None:
    """`up` on a running stack starts nothing and keeps every pid."""
    from tests.integration.conftest import stack_settings

    before = {n.name: n.proc.pid for c in stack.clusters for n in c.nodes}
    again = infra.up(stack_settings(stack.run_dir))
    assert again.already_up
    assert {n.name: n.proc.pid for c in again.topology.clusters for n in c.nodes} == before


def test_detached_actor_survives_head_kill_and_restart(stack: Topology) -> None:
    """A detached actor on a worker node keeps its in-memory state across a head crash.

    The head is SIGKILLed (GCS and all), restarted from its saved command line with the
    same Redis namespace; the worker reconnects and the actor answers with state intact.
    Cluster b is not touched by any of it.
    """
    a = stack.cluster("a")
    worker = a.nodes[1]
    other = _pids(stack, "b")
    assert _driver(a.gcs_address, worker.address, "create") == 2
    worker_pids = {p.pid for p in procs.tree(worker.proc)}

    assert infra.kill_node(stack.run_dir, "a-head") > 0
    assert not procs.alive(a.head.proc)
    assert procs.alive(worker.proc)

    infra.restart_node(stack.run_dir, "a-head")
    topo = infra.load(stack.run_dir)
    assert topo is not None
    assert topo.cluster("a").head.proc.pid != a.head.proc.pid
    assert _driver(a.gcs_address, worker.address, "inc") == 3
    # the actor's process is the same one: it was never restarted
    assert worker_pids <= {p.pid for p in procs.tree(topo.cluster("a").nodes[1].proc)}
    assert other <= _pids(topo, "b")


def test_killing_one_cluster_leaves_the_other_untouched(stack: Topology) -> None:
    """Killing cluster b stops all its processes; cluster a keeps every process and node."""
    topo = infra.load(stack.run_dir)
    assert topo is not None
    a_before = _pids(topo, "a")
    b_before = _pids(topo, "b")
    infra.kill_cluster(stack.run_dir, "b")
    assert not any(psutil.pid_exists(p) and procs.alive_pid(p) for p in b_before)
    assert a_before <= _pids(topo, "a")
    report = infra.status(stack.run_dir)
    assert report is not None
    a, b = report["clusters"]  # type: ignore[misc]
    assert a["gcs_alive"]
    assert all(n["alive"] for n in a["nodes"])
    assert not b["gcs_alive"]
    assert not any(n["alive"] for n in b["nodes"])

    infra.restart_cluster(stack.run_dir, "b")
    report = infra.status(stack.run_dir)
    assert report is not None
    assert all(n["alive"] for c in report["clusters"] for n in c["nodes"])  # type: ignore[attr-defined]


def test_down_stops_every_process_it_started(stack: Topology) -> None:
    """After `down` no process of any node (Ray workers included), DB or Redis is left."""
    topo = infra.load(stack.run_dir)
    assert topo is not None
    started = {p.pid for c in topo.clusters for n in c.nodes for p in procs.tree(n.proc)}
    for svc in (topo.db.proc, topo.redis.proc if topo.redis else None):
        assert svc is not None
        started |= {p.pid for p in procs.tree(svc)}
    assert len(started) > 10
    result = infra.down(stack.run_dir)
    assert result.was_up
    assert not [p for p in started if procs.alive_pid(p)]
    assert infra.load(stack.run_dir) is None
    assert infra.status(stack.run_dir) is None
    assert not (stack.run_dir / "secrets").exists()  # every secret of the stack went too
    assert not infra.down(stack.run_dir).was_up

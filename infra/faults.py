"""Fault primitives on the local stack: kill and restart nodes and whole clusters.

A kill is a crash, not a shutdown: SIGKILL to the node's process group and every
descendant (Ray workers run in their own sessions), as if the machine lost power.
Restarting a head of a GCS-FT cluster reuses its argv and environment (same Redis
namespace), after removing ``<temp-dir>/ray_current_cluster``, which would otherwise make
``ray start`` refuse; it must happen within the workers' reconnect timeout
(``StackSettings.gcs_reconnect_timeout_s``) or the workers exit.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from ha_serving._errors import StackError
from ha_serving._settings import StackSettings
from infra import procs, topology
from infra.ports import tcp_answers
from infra.services import redis_alive
from infra.stack import Report, _quiet, await_nodes, locked, spawn_node, wait_keeper
from infra.topology import Cluster, Node, Topology

NODE_START_TIMEOUT_S: float = StackSettings.model_fields["node_start_timeout_s"].default
"""How long a restart waits for its nodes: the settings' own default for ``up``, not a
second number to keep in step with it."""


LOCK_WAIT_S = NODE_START_TIMEOUT_S + 30.0
"""How long a fault primitive waits for the run dir's lock: the supervisor holds it while
it restarts a node (one start, at most ``node_start_timeout_s``)."""


def _load(run_dir: Path) -> Topology:
    topo = topology.load(run_dir.resolve())
    if topo is None:
        raise StackError(f"no stack is up in {run_dir} (run `make up`)")
    return topo


def _lookup(topo: Topology, name: str) -> tuple[Cluster, Node]:
    try:
        return topo.find_node(name)
    except KeyError as exc:
        raise StackError(str(exc.args[0])) from None


def kill_node(run_dir: Path, name: str) -> int:
    """SIGKILL node ``name`` (e.g. ``a-head``, ``b-w1``) and its Ray workers."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        _, node = _lookup(topo, name)
        node.held = True  # down on purpose: the supervisor leaves it to the caller
        topo.save()
        return procs.kill(node.proc)


def kill_cluster(run_dir: Path, cluster: str) -> int:
    """SIGKILL every node of ``cluster``; other clusters are not touched."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        c = _cluster(topo, cluster)
        for n in c.nodes:
            n.held = True
        topo.save()
        return sum(procs.kill(n.proc) for n in c.nodes)


def restart_node(run_dir: Path, name: str, *, timeout_s: float = NODE_START_TIMEOUT_S) -> Node:
    """Start a killed node again with its old command line; wait until its GCS counts it."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        cluster, node = _lookup(topo, name)
        _restart(topo, cluster, [node], timeout_s, report=_quiet)
        return node


def restart_cluster(
    run_dir: Path, cluster: str, *, timeout_s: float = NODE_START_TIMEOUT_S, report: Report = _quiet
) -> None:
    """Start every dead node of ``cluster`` again.

    A cluster that lost every node comes back *empty*: its head gets a fresh GCS storage
    namespace, as a re-provisioned cluster would. (Restoring the GCS of a cluster whose
    every raylet died stalls the new head's start for longer than Ray waits.) Serving
    jobs are then re-created by the Keepers and their AppMasters recover from the DB.
    """
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        c = _cluster(topo, cluster)
        dead = [n for n in c.nodes if not procs.alive(n.proc)]
        if not dead:
            raise StackError(f"every node of cluster {cluster} is running")
        fresh_namespace_if_all_dead(c, dead)
        _restart(topo, c, dead, timeout_s, report=report)


def fresh_namespace_if_all_dead(c: Cluster, dead: list[Node]) -> None:
    """A cluster restarting every node comes back empty: a fresh GCS storage namespace
    for its head (see ``restart_cluster``)."""
    if len(dead) == len(c.nodes) and c.storage_namespace is not None:
        base = c.storage_namespace.split("~")[0]
        c.storage_namespace = f"{base}~{uuid.uuid4().hex[:6]}"
        c.head.proc.env["RAY_external_storage_namespace"] = c.storage_namespace


def _restart(
    topo: Topology, cluster: Cluster, nodes: list[Node], timeout_s: float, *, report: Report
) -> None:
    """Spawn ``nodes`` at once and wait until the GCS counts each of them (with retries).

    A head and its workers start together: a worker's ``ray start`` waits for its GCS
    (``RAY_NUM_REDIS_GET_RETRIES``, see ``ray_nodes.node_env``), so the two ~10-15 s
    starts overlap instead of adding up."""
    for node in nodes:
        if procs.alive(node.proc):
            raise StackError(f"node {node.name} is running; kill it first")
    head = cluster.head
    if head not in nodes and not procs.alive(head.proc):
        raise StackError(f"head of cluster {cluster.name} is down; restart it first")
    spawned_at = time.time()
    for node in nodes:
        spawn_node(node)
    topo.save()
    await_nodes(topo, cluster, nodes, timeout_s, spawned_at=spawned_at, report=report)


def _cluster(topo: Topology, name: str) -> Cluster:
    try:
        return topo.cluster(name)
    except KeyError as exc:
        raise StackError(str(exc.args[0])) from None


def signal_keeper(run_dir: Path, keeper_id: str, sig: int) -> None:
    """Send ``sig`` to a Keeper's process group: SIGKILL (crash), SIGSTOP/SIGCONT (pause)."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        try:
            keeper = topo.keeper(keeper_id)
        except KeyError as exc:
            raise StackError(str(exc.args[0])) from None
        if sig == signal.SIGKILL:
            procs.resume(keeper.proc)
            procs.kill(keeper.proc)
        else:
            os.killpg(keeper.proc.pgid, sig)


def restart_keeper(
    run_dir: Path,
    keeper_id: str,
    *,
    argv: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Start a killed Keeper again with its command line and environment, or with
    ``argv`` / ``env`` instead (a drill routes its DB traffic through a fault proxy, or
    fakes its clock); what it runs with is recorded, so a later restart repeats it."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        try:
            keeper = topo.keeper(keeper_id)
        except KeyError as exc:
            raise StackError(str(exc.args[0])) from None
        if procs.alive(keeper.proc):
            raise StackError(f"keeper {keeper_id} is running; kill it first")
        keeper.proc = procs.respawn(keeper.proc, argv=argv, env=env)
        topo.save()
        wait_keeper(topo, keeper)


def kill_db(run_dir: Path) -> None:
    """SIGKILL the private DB server (a crash: InnoDB recovers at the next start)."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        if topo.db.proc is None:
            raise StackError(f"the stack's DB ({topo.db.kind}) is not a process it started")
        procs.kill(topo.db.proc)


def restart_db(run_dir: Path, *, timeout_s: float = 60.0) -> None:
    """Start the killed private DB server again on its data directory; wait until it
    answers."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        db = topo.db
        if db.proc is None or db.address is None:
            raise StackError(f"the stack's DB ({db.kind}) is not a process it started")
        if procs.alive(db.proc):
            raise StackError("the DB is running; kill it first")
        host, _, port = db.address.rpartition(":")
        db.proc = procs.respawn(db.proc)
        topo.save()
        try:
            procs.wait_for("private DB", lambda: tcp_answers(host, int(port)), timeout_s=timeout_s)
        except TimeoutError as exc:
            raise StackError(str(exc)) from None


def kill_redis(run_dir: Path) -> None:
    """SIGKILL the private Redis (GCS fault tolerance's store): its append-only file
    keeps what it acknowledged."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        if topo.redis is None:
            raise StackError("the stack runs without Redis (no GCS fault tolerance)")
        procs.kill(topo.redis.proc)


def restart_redis(run_dir: Path, *, timeout_s: float = 15.0) -> None:
    """Start the killed private Redis again: same command line, so the same address,
    port, data directory and append-only file; wait until it answers PING."""
    with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
        topo = _load(run_dir)
        if topo.redis is None:
            raise StackError("the stack runs without Redis (no GCS fault tolerance)")
        if procs.alive(topo.redis.proc):
            raise StackError("Redis is running; kill it first")
        redis = topo.redis
        redis.proc = procs.respawn(redis.proc)
        topo.save()
        try:
            procs.wait_for("Redis", lambda: redis_alive(redis), timeout_s=timeout_s)
        except TimeoutError as exc:
            raise StackError(str(exc)) from None


def heal(run_dir: Path, *, timeout_s: float = NODE_START_TIMEOUT_S) -> list[str]:
    """Bring every part of the stack that a fault left down back, and check it is whole.

    Resumes paused Keepers, restarts a dead DB and Redis, every dead node (a cluster that
    lost all its nodes comes back empty, as ``restart_cluster`` says) and dead Keepers;
    then waits until the GCS of every cluster counts all its nodes. Returns what it
    restarted; raises StackError naming what is still not whole. Tests that inject
    faults into a shared stack call it afterwards, so one test's fault, or its failure
    mid-fault, never becomes the next test's failure.
    """
    healed: list[str] = []
    topo = _load(run_dir)
    for k in topo.keepers:
        procs.resume(k.proc)
    if topo.db.proc is not None and not procs.alive(topo.db.proc):
        restart_db(run_dir)
        healed.append("db")
    if topo.redis is not None and not procs.alive(topo.redis.proc):
        restart_redis(run_dir)
        healed.append("redis")
    for c in topo.clusters:
        if any(not procs.alive(n.proc) for n in c.nodes):
            restart_cluster(run_dir, c.name, timeout_s=timeout_s)
            healed.append(f"cluster {c.name}")
    for k in topo.keepers:
        if not procs.alive(k.proc):
            restart_keeper(run_dir, k.id)
            healed.append(f"keeper {k.id}")
    topo = _load(run_dir)
    for c in topo.clusters:
        with locked(run_dir.resolve(), wait_s=LOCK_WAIT_S):
            await_nodes(topo, c, c.nodes, timeout_s, spawned_at=0.0, attempts=1)
    return healed

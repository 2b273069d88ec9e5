"""The drills' fault actions: thin functions over ``infra``'s fault primitives (and, for
a single actor, SIGKILL to the process Ray's state API names).

Chaos Toolkit calls them as python providers with its ``configuration`` (``run_dir``,
``service``); what each returns goes into the journal. Each fault is also recorded in
``INJECTED``, in this process (Chaos Toolkit runs python activities in-process), so a
probe later in the same method can wait for that very target to come back.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import infra
from chaos import target
from chaos.target import ActorKind, DrillError, Role
from infra import procs

Configuration = Mapping[str, Any]

ACTIVITIES = (
    "kill_keeper",
    "stop_keeper",
    "resume_keepers",
    "restart_keepers",
    "kill_actor",
    "kill_node",
    "restart_node",
    "kill_cluster",
    "restart_cluster",
    "kill_db",
    "restart_db",
    "heal",
)
"""The functions a drill may name (the rest of the module is their plumbing)."""


@dataclass(frozen=True)
class Injected:
    action: str
    target: str
    at: float
    """Wall clock when the fault was injected."""
    pid: int | None = None
    cluster: str | None = None


INJECTED: list[Injected] = []


def last_injected(action: str | None = None) -> Injected | None:
    """The latest fault this process injected (of ``action``, if given)."""
    for f in reversed(INJECTED):
        if action is None or f.action == action:
            return f
    return None


def _record(fault: Injected) -> dict[str, Any]:
    INJECTED.append(fault)
    return asdict(fault)


# --- Keepers -------------------------------------------------------------------------


def kill_keeper(configuration: Configuration, role: Role = "leader") -> dict[str, Any]:
    """SIGKILL the Keeper leader, or a follower."""
    topo = target.topology(configuration)
    k = target.pick_keeper(topo, role)
    at = time.time()
    infra.signal_keeper(topo.run_dir, k.id, signal.SIGKILL)
    return _record(Injected(f"kill_keeper:{role}", k.id, at))


def stop_keeper(configuration: Configuration, role: Role = "leader") -> dict[str, Any]:
    """SIGSTOP the Keeper leader (or a follower): alive, silent, still holding what it
    believed; ``resume_keepers`` sends SIGCONT."""
    topo = target.topology(configuration)
    k = target.pick_keeper(topo, role)
    at = time.time()
    infra.signal_keeper(topo.run_dir, k.id, signal.SIGSTOP)
    return _record(Injected(f"stop_keeper:{role}", k.id, at))


def resume_keepers(configuration: Configuration) -> list[str]:
    """SIGCONT every running Keeper (harmless to one that is not stopped)."""
    topo = target.topology(configuration)
    resumed = []
    for k in topo.keepers:
        if procs.alive(k.proc):
            infra.signal_keeper(topo.run_dir, k.id, signal.SIGCONT)
            resumed.append(k.id)
    return resumed


def restart_keepers(configuration: Configuration) -> list[str]:
    """Start every dead Keeper again (as its supervisor would)."""
    topo = target.topology(configuration)
    restarted = []
    for k in topo.keepers:
        if not procs.alive(k.proc):
            infra.restart_keeper(topo.run_dir, k.id)
            restarted.append(k.id)
    return restarted


# --- actors --------------------------------------------------------------------------


def kill_actor(
    configuration: Configuration, cluster: str, kind: ActorKind, index: int = 0
) -> dict[str, Any]:
    """SIGKILL the process of one of the service's actors on ``cluster``: the
    ``index``-th (by name) backend worker, proxy, or the AppMaster. Ray restarts it."""
    topo = target.topology(configuration)
    found = target.actors(topo, cluster, target.service(configuration), kind)
    if len(found) <= index:
        raise DrillError(f"{kind} #{index} of {target.service(configuration)} not on {cluster}")
    victim = found[index]
    at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    return _record(Injected(f"kill_actor:{kind}", victim.name, at, victim.pid, cluster))


# --- nodes, clusters, DB -------------------------------------------------------------


def kill_node(configuration: Configuration, node: str) -> dict[str, Any]:
    """SIGKILL a Ray node (``a-head``, ``b-w1``) and its Ray workers."""
    topo = target.topology(configuration)
    cluster, _ = topo.find_node(node)
    at = time.time()
    infra.kill_node(topo.run_dir, node)
    return _record(Injected("kill_node", node, at, cluster=cluster.name))


def restart_node(configuration: Configuration, node: str) -> dict[str, Any]:
    """Start a killed node again; returns once its GCS counts it (a head: GCS FT
    restart from Redis)."""
    topo = target.topology(configuration)
    started = time.time()
    infra.restart_node(topo.run_dir, node)
    return {"node": node, "took_s": round(time.time() - started, 3)}


def kill_cluster(configuration: Configuration, cluster: str) -> dict[str, Any]:
    """SIGKILL every node of ``cluster``."""
    topo = target.topology(configuration)
    at = time.time()
    infra.kill_cluster(topo.run_dir, cluster)
    return _record(Injected("kill_cluster", cluster, at, cluster=cluster))


def restart_cluster(configuration: Configuration, cluster: str) -> dict[str, Any]:
    """Start every dead node of ``cluster`` (it comes back empty; the Keepers resubmit
    its serving jobs); returns once its GCS counts every node."""
    topo = target.topology(configuration)
    started = time.time()
    infra.restart_cluster(topo.run_dir, cluster)
    return {"cluster": cluster, "took_s": round(time.time() - started, 3)}


def kill_db(configuration: Configuration) -> dict[str, Any]:
    """SIGKILL the private DB server."""
    topo = target.topology(configuration)
    at = time.time()
    infra.kill_db(topo.run_dir)
    return _record(Injected("kill_db", "db", at))


def restart_db(configuration: Configuration) -> dict[str, Any]:
    """Start the DB server again; returns once it answers."""
    topo = target.topology(configuration)
    started = time.time()
    infra.restart_db(topo.run_dir)
    return {"db": "restarted", "took_s": round(time.time() - started, 3)}


# --- rollback ------------------------------------------------------------------------


def heal(configuration: Configuration) -> list[str]:
    """Every drill's rollback: resume paused Keepers, restart whatever is dead, and check
    every cluster's GCS counts all its nodes (``infra.heal``); returns what it restarted."""
    return infra.heal(target.run_dir(configuration))

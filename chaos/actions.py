"""The drills' fault actions: thin functions over ``infra``'s fault primitives (and, for
a single actor, SIGKILL to the process Ray's state API names), the network faults of
``chaos.links`` (a TCP fault hub), a Keeper's clock under libfaketime (``chaos.clock``)
and CPU starvation (``chaos.cpuhog``). Whatever an action starts it stops again by its
process group (or the drill's ``heal`` does).

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
from chaos import clock, cpuhog, links, scaling, spread, target
from chaos.netfault import PASS, Fault, Mode
from chaos.target import ActorKind, DrillError, Role
from infra import procs
from infra.topology import Proc

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
    "kill_redis",
    "restart_redis",
    "route_keepers_db",
    "net_fault",
    "net_heal",
    "starve_cpu",
    "stop_cpu_starvation",
    "start_scaling_load",
    "stop_scaling_load",
    "start_spread_load",
    "stop_spread_load",
    "fake_keeper_clock",
    "jump_keeper_clock",
    "restore_keeper_clocks",
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
    epoch: int | None = None
    """The Keepers' highest leader epoch when it was injected (faults aimed at them)."""


INJECTED: list[Injected] = []


def forget_injected() -> None:
    """A new experiment begins: its probes wait only for its own faults (in a random run,
    an action that failed must not leave a probe timing an earlier fault's target)."""
    INJECTED.clear()


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
    configuration: Configuration,
    cluster: str,
    kind: ActorKind,
    index: int = 0,
    service: str | None = None,
) -> dict[str, Any]:
    """SIGKILL the process of one of the service's actors on ``cluster``: the
    ``index``-th (by name) backend worker, proxy, or the AppMaster (the active one).
    Ray restarts it. ``service``: another service than the drills' own."""
    topo = target.topology(configuration)
    name = service or target.service(configuration)
    found = target.actors(topo, cluster, name, kind)
    if len(found) <= index:
        raise DrillError(f"{kind} #{index} of {name} not on {cluster}")
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


def kill_redis(configuration: Configuration) -> dict[str, Any]:
    """SIGKILL the private Redis that backs the clusters' GCS fault tolerance."""
    topo = target.topology(configuration)
    if topo.redis is None:
        raise DrillError("the stack runs without Redis (no GCS fault tolerance): nothing to kill")
    at = time.time()
    infra.kill_redis(topo.run_dir)
    return _record(Injected("kill_redis", topo.redis.address, at))


def restart_redis(configuration: Configuration) -> dict[str, Any]:
    """Start Redis again with its command line (same address, port, data directory and
    append-only file); returns once it answers PING."""
    topo = target.topology(configuration)
    started = time.time()
    infra.restart_redis(topo.run_dir)
    return {"redis": "restarted", "took_s": round(time.time() - started, 3)}


# --- the network (chaos.links) -------------------------------------------------------


def _leader_epoch(configuration: Configuration) -> int | None:
    leaders = target.leaders(target.topology(configuration), timeout_s=3.0)
    return leaders[0].epoch if leaders else None


def route_keepers_db(configuration: Configuration) -> dict[str, object]:
    """The Keepers' DB traffic through the fault hub's keeper-db link (passing): done once
    per stack by a rolling restart of the Keepers, a no-op afterwards."""
    return links.route_keepers_db(target.run_dir(configuration))


def net_fault(
    configuration: Configuration,
    link: str,
    mode: Mode,
    *,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    reset_every_s: float | None = None,
) -> dict[str, Any]:
    """A fault on the links of ``link`` (``keeper-db``, ``client-a``, ``client-*``): mode
    ``latency``, ``blackhole`` or ``reset`` (``chaos.netfault``)."""
    fault = Fault(
        mode=mode, latency_ms=latency_ms, jitter_ms=jitter_ms, reset_every_s=reset_every_s
    )
    epoch = _leader_epoch(configuration) if link == links.KEEPER_DB else None
    at = time.time()
    matched = links.set_fault(target.run_dir(configuration), link, fault)
    fault_record = _record(Injected(f"net_fault:{link}:{mode}", link, at, epoch=epoch))
    return {**fault_record, "links": matched}


def net_heal(configuration: Configuration, link: str = "*") -> dict[str, Any]:
    """The links of ``link`` pass bytes untouched again."""
    return {"link": link, "links": links.set_fault(target.run_dir(configuration), link, PASS)}


# --- the CPU (chaos.cpuhog) ------------------------------------------------------------

_HOGS: list[Proc] = []
"""CPU hogs this process started and has not stopped."""


def starve_cpu(
    configuration: Configuration, workers: int = 2, seconds: float = 30.0
) -> dict[str, Any]:
    """Start ``workers`` busy processes (stress-ng, else Python) for ``seconds`` at most,
    in a process group of their own; returns at once (the method holds meanwhile)."""
    run_dir = target.run_dir(configuration)
    at = time.time()
    hog = cpuhog.start(workers, seconds, log=run_dir / "logs" / "cpu-hog.log")
    _HOGS.append(hog)
    return {**_record(Injected("starve_cpu", hog.argv[0], at, hog.pid)), "argv": hog.argv}


def stop_cpu_starvation(configuration: Configuration) -> list[int]:  # noqa: ARG001 - API
    """Stop every CPU hog this process started, by process group; their PGIDs."""
    stopped = []
    while _HOGS:
        hog = _HOGS.pop()
        procs.kill(hog)
        stopped.append(hog.pgid)
    return stopped


# --- a Keeper's clock (chaos.clock) ---------------------------------------------------

_FAKED: list[str] = []
"""Keepers this process restarted under libfaketime, in that order (``which`` of
``jump_keeper_clock``)."""


def fake_keeper_clock(
    configuration: Configuration, role: Role = "follower", offset_s: float = 0.0
) -> dict[str, Any]:
    """Restart one live Keeper of ``role`` (not yet faked) under libfaketime, its wall
    clock off by ``offset_s``; ``jump_keeper_clock`` moves it while it runs."""
    lib = clock.library()
    if lib is None:
        raise DrillError("libfaketime is not installed (apt-get install -y libfaketime faketime)")
    topo = target.topology(configuration)
    views = {v.id: v for v in target.keepers(topo)}
    chosen = [
        k
        for k in topo.keepers
        if views[k.id].alive
        and views[k.id].leader == (role == "leader")
        and not clock.is_faked(k.proc.env)
    ]
    if not chosen:
        raise DrillError(f"no live Keeper {role} to fake: {list(views.values())}")
    k = chosen[0]
    rc = clock.offset_file(topo.run_dir, k.id)
    clock.write_offset(rc, offset_s)
    at = time.time()
    infra.signal_keeper(topo.run_dir, k.id, signal.SIGKILL)
    infra.restart_keeper(topo.run_dir, k.id, env=clock.faked_env(k.proc.env, lib, rc))
    _FAKED.append(k.id)
    return _record(Injected(f"fake_keeper_clock:{role}", k.id, at))


def jump_keeper_clock(
    configuration: Configuration, offset_s: float, which: int = 0
) -> dict[str, Any]:
    """Set the ``which``-th faked Keeper's clock offset to ``offset_s``: its running
    process sees its wall clock jump within a second."""
    if not 0 <= which < len(_FAKED):
        raise DrillError(f"no faked Keeper #{which} (faked: {_FAKED})")
    keeper_id = _FAKED[which]
    rc = clock.offset_file(target.run_dir(configuration), keeper_id)
    before = clock.read_offset(rc)
    at = time.time()
    clock.write_offset(rc, offset_s)
    fault = Injected(f"jump_keeper_clock:{round(offset_s - before):+d}s", keeper_id, at)
    return {**_record(fault), "offset_s": round(offset_s)}


def restore_keeper_clocks(configuration: Configuration) -> list[str]:
    """Restart every Keeper running under libfaketime with its real clock; their ids."""
    topo = target.topology(configuration)
    restored = []
    for k in topo.keepers:
        if not clock.is_faked(k.proc.env):
            continue
        infra.signal_keeper(topo.run_dir, k.id, signal.SIGKILL)
        infra.restart_keeper(topo.run_dir, k.id, env=clock.real_env(k.proc.env))
        clock.offset_file(topo.run_dir, k.id).unlink(missing_ok=True)
        restored.append(k.id)
    _FAKED.clear()
    return restored


# --- the autoscaler's drills (chaos.scaling) ------------------------------------------


def start_scaling_load(configuration: Configuration, cluster: str) -> dict[str, Any]:
    """``chaos-scale`` on ``cluster`` at one instance, then a load that makes its
    autoscaler scale out (``chaos.scaling``)."""
    run = scaling.start(target.topology(configuration), cluster)
    return {"service": scaling.SERVICE, "cluster": cluster, "before": run.before}


def stop_scaling_load(configuration: Configuration) -> str | None:
    """End the ``chaos-scale`` load, if one runs; what it saw."""
    return scaling.stop(target.run_dir(configuration))


def start_spread_load(configuration: Configuration) -> dict[str, Any]:
    """``chaos-spread`` at one instance on each of its clusters, then a load its
    autoscalers share (``chaos.spread``)."""
    spread.start(target.topology(configuration))
    return {"service": spread.SERVICE, "clusters": list(spread.CLUSTERS)}


def stop_spread_load(configuration: Configuration) -> str | None:
    """End the ``chaos-spread`` load, if one runs; what it saw."""
    return spread.stop(target.run_dir(configuration))


# --- rollback ------------------------------------------------------------------------


def heal(configuration: Configuration) -> list[str]:
    """Every drill's rollback: stop the autoscaler drills' loads and CPU hogs, let every
    fault link pass, restart faked Keepers with their real clock, then resume paused
    Keepers, restart whatever is dead, and check every cluster's GCS counts all its nodes
    (``infra.heal``); returns what it did."""
    run_dir = target.run_dir(configuration)
    done = [stopped] if (stopped := stop_scaling_load(configuration)) else []
    done += [stopped] if (stopped := stop_spread_load(configuration)) else []
    done += [f"cpu hog {pgid} stopped" for pgid in stop_cpu_starvation(configuration)]
    done += links.heal(run_dir)
    done += [f"keeper {k} on its real clock" for k in restore_keeper_clocks(configuration)]
    return done + infra.heal(run_dir)

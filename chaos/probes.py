"""The drills' probes: what the steady state is, and waits that time a recovery.

Steady-state probes return a bool (the experiments' tolerance is ``true``); the reason
for a ``false`` goes to the ``chaostoolkit`` log. Recovery probes (``wait_…``) poll until
the system is back and return how long that took in seconds, or raise when it is not
back in ``timeout_s`` (Chaos Toolkit records the activity as failed). The runner times a
recovery from the journal (``recovery_from``/``recovery_until`` of a drill), not from
these return values, so the clock can start at an earlier activity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import infra
from chaos import target
from chaos.actions import last_injected
from chaos.checker import ACTIVE
from chaos.target import ActorKind, DrillError
from ha_serving._errors import HAServingError

Configuration = Mapping[str, Any]
log = logging.getLogger("chaostoolkit")

ACTIVITIES = (
    "stack_is_whole",
    "one_leader",
    "serves_everywhere",
    "hold",
    "wait_for_leader",
    "wait_actor_back",
    "wait_control_back",
    "wait_serving_from",
    "wait_ops_settled",
)
"""The functions a drill may name."""


def _poll(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> float:
    """Seconds until ``check()`` held; DrillError after ``timeout_s``. A check that
    raises (a component still down) counts as not yet."""
    started = time.monotonic()
    last_error = ""
    while True:
        try:
            if check():
                return round(time.monotonic() - started, 3)
        except Exception as exc:  # the thing being waited for is down: try again
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - started > timeout_s:
            raise DrillError(f"{what}: not within {timeout_s:.0f}s {last_error}".rstrip())
        time.sleep(every_s)


def _holds(what: str, check: Callable[[], bool], within_s: float) -> bool:
    try:
        _poll(what, check, within_s, every_s=0.25)
    except DrillError as exc:
        log.warning("steady state: %s", exc)
        return False
    return True


# --- steady state --------------------------------------------------------------------


def stack_is_whole(configuration: Configuration, within_s: float = 10.0) -> bool:
    """Every node runs and its GCS counts it, the DB and Redis answer, every Keeper
    answers."""

    def whole() -> bool:
        s: Any = infra.status(target.run_dir(configuration))
        if s is None:
            raise DrillError("no stack")
        missing = [n["name"] for c in s["clusters"] for n in c["nodes"] if not n["alive"]]
        missing += [f"keeper {k['id']}" for k in s["keepers"] if not k["alive"]]
        if not s["db"]["alive"]:
            missing.append("db")
        if s["redis"]["gcs_fault_tolerance"] and not s["redis"]["alive"]:
            missing.append("redis")
        if missing:
            raise DrillError(f"not running: {', '.join(missing)}")
        return True

    return _holds("stack whole", whole, within_s)


def one_leader(configuration: Configuration, within_s: float = 10.0) -> bool:
    """Exactly one live Keeper says it leads."""
    topo = target.topology(configuration)
    return _holds("one Keeper leader", lambda: len(target.leaders(topo)) == 1, within_s)


def serves_everywhere(
    configuration: Configuration, within_s: float = 10.0, calls: int = 10
) -> bool:
    """Each cluster of the service's placement answers every call sent to its own
    proxies. (Not whether they serve the same config: the drills' control client keeps
    updating it; the control-plane checker judges the config once the ops settled.)"""
    topo = target.topology(configuration)
    name = target.service(configuration)
    clusters = target.service_clusters(topo, name)

    def everywhere() -> bool:
        eps = target.endpoints(topo, name)
        for c in clusters:
            answers = target.ask([e.address for e in eps if e.cluster == c], name, calls=calls)
            bad = [a for a in answers if not a.ok or a.cluster != c]
            if not answers or bad:
                raise DrillError(f"{c}: {len(bad)} of {len(answers)} calls failed or strayed")
        return True

    return _holds("service answering on every cluster", everywhere, within_s)


def hold(seconds: float) -> float:
    """Let the load run ``seconds`` with no fault (the control run's method)."""
    time.sleep(seconds)
    return seconds


# --- recovery ------------------------------------------------------------------------


def wait_for_leader(configuration: Configuration, timeout_s: float = 30.0) -> float:
    """Until a live Keeper other than the one the last fault hit leads."""
    topo = target.topology(configuration)
    hit = last_injected()
    gone = hit.target if hit is not None and hit.action.endswith("keeper:leader") else None
    return _poll("a new Keeper leader", lambda: bool(target.leaders(topo, skip=gone)), timeout_s)


def wait_actor_back(
    configuration: Configuration, cluster: str, kind: ActorKind, timeout_s: float = 60.0
) -> float:
    """Until the actor the last ``kill_actor`` hit is alive again in a new process."""
    topo = target.topology(configuration)
    hit = last_injected(f"kill_actor:{kind}")
    if hit is None:
        raise DrillError(f"no {kind} was killed in this run")
    name = target.service(configuration)

    def back() -> bool:
        return any(
            a.name == hit.target and a.pid != hit.pid
            for a in target.actors(topo, cluster, name, kind)
        )

    return _poll(f"{hit.target} alive again", back, timeout_s, every_s=0.25)


LINK_END_S = 0.5
"""After its AppMaster is SIGKILLed, a Keeper writes no heartbeat for its link later than
this (the stream ends with the TCP connection; links beat every 0.3 s), and Ray cannot
start a new AppMaster process sooner: a heartbeat later than this is the new process's."""


def wait_control_back(configuration: Configuration, cluster: str, timeout_s: float = 60.0) -> float:
    """Until the AppMaster of ``cluster`` killed by the last ``kill_actor`` runs again and
    its link to the Keepers heartbeats (it takes instructions again). Returns the seconds
    from the kill to that first heartbeat, by the heartbeat's own time."""
    hit = last_injected("kill_actor:appmaster")
    if hit is None:
        raise DrillError("no AppMaster was killed in this run")
    topo = target.topology(configuration)
    name = target.service(configuration)
    first: list[float] = []

    def linked() -> bool:
        db = target.store(topo)
        try:
            beats = [a for a in db.list_appmasters(name) if a.cluster == cluster]
        finally:
            db.close()
        first[:] = [b.heartbeat_at for b in beats if b.heartbeat_at > hit.at + LINK_END_S]
        return bool(first)

    _poll(f"AppMaster of {cluster} linked", linked, timeout_s, every_s=0.1)
    wait_actor_back(configuration, cluster, "appmaster", timeout_s)  # a new process: check
    return round(min(first) - hit.at, 3)


def wait_serving_from(
    configuration: Configuration, cluster: str, timeout_s: float = 120.0
) -> float:
    """Until discovery lists the service's proxies on ``cluster`` and one answers."""
    topo = target.topology(configuration)
    name = target.service(configuration)

    def serving() -> bool:
        eps = [e.address for e in target.endpoints(topo, name, 2.0) if e.cluster == cluster]
        answers = target.ask(eps, name, calls=1)
        return bool(answers) and answers[0].ok and answers[0].cluster == cluster

    return _poll(f"{name} answering from {cluster}", serving, timeout_s, every_s=0.25)


def wait_ops_settled(configuration: Configuration, timeout_s: float = 60.0) -> float:
    """Until every operation of the service that was pending or running when the store
    first answered this probe has finished (succeeded, superseded or failed)."""
    topo = target.topology(configuration)
    name = target.service(configuration)
    keeper = target.keeper_client(topo)
    pending: set[str] | None = None

    def settled() -> bool:
        nonlocal pending
        try:
            ops = keeper.operations(name)
        except HAServingError:
            return False
        if pending is None:
            pending = {o["op_id"] for o in ops if o["status"] in ACTIVE}
        return not any(o["op_id"] in pending and o["status"] in ACTIVE for o in ops)

    return _poll("pending operations finished", settled, timeout_s, every_s=0.2)

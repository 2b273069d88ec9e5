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
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import infra
from chaos import links, scaling, spread, target
from chaos.actions import Injected, last_injected
from chaos.target import ActorKind, DrillError, KeeperView
from ha_serving._errors import HAServingError
from ha_serving._settings import KeeperSettings
from ha_serving._status import ACTIVE

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
    "wait_stack_whole",
    "wait_one_leader",
    "wait_new_epoch",
    "epoch_holds",
    "no_stale_leader",
    "one_leader_per_epoch",
    "wait_link_traffic",
    "wait_scale_decision",
    "scaling_settled",
    "spread_steady",
    "spread_carried",
    "spread_floor_lifted",
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


def _whole(configuration: Configuration, *, gcs: bool = False) -> bool:
    """Everything runs (``gcs``: and every cluster's GCS answers)."""
    s: Any = infra.status(target.run_dir(configuration))
    if s is None:
        raise DrillError("no stack")
    missing = [n["name"] for c in s["clusters"] for n in c["nodes"] if not n["alive"]]
    missing += [f"GCS of {c['name']}" for c in s["clusters"] if gcs and not c["gcs_alive"]]
    missing += [f"keeper {k['id']}" for k in s["keepers"] if not k["alive"]]
    if not s["db"]["alive"]:
        missing.append("db")
    if s["redis"]["gcs_fault_tolerance"] and not s["redis"]["alive"]:
        missing.append("redis")
    if missing:
        raise DrillError(f"not running: {', '.join(missing)}")
    return True


def stack_is_whole(configuration: Configuration, within_s: float = 10.0) -> bool:
    """Every node runs and its GCS counts it, the DB and Redis answer, every Keeper
    answers."""
    return _holds("stack whole", lambda: _whole(configuration), within_s)


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
            answers = target.ask(
                [e.address for e in eps if e.cluster == c],
                name,
                calls=calls,
                tls=topo.client_tls(),
            )
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
    configuration: Configuration,
    cluster: str,
    kind: ActorKind,
    timeout_s: float = 60.0,
    service: str | None = None,
) -> float:
    """Until the actor the last ``kill_actor`` hit is alive again in a new process.
    ``service``: another service than the drills' own."""
    topo = target.topology(configuration)
    hit = last_injected(f"kill_actor:{kind}")
    if hit is None:
        raise DrillError(f"no {kind} was killed in this run")
    name = service or target.service(configuration)

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


def wait_control_back(
    configuration: Configuration,
    cluster: str,
    timeout_s: float = 60.0,
    service: str | None = None,
) -> float:
    """Until the AppMaster of ``cluster`` killed by the last ``kill_actor`` runs again and
    its link to the Keepers heartbeats (it takes instructions again). Returns the seconds
    from the kill to that first heartbeat, by the heartbeat's own time. ``service``:
    another service than the drills' own."""
    hit = last_injected("kill_actor:appmaster")
    if hit is None:
        raise DrillError("no AppMaster was killed in this run")
    topo = target.topology(configuration)
    name = service or target.service(configuration)
    first: list[float] = []

    def linked() -> bool:
        db = target.store(topo)
        try:
            beats = [a for a in db.list_appmasters(name) if a.cluster == cluster]
        finally:
            db.close()
        # the standby's own link (another actor name) right after the kill, or any
        # link's once the killed one's last beat cannot be written any more
        first[:] = [
            b.heartbeat_at
            for b in beats
            if b.heartbeat_at > hit.at
            and (b.actor_name != hit.target or b.heartbeat_at > hit.at + LINK_END_S)
        ]
        return bool(first)

    _poll(f"AppMaster of {cluster} linked", linked, timeout_s, every_s=0.1)
    # a new process: check
    wait_actor_back(configuration, cluster, "appmaster", timeout_s, service=service)
    return round(min(first) - hit.at, 3)


def wait_serving_from(
    configuration: Configuration, cluster: str, timeout_s: float = 120.0
) -> float:
    """Until discovery lists the service's proxies on ``cluster`` and one answers."""
    topo = target.topology(configuration)
    name = target.service(configuration)

    def serving() -> bool:
        eps = [e.address for e in target.endpoints(topo, name, 2.0) if e.cluster == cluster]
        answers = target.ask(eps, name, calls=1, tls=topo.client_tls())
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


def wait_stack_whole(configuration: Configuration, timeout_s: float = 60.0) -> float:
    """Until the stack is whole again by itself, every GCS answering: the drill restarts
    nothing; a head whose GCS exited with Redis comes back only through the stack's node
    supervisor (``infra.supervise``), and without it this times out."""
    return _poll(
        "the stack whole again", lambda: _whole(configuration, gcs=True), timeout_s, every_s=0.5
    )


# --- Keeper leadership under DB, clock and CPU faults ------------------------------------


def _lease_ttl(topo: infra.Topology) -> float:
    """The Keepers' lease TTL, as `up` gave it to them."""
    for k in topo.keepers:
        if value := k.proc.env.get("HA_SERVING_KEEPER_TTL"):
            return float(value)
    return KeeperSettings().lease_ttl_s


def _last_keeper_fault() -> Injected | None:
    """The latest fault that recorded the leader's epoch (a fault aimed at the Keepers)."""
    hit = last_injected()
    return hit if hit is not None and hit.epoch is not None else None


@dataclass(frozen=True)
class _Sample:
    start: float
    """Wall clock when the Keepers were asked."""
    end: float
    views: list[KeeperView]

    @property
    def claims(self) -> list[KeeperView]:
        return [v for v in self.views if v.alive and v.leader]


def _sample(
    configuration: Configuration, seconds: float, every_s: float, timeout_s: float
) -> list[_Sample]:
    """Every Keeper's Status every ``every_s`` for ``seconds`` (each round at most
    ``timeout_s``; at most seconds / every_s + 1 rounds)."""
    topo = target.topology(configuration)
    rounds = math.floor(seconds / every_s) + 1
    deadline = time.monotonic() + seconds
    samples = []
    for _ in range(rounds):
        started = time.time()
        views = target.keepers(topo, timeout_s=timeout_s)
        samples.append(_Sample(started, time.time(), views))
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(every_s, left))
    return samples


def wait_one_leader(configuration: Configuration, timeout_s: float = 30.0) -> float:
    """Until exactly one Keeper says it leads."""
    topo = target.topology(configuration)
    return _poll(
        "one Keeper leader", lambda: len(target.leaders(topo, timeout_s=3.0)) == 1, timeout_s
    )


def wait_new_epoch(configuration: Configuration, timeout_s: float = 30.0) -> float:
    """Until exactly one Keeper leads, at an epoch above the one the last fault aimed at
    the Keepers found: the old term is over (its lease could not be renewed)."""
    hit = _last_keeper_fault()
    if hit is None or hit.epoch is None:
        raise DrillError("no fault aimed at the Keepers recorded their epoch in this run")
    before = hit.epoch
    topo = target.topology(configuration)

    def newer() -> bool:
        found = target.leaders(topo, timeout_s=3.0)
        return len(found) == 1 and found[0].epoch > before

    return _poll(f"one Keeper leading above epoch {before}", newer, timeout_s, every_s=0.25)


def epoch_holds(
    configuration: Configuration, seconds: float, every_s: float = 0.5, timeout_s: float = 5.0
) -> dict[str, Any]:
    """For ``seconds``, the leadership does not change hands: every Keeper that answers
    and leads does so at the epoch the last fault aimed at the Keepers found. Raises when
    it changed, or when no Keeper answered at all; returns the epochs seen and the share
    of samples in which some Keeper led (a leader that cannot renew in time stops acting
    for a while without losing its lease: reported, not judged)."""
    samples = _sample(configuration, seconds, every_s, timeout_s)
    answered = sum(1 for s in samples for v in s.views if v.alive)
    if answered == 0:
        raise DrillError(f"no Keeper answered Status within {timeout_s:g}s for {seconds:g}s")
    epochs = sorted({v.epoch for s in samples for v in s.claims})
    hit = _last_keeper_fault()
    expected = [hit.epoch] if hit is not None and hit.epoch is not None else epochs[:1]
    if len(epochs) > 1 or (epochs and epochs != expected):
        raise DrillError(f"the leadership changed hands: epochs {epochs}, before {expected}")
    led = sum(1 for s in samples if s.claims) / len(samples)
    return {"samples": len(samples), "epochs": epochs, "led_fraction": round(led, 3)}


def no_stale_leader(
    configuration: Configuration, seconds: float, grace_s: float = 1.0, every_s: float = 0.5
) -> dict[str, Any]:
    """For ``seconds`` from now, while the Keepers cannot reach the DB: no Keeper that
    answers says it leads once its lease must have run out (the last fault's time plus
    the lease TTL plus ``grace_s``): a leader that cannot renew steps down in time.
    A Keeper that does not answer (its Status reads the DB too) claims nothing."""
    hit = _last_keeper_fault()
    if hit is None:
        raise DrillError("no fault aimed at the Keepers was recorded in this run")
    topo = target.topology(configuration)
    expired = hit.at + _lease_ttl(topo) + grace_s
    samples = _sample(configuration, seconds, every_s, timeout_s=1.0)
    stale = [f"{v.id}@{v.epoch}" for s in samples if s.start > expired for v in s.claims]
    if stale:
        raise DrillError(f"Keepers still led after their lease ran out: {sorted(set(stale))}")
    answered = sum(1 for s in samples for v in s.views if v.alive)
    return {"samples": len(samples), "answers": answered, "claims_past_lease": 0}


def one_leader_per_epoch(
    configuration: Configuration, seconds: float, every_s: float = 0.25
) -> dict[str, Any]:
    """For ``seconds``: no epoch is claimed by two Keepers, and no two Keepers lead at
    once (in a round of Status calls shorter than the leader's safety margin, a quarter
    of the TTL, which a handover can never fit in). Raises on either."""
    topo = target.topology(configuration)
    margin = _lease_ttl(topo) / 4
    samples = _sample(configuration, seconds, every_s, timeout_s=1.0)
    holders: dict[int, set[str]] = {}
    for s in samples:
        for v in s.claims:
            holders.setdefault(v.epoch, set()).add(v.id)
    shared = {e: sorted(ids) for e, ids in holders.items() if len(ids) > 1}
    together = [
        sorted(f"{v.id}@{v.epoch}" for v in s.claims)
        for s in samples
        if len(s.claims) > 1 and s.end - s.start < margin
    ]
    if shared or together:
        raise DrillError(f"split leadership: epochs held by two {shared}, at once {together}")
    return {"samples": len(samples), "epochs": {str(e): sorted(h) for e, h in holders.items()}}


# --- the network's fault links -------------------------------------------------------


def wait_link_traffic(
    configuration: Configuration, link: str = "client-*", timeout_s: float = 30.0
) -> float:
    """Until bytes flow through the fault links of ``link`` (more delivered than when the
    probe began): the load goes through them (or, after a fault, again)."""
    run_dir = target.run_dir(configuration)
    first: list[int] = []

    def flowing() -> bool:
        found = links.link_status(run_dir, link)
        if not found:
            raise DrillError(f"no fault link matches {link!r}: is the load routed through links?")
        total = sum(int(str(s["bytes_up"])) + int(str(s["bytes_down"])) for s in found)
        if not first:
            first.append(total)
            return False
        return total > first[0]

    return _poll(f"traffic through the {link} links", flowing, timeout_s, every_s=0.2)


# --- the autoscaler's drills (chaos.scaling) ------------------------------------------


def wait_scale_decision(configuration: Configuration, timeout_s: float = 60.0) -> dict[str, Any]:
    """Until ``chaos-scale``'s autoscaler decides to scale out under the drill's load;
    the decision, and how many instances served then."""
    return scaling.wait_decision(target.topology(configuration), timeout_s)


def scaling_settled(configuration: Configuration, timeout_s: float = 120.0) -> dict[str, Any]:
    """Until ``chaos-scale`` runs what its autoscaler last decided, then the checks of
    ``chaos.scaling.check`` (no decision lost or doubled, no call run twice); raises
    naming what failed. Seconds from the last fault injected to then, with the figures."""
    fault = last_injected()
    if fault is None:
        raise DrillError("no fault was injected in this run")
    return scaling.settle(target.topology(configuration), fault.at, timeout_s)


def spread_steady(configuration: Configuration, timeout_s: float = 120.0) -> dict[str, Any]:
    """Until ``chaos-spread``'s autoscalers have settled on their shares of the load
    (``chaos.spread.wait_steady``); each cluster's own demand."""
    return spread.wait_steady(target.topology(configuration), timeout_s)


def spread_carried(
    configuration: Configuration, survivor: str, timeout_s: float = 90.0, max_s: float = 30.0
) -> dict[str, Any]:
    """Until ``survivor`` serves the instances the whole ``chaos-spread`` load needs,
    within ``max_s`` of the last fault injected (``chaos.spread.check``); when the
    Keeper's floor came, and the survivor's decisions since the fault."""
    fault = last_injected()
    if fault is None:
        raise DrillError("no fault was injected in this run")
    return spread.wait_carried(target.topology(configuration), survivor, fault.at, timeout_s, max_s)


def spread_floor_lifted(
    configuration: Configuration, survivor: str, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Until the Keeper's floor under ``chaos-spread`` on ``survivor`` is 0 again."""
    return spread.wait_lifted(target.topology(configuration), survivor, timeout_s)

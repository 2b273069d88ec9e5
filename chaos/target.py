"""What the drills act on and look at: the stack's topology, the Keepers' roles, a
service's actors on one cluster (Ray's state API, through the head's dashboard) and its
endpoints (the Keepers' discovery, as a client sees them).

Every function takes Chaos Toolkit's ``configuration`` or what was read from it:
``run_dir`` (the stack's run directory) and ``service`` (the drill service's name).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tenacity

import infra
from ha_serving._errors import CallError, StackError
from ha_serving._jobstate import JobState
from ha_serving.appmaster import NAMESPACE, appmaster_name
from ha_serving.appmaster._standby import Holder, lease_name
from ha_serving.client import Client, Discovery, EndpointInfo
from ha_serving.keeper import KeeperClient, keeper_status
from ha_serving.store import Store
from ha_serving.util.tls import TlsFiles
from infra import procs
from infra.topology import Keeper

Role = Literal["leader", "follower"]
ActorKind = Literal["worker", "proxy", "appmaster"]


class DrillError(RuntimeError):
    """The drill cannot do what it was asked (no such target, a wait that timed out)."""


def run_dir(configuration: Mapping[str, Any]) -> Path:
    return Path(str(configuration.get("run_dir") or ".run")).resolve()


def service(configuration: Mapping[str, Any]) -> str:
    return str(configuration.get("service") or "chaos-drill")


def topology(configuration: Mapping[str, Any]) -> infra.Topology:
    where = run_dir(configuration)
    topo = infra.load(where)
    if topo is None:
        raise StackError(f"no stack is up in {where} (run `make up`)")
    return topo


def keeper_client(topo: infra.Topology, timeout_s: float = 5.0) -> KeeperClient:
    return KeeperClient(
        [k.address for k in topo.keepers],
        token=topo.keeper_token(),
        timeout_s=timeout_s,
        tls=topo.client_tls(),
    )


def store(topo: infra.Topology) -> Store:
    return Store.connect(topo.db.ref(), connect_timeout_s=2.0, query_timeout_s=5.0)


def poll(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> float:
    """Seconds until ``check()`` held; DrillError naming ``what`` after ``timeout_s``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise DrillError(f"{what}: not within {timeout_s:g} s")
        time.sleep(every_s)
    return time.monotonic() - start


def ops_done(topo: infra.Topology, service: str, ops: Sequence[str], timeout_s: float) -> None:
    """Until every operation of ``ops`` (of ``service``) succeeded; DrillError if one
    failed or was aborted, or after ``timeout_s``."""
    keeper = keeper_client(topo, timeout_s=10.0)
    deadline = time.monotonic() + timeout_s
    for op in ops:
        while True:
            status = (keeper.operation(op) or {}).get("status")
            if status == "succeeded":
                break
            if status in {"failed", "aborted"}:
                raise DrillError(f"{service}: operation {op} {status}")
            if time.monotonic() > deadline:
                raise DrillError(f"{service}: operation {op} not done in {timeout_s:g} s")
            time.sleep(0.25)


def job_state(topo: infra.Topology, cluster: str, service: str) -> JobState | None:
    """The AppMaster state of ``service`` on ``cluster``, as saved in the store."""
    db = store(topo)
    try:
        found = db.load_appmaster_state(cluster, service)
    finally:
        db.close()
    return None if found is None else JobState.model_validate(found[0])


# --- Keepers -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeeperView:
    id: str
    alive: bool
    """Its process runs and it answered Status (a paused Keeper does not)."""
    leader: bool = False
    epoch: int = 0


def keepers(
    topo: infra.Topology, *, skip: str | None = None, timeout_s: float = 1.0
) -> list[KeeperView]:
    """Every Keeper's view of itself, asked at once (a paused one costs its timeout,
    not more); ``skip`` is reported dead without asking (a Keeper a drill paused)."""
    token = topo.keeper_token()
    tls = topo.client_tls()

    def view(k: Keeper) -> KeeperView:
        if k.id == skip or not procs.alive(k.proc):
            return KeeperView(k.id, alive=False)
        s = keeper_status(k.address, token=token, timeout_s=timeout_s, tls=tls)
        return KeeperView(k.id, alive=bool(s["alive"]), leader=bool(s["leader"]), epoch=s["epoch"])

    with ThreadPoolExecutor(max_workers=len(topo.keepers) or 1) as pool:
        return list(pool.map(view, topo.keepers))


def leaders(
    topo: infra.Topology, *, skip: str | None = None, timeout_s: float = 1.0
) -> list[KeeperView]:
    """Live Keepers that say they lead, highest epoch first."""
    return sorted(
        (k for k in keepers(topo, skip=skip, timeout_s=timeout_s) if k.alive and k.leader),
        key=lambda k: -k.epoch,
    )


def pick_keeper(topo: infra.Topology, role: Role) -> KeeperView:
    views = keepers(topo)
    live = [k for k in views if k.alive]
    if role == "leader":
        found = sorted((k for k in live if k.leader), key=lambda k: -k.epoch)
    else:
        found = [k for k in live if not k.leader]
    if not found:
        raise DrillError(f"no live Keeper {role} (Keepers: {views})")
    return found[0]


# --- actors --------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorView:
    name: str
    pid: int
    state: str


def _pattern(service_name: str, kind: ActorKind) -> re.Pattern[str]:
    s = re.escape(service_name)
    return re.compile(
        {
            "worker": rf"{s}-w\d+(-r\d+)?",
            "proxy": rf"{s}-p\d+",
            # the active one and its warm standby (appmaster._standby)
            "appmaster": re.escape(appmaster_name(service_name)) + r"(-2)?",
        }[kind]
    )


STATE_API_WAIT_S = 30.0
"""How long ``actors`` waits for a cluster's state API (its head's dashboard) to answer."""


def dashboard_url(topo: infra.Topology, cluster: str) -> str:
    head = topo.cluster(cluster).head
    if head.ports.dashboard is None:
        raise DrillError(f"cluster {cluster} has no dashboard (Ray's state API needs it)")
    return f"http://{head.address}:{head.ports.dashboard}"


def actors(
    topo: infra.Topology, cluster: str, service_name: str, kind: ActorKind
) -> list[ActorView]:
    """The service's live actors of ``kind`` on ``cluster``, by name. Ray's state API is
    the head's dashboard, which comes up some seconds after its GCS when the head
    restarts: it is asked again for up to ``STATE_API_WAIT_S`` while it cannot be
    reached (a drill right after ``kill-head`` would fail on it otherwise)."""
    from ray.util.state import list_actors  # heavy import: only drills that need it pay
    from ray.util.state.exception import ServerUnavailable

    for attempt in tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ServerUnavailable),
        stop=tenacity.stop_after_delay(STATE_API_WAIT_S),
        wait=tenacity.wait_fixed(0.5),
        reraise=True,
    ):
        with attempt:
            rows = list_actors(
                address=dashboard_url(topo, cluster),
                filters=[("ray_namespace", "=", NAMESPACE), ("state", "=", "ALIVE")],
                limit=10_000,
                timeout=10,
                raise_on_missing_output=False,
            )
    pattern = _pattern(service_name, kind)
    found = [
        ActorView(str(r.name), int(r.pid or 0), str(r.state))
        for r in rows
        if r.name and pattern.fullmatch(r.name) and r.pid
    ]
    if kind == "appmaster":  # the active one (the lease's holder) first
        active = active_appmaster(topo, cluster, service_name)
        return sorted(found, key=lambda a: (f"{a.name}:{a.pid}" != active, a.name))
    return sorted(found, key=lambda a: a.name)


def active_appmaster(topo: infra.Topology, cluster: str, service_name: str) -> str | None:
    """``<actor>:<pid>`` of the AppMaster that holds the service's lease on ``cluster``
    (None: no lease, a service with one AppMaster)."""
    db = store(topo)
    try:
        lease = db.get_lease(lease_name(cluster, service_name))
    finally:
        db.close()
    holder = Holder.parse(lease.holder) if lease is not None and lease.holder else None
    return None if holder is None else f"{holder.actor}:{holder.pid}"


# --- endpoints and answers -----------------------------------------------------------


def endpoints(
    topo: infra.Topology, service_name: str, timeout_s: float = 5.0
) -> list[EndpointInfo]:
    """The service's endpoints as the Keepers' discovery gives them to a client."""
    discovery = Discovery(
        service_name,
        [k.address for k in topo.keepers],
        token=topo.discovery_token(),
        on_change=lambda _: None,
        tls=topo.client_tls(),
    ).start()
    try:
        deadline = time.monotonic() + timeout_s
        while not discovery.endpoints and time.monotonic() < deadline:
            time.sleep(0.1)
        return discovery.endpoints
    finally:
        discovery.stop()


@dataclass(frozen=True)
class Answer:
    ok: bool
    cluster: str
    seq: int | None
    code: str = "OK"


def ask(
    addresses: list[str],
    service_name: str,
    *,
    calls: int,
    tls: TlsFiles | None,
    timeout_s: float = 2.0,
) -> list[Answer]:
    """``calls`` calls of the service's ``served`` method through ``addresses`` only, over
    TLS verified with ``tls`` (the stack's CA: ``Topology.client_tls()``) or plaintext."""
    if not addresses:
        return []
    answers = []
    with Client(addresses, timeout_s=timeout_s, tls=tls) as client:
        for _ in range(calls):
            try:
                reply = client.call_raw(service_name, "served", b"null", timeout=timeout_s)
            except CallError as exc:
                answers.append(Answer(False, "", None, exc.code))
                continue
            seq = _seq(reply.payload)
            answers.append(Answer(True, reply.cluster, seq))
    return answers


def _seq(payload: bytes) -> int | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if isinstance(seq, int) else None


def service_clusters(topo: infra.Topology, service_name: str) -> list[str]:
    """The clusters of the service's placement, from its record in the store."""
    spec = keeper_client(topo).get_service(service_name)["spec"]
    return [c["name"] for c in spec.get("placement", {}).get("clusters", [])]

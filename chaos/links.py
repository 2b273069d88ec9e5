"""The drills' network faults on the stack: the fault hub's process (``chaos.netfault``),
its links, and the Keepers routed through one.

Two kinds of link:

- ``keeper-db``: Keepers → ``127.0.100.3:<db port>`` (the hub) → the private DB.
  ``route_keepers_db`` restarts each Keeper, followers first and the leader last, with
  that address in its DB URL (a rolling restart: one leader failover, once per stack);
  they stay routed, the link passing bytes untouched between faults, until ``teardown``
  restores the direct URL. AppMasters get their DB URL from the Keeper that submits their
  serving job, so an AppMaster started while the Keepers are routed goes through the
  link too; those started before (the drill service's, deployed first) do not.
- ``client-<cluster>``: the runner's load callers → ``127.0.250.1:<port>`` (the hub) →
  one proxy of ``<cluster>``: ``load_route`` gives each endpoint discovery reports a link
  of its own, so a fault can hit one cluster's proxies or all of them. Probes and the
  steady state still call the proxies directly: they judge the system, not the network.

The hub is one process in its own process group, recorded in ``<run_dir>/netfault/``,
started on first use and stopped by PGID in ``teardown``. It also exits on its own when
the stack's topology file goes away or belongs to another run (``make down``), and after
``MAX_LIFETIME_S``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

import infra
from chaos import target
from chaos.netfault import PASS, Fault, HubClient, NetfaultError
from chaos.target import DrillError
from ha_serving.client import EndpointInfo
from infra import procs
from infra.topology import Proc, Topology

log = logging.getLogger("chaostoolkit")

ROOT = Path(__file__).resolve().parents[1]
KEEPER_DB = "keeper-db"
KEEPER_DB_HOST = "127.0.100.3"
"""The keeper-db link's own loopback address (the DB is .1, Redis .2); same port as the DB."""
CLIENT_HOST = "127.0.250.1"
MAX_LIFETIME_S = 12 * 3600.0
START_TIMEOUT_S = 10.0

Route = Callable[[EndpointInfo], str]


class HubRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proc: Proc
    control: Path
    run_id: str


def _dir(run_dir: Path) -> Path:
    return run_dir / "netfault"


def _record_path(run_dir: Path) -> Path:
    return _dir(run_dir) / "hub.json"


def control_path(run_dir: Path) -> Path:
    """The hub's control socket: in the run directory, or under /tmp (mode 0600) when
    that path is too long for a unix socket (108 bytes)."""
    path = _dir(run_dir) / "control.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:10]  # noqa: S324 - a name
    return Path("/tmp") / f"hasrv-netfault-{digest}.sock"  # noqa: S108 - per run dir, 0600


def _load_record(run_dir: Path) -> HubRecord | None:
    try:
        return HubRecord.model_validate_json(_record_path(run_dir).read_text())
    except (OSError, ValueError):
        return None


def running_hub(run_dir: Path) -> HubClient | None:
    """The hub of this stack if it runs and answers."""
    record = _load_record(run_dir)
    if record is None or not procs.alive(record.proc):
        return None
    client = HubClient(record.control)
    return client if client.ping() else None


def hub(run_dir: Path) -> HubClient:
    """The hub of this stack, started if it does not run."""
    found = running_hub(run_dir)
    if found is not None:
        return found
    topo = target.topology({"run_dir": str(run_dir)})
    stale = _load_record(run_dir)
    if stale is not None and procs.alive(stale.proc):  # runs but does not answer
        procs.kill(stale.proc)
    directory = _dir(topo.run_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    control = control_path(topo.run_dir)
    argv = [
        sys.executable, "-m", "chaos.netfault",
        "--control", str(control),
        "--watch", str(topo.run_dir / "topology.json"),
        "--watch-text", topo.run_id,
        "--max-lifetime-s", str(MAX_LIFETIME_S),
    ]  # fmt: skip
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = procs.spawn(argv, env={"PYTHONPATH": path}, log=topo.run_dir / "logs" / "netfault.log")
    record = HubRecord(proc=proc, control=control, run_id=topo.run_id)
    _record_path(topo.run_dir).write_text(record.model_dump_json(indent=2))
    client = HubClient(control)
    with contextlib.suppress(TimeoutError):  # judged just below
        procs.wait_for(
            "fault hub", lambda: not procs.alive(proc) or client.ping(), timeout_s=START_TIMEOUT_S
        )
    if not procs.alive(proc) or not client.ping():
        procs.kill(proc)
        raise DrillError(f"the fault hub did not start: {procs.log_tail(proc.log)}")
    return client


def stop_hub(run_dir: Path) -> bool:
    """Stop the hub by its process group; True if one ran."""
    record = _load_record(run_dir)
    if record is None:
        return False
    ran = procs.kill(record.proc, grace_s=2.0) > 0
    record.control.unlink(missing_ok=True)
    _record_path(run_dir).unlink(missing_ok=True)
    return ran


def set_fault(run_dir: Path, group: str, fault: Fault) -> int:
    """``fault`` on the links of ``group`` (a pattern: ``client-*``); DrillError when no
    hub runs or no link matches (a fault that would hit nothing must not pass)."""
    client = running_hub(run_dir)
    if client is None:
        raise DrillError("no fault hub runs for this stack (nothing is routed through links)")
    try:
        matched = client.set(group, fault)
    except NetfaultError as exc:
        raise DrillError(str(exc)) from None
    if matched == 0 and fault != PASS:
        raise DrillError(f"no fault link matches {group!r}: is the load routed through links?")
    return matched


def link_status(run_dir: Path, group: str = "*") -> list[dict[str, object]]:
    """The hub's links in ``group`` (a pattern), with their fault and counters."""
    client = running_hub(run_dir)
    if client is None:
        return []
    return [s for s in client.status() if fnmatch.fnmatchcase(str(s["group"]), group)]


# --- Keepers -> DB ----------------------------------------------------------------------


def _db_addresses(topo: Topology) -> tuple[str, str]:
    """The private DB's address, and the keeper-db link's."""
    db = topo.db
    if db.kind != "mariadb" or db.address is None or db.proc is None:
        raise DrillError(
            f"the keeper-db link needs the stack's private DB (this stack's is {db.kind})"
        )
    port = db.address.rpartition(":")[2]
    return db.address, f"{KEEPER_DB_HOST}:{port}"


def _swapped(proc: Proc, old: str, new: str) -> tuple[list[str], dict[str, str]] | None:
    """The Keeper's argv and environment with its DB URL's ``@old/`` made ``@new/``,
    wherever the URL is (a flag or a variable); None when it does not have ``@old/``."""
    a, b = f"@{old}/", f"@{new}/"
    argv = [x.replace(a, b) for x in proc.argv]
    env = {k: v.replace(a, b) for k, v in proc.env.items()}
    if argv == proc.argv and env == proc.env:
        return None
    return argv, env


def _reroute(run_dir: Path, old: str, new: str) -> list[str]:
    """Restart every Keeper whose DB URL names ``old`` with ``new`` instead: followers
    first, the leader last (one failover); returns their ids."""
    topo = target.topology({"run_dir": str(run_dir)})
    leading = {k.id for k in target.leaders(topo)}
    done = []
    for k in sorted(topo.keepers, key=lambda k: k.id in leading):
        swapped = _swapped(k.proc, old, new)
        if swapped is None:
            continue
        argv, env = swapped
        infra.signal_keeper(run_dir, k.id, signal.SIGKILL)
        infra.restart_keeper(run_dir, k.id, argv=argv, env=env)
        done.append(k.id)
    return done


def route_keepers_db(run_dir: Path) -> dict[str, object]:
    """The keeper-db link (passing) and every Keeper routed through it; idempotent."""
    topo = target.topology({"run_dir": str(run_dir)})
    direct, via = _db_addresses(topo)
    client = hub(topo.run_dir)
    try:
        listen = client.link(KEEPER_DB, direct, via)
    except NetfaultError as exc:
        raise DrillError(f"keeper-db link on {via}: {exc}") from None
    return {"link": listen, "rerouted": _reroute(topo.run_dir, direct, via)}


def keepers_routed(topo: Topology) -> bool:
    try:
        direct, via = _db_addresses(topo)
    except DrillError:
        return False
    return any(_swapped(k.proc, via, direct) is not None for k in topo.keepers)


# --- clients -> proxies -----------------------------------------------------------------


def client_group(cluster: str) -> str:
    return "client-" + (re.sub(r"[^a-z0-9-]", "-", cluster.lower())[:48] or "unknown")


def load_route(run_dir: Path) -> Route:
    """Maps each endpoint discovery reports to its link's address (the hub starts now).
    An endpoint the hub cannot take (it died) is called directly, and logged: the drills'
    ``links_in_use`` probe then finds the link without traffic."""
    client = hub(run_dir)

    def route(e: EndpointInfo) -> str:
        try:
            return client.link(client_group(e.cluster), e.address, f"{CLIENT_HOST}:0")
        except NetfaultError as exc:
            log.warning("endpoint %s called directly, not through a link: %s", e.address, exc)
            return e.address

    return route


# --- heal and teardown ------------------------------------------------------------------


def heal(run_dir: Path) -> list[str]:
    """Every link passing again; if the Keepers are routed and the hub died, a new hub
    and keeper-db link (or the Keepers would have no DB). What it did."""
    topo = target.topology({"run_dir": str(run_dir)})
    client = running_hub(topo.run_dir)
    done = []
    if client is None:
        if not keepers_routed(topo):
            return []
        direct, via = _db_addresses(topo)
        client = hub(topo.run_dir)
        client.link(KEEPER_DB, direct, via)
        done.append("fault hub restarted")
    passing = client.set("*", PASS)
    if passing:
        done.append(f"{passing} fault links passing")
    return done


def teardown(run_dir: Path, *, restore_keepers: bool) -> list[str]:
    """The end of a run: the Keepers back on the direct DB URL (``restore_keepers``: a
    stack that outlives the run), then the hub stopped by its process group."""
    done = []
    topo = infra.load(run_dir.resolve())
    if restore_keepers and topo is not None and keepers_routed(topo):
        heal(run_dir)  # the link must pass while the Keepers are moved off it
        direct, via = _db_addresses(topo)
        done += [f"keeper {k} on the direct DB URL" for k in _reroute(topo.run_dir, via, direct)]
    if stop_hub(run_dir.resolve()):
        done.append("fault hub stopped")
    return done

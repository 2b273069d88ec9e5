"""``ha-serving cluster register|list|remove``: the Keepers' cluster registry by hand.

`up` registers the local stack's clusters itself; a Ray cluster made elsewhere (KubeRay
through terraform/, or ``ray start`` on other machines) joins the Keepers here: once its
row is in the registry, the Keepers may place services on it (``placement``), start its
serving jobs through its Job Submission API (the dashboard URL) and watch its GCS.

The registry lives in the Keepers' state store: ``HA_SERVING_DB_URL`` (never a command
line option: the URL may hold a password), else the DB of the local stack in
``--run-dir``. Input is validated before anything is written, with one line per error.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import typer
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from rich.table import Table

import infra
from ha_serving._errors import InvalidSpec, StackError, UserError
from ha_serving._status import OperationStatus
from ha_serving.cli._common import RunDir, out, run_dir_of, settings_for
from ha_serving.store import ClusterRecord, OperationRecord, Store, StoreRef

NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
"""As a service's ``placement`` names clusters (``ClusterPlacement.name``); also a valid
Kubernetes label value and DNS label, so a KubeRay cluster can carry the same name."""
TIER = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
ZONE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
"""A Kubernetes label value (``topology.kubernetes.io/zone``: us-east-1a, zone-b...)."""
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
CHECK_TIMEOUT_S = 2.0


class ClusterRefused(UserError):
    """The registry change was refused; the message says why and what to do."""

    grpc_status = "FAILED_PRECONDITION"


class Registration(BaseModel):
    """What ``cluster register`` takes, checked field by field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    gcs: str
    dashboard: str
    tier: str
    zone: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(
                f"{v!r} is not a cluster name: lower-case letters, digits and '-', "
                "starting with a letter, at most 31 characters"
            )
        return v

    @field_validator("tier")
    @classmethod
    def _tier(cls, v: str) -> str:
        if not TIER.match(v):
            raise ValueError(
                f"{v!r} is not a tier: lower-case letters, digits and '-', at most 31 characters"
            )
        return v

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if not ZONE.match(v):
            raise ValueError(
                f"{v!r} is not a zone: letters, digits, '.', '_' and '-', at most 63 "
                "characters, starting and ending with a letter or digit"
            )
        return v

    @field_validator("gcs")
    @classmethod
    def _gcs(cls, v: str) -> str:
        host, port = split_host_port(v)
        return f"{host}:{port}"

    @field_validator("dashboard")
    @classmethod
    def _dashboard(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{v!r} is not an http(s) URL, e.g. http://10.0.0.5:8265")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the URL must not carry credentials (user:password@)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{v!r}: give the dashboard's root, e.g. http://10.0.0.5:8265")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{v!r}: the port is not a number in 1-65535") from None
        if port == 0:
            raise ValueError(f"{v!r}: the port is not a number in 1-65535")
        _check_host(parts.hostname or "", v)
        return f"{parts.scheme}://{parts.netloc}"

    def record(self) -> ClusterRecord:
        return ClusterRecord(self.name, self.gcs, self.dashboard, self.zone, self.tier)


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` into its parts; ValueError saying what is wrong. The Keepers dial
    ``host:port`` as written, so IPv6 literals are not taken (use a host name)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not host:port, e.g. 10.0.0.5:6379")
    if ":" in host or host.startswith("["):
        raise ValueError(f"{address!r}: IPv6 addresses are not supported, use a host name")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r}: the port is not a number in 1-65535")
    _check_host(host, address)
    return host, int(port)


def _check_host(host: str, given: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME.match(host):
            raise ValueError(
                f"{given!r}: {host!r} is neither an IP address nor a host name"
            ) from None


def parse_registration(**fields: str) -> Registration:
    """The validated registration, or InvalidSpec listing every bad field on one line."""
    try:
        return Registration(**fields)
    except ValidationError as exc:
        problems = [
            f"--{'.'.join(str(p) for p in e['loc'])}: {_reason(e['msg'])}" for e in exc.errors()
        ]
        raise InvalidSpec("cluster registration", problems) from None


def _reason(message: str) -> str:
    return message.removeprefix("Value error, ")


@dataclass(frozen=True)
class Usage:
    """What still runs on a cluster, as the registry knows it."""

    services: list[str]
    """Services placed on it: by their newest operation, or deployed on it directly."""
    endpoints: list[str]
    """Live (unexpired) proxy endpoints on it, as ``service@address``."""

    def __bool__(self) -> bool:
        return bool(self.services or self.endpoints)

    def describe(self) -> str:
        parts = []
        if self.services:
            parts.append(f"services {', '.join(self.services)}")
        if self.endpoints:
            parts.append(f"endpoints {', '.join(self.endpoints)}")
        return "; ".join(parts)


def usage_of(store: Store, cluster: str) -> Usage:
    """Services placed on ``cluster`` and its live endpoints. A service's placement is
    its newest operation that was not superseded (the clusters the Keepers keep an
    AppMaster on), or the cluster it was deployed on directly (``--cluster``)."""
    newest: dict[str, OperationRecord] = {}
    for op in store.list_operations():  # oldest first: the last one per service wins
        if op.status != OperationStatus.SUPERSEDED:
            newest[op.service] = op
    placed = {s for s, op in newest.items() if cluster in _targets(op.plan)}
    names = set(newest)
    for record in store.list_services():
        names.add(record.name)
        if record.spec.get("direct") == cluster:
            placed.add(record.name)
    endpoints = [
        f"{e.service}@{e.address}"
        for name in sorted(names)
        for e in store.list_endpoints(name)
        if e.cluster == cluster
    ]
    return Usage(sorted(placed), endpoints)


def _targets(plan: object) -> list[str]:
    if not isinstance(plan, dict):
        return []
    return [str(t.get("name")) for t in plan.get("clusters", []) if isinstance(t, dict)]


def open_store(run_dir: RunDir) -> Store:
    """The Keepers' state store: HA_SERVING_DB_URL, else the local stack's DB."""
    settings = settings_for(run_dir)
    url = settings.store.url
    if url:
        ref = StoreRef.of(url, settings.store.password_file)
    else:
        path = run_dir_of(run_dir)
        topo = infra.load(path.resolve())
        if topo is None:
            raise StackError(
                "no state store: set HA_SERVING_DB_URL to the Keepers' DB, or bring the "
                f"local stack up (`make up`; none is up in {path})"
            )
        ref = topo.db.ref()
    return Store.connect(ref, connect_timeout_s=settings.store.connect_timeout_s)


def answers(host: str, port: int, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port succeeds, else why it did not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _check_reachable(reg: Registration) -> None:
    dash = urlsplit(reg.dashboard)
    targets = [
        ("GCS", reg.gcs, *split_host_port(reg.gcs)),
        (
            "dashboard",
            reg.dashboard,
            dash.hostname or "",
            dash.port or (443 if dash.scheme == "https" else 80),
        ),
    ]
    for what, given, host, port in targets:
        why = answers(host, port)
        if why is not None:
            raise ClusterRefused(
                f"cluster {reg.name}: its {what} {given} does not answer ({why}); "
                "check the address, or register it anyway with --no-check"
            )


# --- commands (added to the `cluster` group by _app.py) -----------------------------


def register(  # noqa: PLR0917 - typer commands take their options as parameters
    name: Annotated[str, typer.Argument(help="Cluster name, as placements will name it.")],
    gcs: Annotated[str, typer.Option("--gcs", help="Its GCS address, HOST:PORT.")],
    dashboard: Annotated[
        str, typer.Option("--dashboard", help="Its dashboard (Job Submission API) URL.")
    ],
    tier: Annotated[str, typer.Option("--tier", help="Its tier, e.g. primary, secondary.")],
    zone: Annotated[str, typer.Option("--zone", help="Its zone, e.g. us-east-1a.")],
    check: Annotated[
        bool,
        typer.Option("--check/--no-check", help="Refuse a GCS or dashboard that does not answer."),
    ] = True,
    run_dir: RunDir = None,
) -> None:
    """Register a Ray cluster made elsewhere with the Keepers (or update its entry)."""
    reg = parse_registration(name=name, gcs=gcs, dashboard=dashboard, tier=tier, zone=zone)
    if check:
        _check_reachable(reg)
    with open_store(run_dir) as store:
        before = next((c for c in store.list_clusters() if c.name == reg.name), None)
        store.register_cluster(reg.record())
    if before is None:
        out.print(f"registered cluster {reg.name} (tier {reg.tier}, zone {reg.zone})")
    elif before == reg.record():
        out.print(f"cluster {reg.name} was already registered so; nothing changed")
    else:
        out.print(f"updated cluster {reg.name} (was GCS {before.gcs_address}, tier {before.tier})")


def list_registered(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run_dir: RunDir = None,
) -> None:
    """List the clusters the Keepers may place services on."""
    with open_store(run_dir) as store:
        clusters = store.list_clusters()
    if as_json:
        rows = [
            {
                "name": c.name,
                "gcs_address": c.gcs_address,
                "dashboard_url": c.dashboard_url,
                "tier": c.tier,
                "zone": c.zone,
            }
            for c in clusters
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not clusters:
        out.print("no cluster is registered")
        return
    table = Table(title="Registered clusters")
    for col in ("cluster", "tier", "zone", "GCS", "dashboard"):
        table.add_column(col)
    for c in clusters:
        table.add_row(c.name, c.tier or "-", c.zone, c.gcs_address, c.dashboard_url or "-")
    out.print(table)


def remove(
    name: Annotated[str, typer.Argument(help="The registered cluster.")],
    force: Annotated[
        bool, typer.Option("--force", help="Remove it even though services run on it.")
    ] = False,
    run_dir: RunDir = None,
) -> None:
    """Take a cluster out of the registry: the Keepers stop placing services on it and
    stop (re)starting its AppMasters. Refused while something is placed on it."""
    with open_store(run_dir) as store:
        known = [c.name for c in store.list_clusters()]
        if name not in known:
            raise ClusterRefused(
                f"no cluster {name!r} is registered (registered: {', '.join(known) or 'none'})"
            )
        usage = usage_of(store, name)
        if usage and not force:
            raise ClusterRefused(
                f"cluster {name} still serves: {usage.describe()}; move them off it "
                "(placement) first, or remove it anyway with --force"
            )
        store.remove_cluster(name)
    out.print(f"removed cluster {name}")
    if usage:
        out.print(
            f"[yellow]left on it:[/] {usage.describe()} (its endpoints lapse once its "
            "proxies stop heartbeating)",
            soft_wrap=True,
        )


def add_registry_commands(group: typer.Typer) -> None:
    """Add register, list and remove to ``group`` (the CLI's ``cluster`` group)."""
    group.command("register")(register)
    group.command("list")(list_registered)
    group.command("remove")(remove)

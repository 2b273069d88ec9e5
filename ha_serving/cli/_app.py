"""``ha-serving``: the local stack (up/down/status) and its fault primitives.

Every command turns a known failure (HAServingError) into one ``error: …`` line on
stderr and a non-zero exit: 2 for a user's mistake, 1 for a system failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import infra
from ha_serving._errors import (
    HAServingError,
    InvalidSpec,
    StackError,
    UnknownService,
    UserError,
    one_line,
)
from ha_serving._settings import Settings
from ha_serving._spec import load_yaml
from ha_serving.backend import make_package
from ha_serving.cli._autoscale import autoscale_app
from ha_serving.cli._clusters import add_registry_commands, open_store
from ha_serving.cli._common import (
    RunDir,
    Timeout,
    Wait,
    err,
    follow_op,
    keepers,
    out,
    progress_bar,
    run_dir_of,
    settings_for,
    submit_op,
)
from ha_serving.cli._releases import bluegreen, canary, release_app
from ha_serving.cli._services import ServiceOps, load_spec_file, start_appmaster
from ha_serving.client import Client
from ha_serving.keeper import AppMasterCredentials, KeeperServer, RayJobSubmitter
from ha_serving.store import Store, StoreRef
from ha_serving.util.tls import files

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
node_app = typer.Typer(no_args_is_help=True, help="Kill or restart one Ray node.")
cluster_app = typer.Typer(
    no_args_is_help=True,
    help="Register, list or remove the Keepers' clusters; kill or restart a local one.",
)
app.add_typer(node_app, name="node")
app.add_typer(cluster_app, name="cluster")
add_registry_commands(cluster_app)
keeper_app = typer.Typer(no_args_is_help=True, help="Run, kill, pause or resume a Keeper.")
app.add_typer(keeper_app, name="keeper")
appmaster_app = typer.Typer(no_args_is_help=True, help="The serving job's entrypoint.")
app.add_typer(appmaster_app, name="appmaster")
app.add_typer(release_app, name="release")
app.add_typer(autoscale_app, name="autoscale")
app.command()(canary)
app.command()(bluegreen)
db_app = typer.Typer(no_args_is_help=True, help="Kill or restart the private DB (drills).")
app.add_typer(db_app, name="db")

Drain = Annotated[
    bool,
    typer.Option(help="Through the Keepers: take each cluster's traffic weight to 0 first."),
]
ClusterOpt = Annotated[str, typer.Option("--cluster", help="Cluster of the local stack.")]
ViaCluster = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="Development mode: drive this cluster's AppMaster directly, without the "
        "Keepers (refused for a service they manage).",
    ),
]


@app.command()
def up(
    clusters: Annotated[str | None, typer.Option(help="Number of Ray clusters (1-9).")] = None,
    workers: Annotated[str | None, typer.Option(help="Worker nodes per cluster.")] = None,
    use_tls: Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help="TLS for the Keepers' API and link and the proxies (default: stack.tls).",
        ),
    ] = None,
    run_dir: RunDir = None,
) -> None:
    """Start the DB, Redis and the local Ray clusters, and wait until all are alive."""
    # taken as text so a bad value gets the same one-line error as HA_SERVING_CLUSTERS
    settings = settings_for(
        run_dir, clusters=clusters or None, workers_per_cluster=workers or None, tls=use_tls
    )
    if not settings.stack.tls:
        err.print(
            "[yellow]warning:[/] TLS is off: the Keepers' API, their link to the AppMasters "
            "and the proxies speak plaintext (--no-tls; for benchmarks only)"
        )
    with err.status("starting the stack") as spinner:
        result = infra.up(settings, report=spinner.update)
    topo = result.topology
    if result.already_up:
        out.print(f"the stack in {topo.run_dir} is already up; nothing changed")
    else:
        out.print(f"stack up in {result.seconds:.1f}s ({topo.run_dir})")
    _print_status(infra.status(topo.run_dir))


@app.command()
def down(run_dir: RunDir = None) -> None:
    """Stop exactly what `up` started, by process group, and remove the topology."""
    path = run_dir_of(run_dir)
    with err.status("stopping the stack") as spinner:
        result = infra.down(path, report=spinner.update)
    if result.was_up:
        out.print(f"stack down: {result.stopped} processes stopped")
    else:
        out.print(f"no stack is up in {path.resolve()}; nothing to stop")


@app.command()
def status(
    service: Annotated[str | None, typer.Argument(help="A service: show its instances.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    cluster: ClusterOpt = "a",
    run_dir: RunDir = None,
) -> None:
    """Show clusters, nodes (alive or not), the DB and Redis; or one service."""
    if service is not None:
        _service_status(service, cluster, run_dir, as_json=as_json)
        return
    path = run_dir_of(run_dir)
    report = infra.status(path)
    if report is None:
        if as_json:
            out.print_json(json.dumps({"up": False, "clusters": []}))
        else:
            out.print(f"no stack is up in {path.resolve()}")
        raise typer.Exit(3)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        _print_status(report)


def _print_status(report: dict[str, object] | None) -> None:
    if report is None:
        return
    table = Table(title="Ray clusters")
    for col in ("cluster", "node", "role", "address", "alive", "pgid", "GCS"):
        table.add_column(col)
    for c in report["clusters"]:  # type: ignore[attr-defined]
        for n in c["nodes"]:
            table.add_row(
                c["name"],
                n["name"],
                n["role"],
                n["address"],
                _yes(n["alive"]),
                str(n["pgid"]),
                c["gcs_address"] if n["role"] == "head" else "",
            )
    out.print(table)
    keepers = Table(title="Keepers")
    for col in ("keeper", "address", "alive", "role", "epoch", "pgid"):
        keepers.add_column(col)
    for k in report.get("keepers", []):  # type: ignore[attr-defined]
        role = "[bold]leader[/]" if k["leader"] else "follower"
        keepers.add_row(
            k["id"],
            k["address"],
            _yes(k["alive"]),
            role if k["alive"] else "",
            str(k["epoch"]),
            str(k["pgid"]),
        )
    out.print(keepers)
    db = report["db"]
    redis = report["redis"]
    out.print(f"DB     {db['kind']:<8} {db['url']:<50} {_yes(db['alive'])}")  # type: ignore[index]
    out.print(f"TLS    {'on' if report.get('tls') else 'off (plaintext)'}")
    if redis["gcs_fault_tolerance"]:  # type: ignore[index]
        out.print(f"Redis  {redis['address']:<59} {_yes(redis['alive'])}")  # type: ignore[index]
    else:
        out.print("Redis  none: clusters run WITHOUT GCS fault tolerance")


def _yes(flag: object) -> str:
    return "[green]alive[/]" if flag else "[red]dead[/]"


@node_app.command("kill")
def node_kill(name: str, run_dir: RunDir = None) -> None:
    """SIGKILL a node (e.g. a-head, b-w1) and its Ray workers."""
    n = infra.kill_node(run_dir_of(run_dir), name)
    out.print(f"killed {name} ({n} processes)")


@node_app.command("restart")
def node_restart(name: str, run_dir: RunDir = None) -> None:
    """Start a killed node again (a head of a GCS-FT cluster recovers its state)."""
    with err.status(f"restarting {name}"):
        node = infra.restart_node(run_dir_of(run_dir), name)
    out.print(f"{name} is back (pid {node.proc.pid})")


@cluster_app.command("kill")
def cluster_kill(name: str, run_dir: RunDir = None) -> None:
    """SIGKILL every node of one cluster; the others are untouched."""
    n = infra.kill_cluster(run_dir_of(run_dir), name)
    out.print(f"killed cluster {name} ({n} processes)")


@cluster_app.command("restart")
def cluster_restart(name: str, run_dir: RunDir = None) -> None:
    """Start every dead node of a cluster again (head and workers together); a node that
    fails to start is started again from a clean temp dir, and said so."""
    with err.status(f"restarting cluster {name}"):
        infra.restart_cluster(run_dir_of(run_dir), name, report=err.print)
    out.print(f"cluster {name} is back")


@keeper_app.command("run")
def keeper_run(
    keeper_id: Annotated[str, typer.Option("--id", help="Replica id, e.g. k1.")],
    address: Annotated[str, typer.Option(help="host:port to serve the control API on.")],
    db_url: Annotated[
        str,
        typer.Option(
            envvar="HA_SERVING_DB_URL",
            help="State store URL (keep it off argv: use the env), its password in the "
            "file HA_SERVING_DB_PASSWORD_FILE names.",
        ),
    ],
    peers: Annotated[str, typer.Option(help="Every replica's address, comma-separated.")] = "",
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve without credentials if none is configured (a loud warning); "
            "without it, a Keeper with no credentials refuses to start.",
        ),
    ] = False,
) -> None:
    """Run one Keeper replica in the foreground (`up` starts three)."""
    settings = Settings.from_env()
    logging.getLogger().setLevel(logging.INFO)
    keeper_settings = settings.keeper.model_copy(update={"insecure": insecure})
    ref = StoreRef.of(db_url, settings.store.password_file)
    store = Store.connect(ref, connect_timeout_s=settings.store.connect_timeout_s)
    credentials_dir = settings.keeper.credentials_dir
    submitter = RayJobSubmitter(
        ha_serving_bin=str(Path(sys.executable).with_name("ha-serving")),
        store=ref,
        keepers=peers.split(",") if peers else [address],
        token_file=settings.keeper.token_file,
        credentials=AppMasterCredentials(store, credentials_dir) if credentials_dir else None,
        tls=settings.tls,
    )
    if settings.keeper.token and settings.keeper.token_file is None:
        logging.getLogger("ha_serving.keeper").warning(
            "the control API's token is given inline: serving jobs cannot be handed it "
            "(only a file's path travels with them); set HA_SERVING_KEEPER_TOKEN_FILE"
        )
    t = settings.tls
    server = KeeperServer(
        store,
        keeper_id,
        address,
        keeper_settings,
        submitter=submitter,
        tls=files(t.ca_file, t.keeper_cert_file, t.keeper_key_file),
    )
    try:
        asyncio.run(server.serve_forever())
    finally:
        store.close()


@db_app.command("kill")
def db_kill(run_dir: RunDir = None) -> None:
    """SIGKILL the stack's private DB server (drill)."""
    infra.kill_db(run_dir_of(run_dir))
    out.print("DB killed")


@db_app.command("restart")
def db_restart(run_dir: RunDir = None) -> None:
    """Start the killed private DB server again on its data."""
    infra.restart_db(run_dir_of(run_dir))
    out.print("DB is back")


@appmaster_app.command("start")
def appmaster_start(
    cluster: Annotated[str, typer.Option(help="This cluster's name.")],
    service: Annotated[str, typer.Option(help="The service.")],
    keepers: Annotated[str, typer.Option(help="Keeper addresses, comma-separated.")],
) -> None:
    """The serving job's entrypoint (run by Ray Job Submission on the cluster's head):
    create the service's detached AppMaster, or find it, and return."""
    settings = Settings.from_env()
    if not settings.store.url:
        raise InvalidSpec("appmaster start", ["HA_SERVING_DB_URL must be set"])
    t = settings.tls
    started = start_appmaster(
        cluster,
        service,
        StoreRef.of(settings.store.url, settings.store.password_file),
        keepers=[k for k in keepers.split(",") if k],
        token_file=settings.keeper.token_file,
        link_tls=files(t.ca_file, t.appmaster_cert_file, t.appmaster_key_file),
        proxy_tls=files(t.ca_file, t.proxy_cert_file, t.proxy_key_file),
    )
    out.print(f"AppMaster of {service} on {cluster}: {started}")


@keeper_app.command("revoke")
def keeper_revoke(
    cluster: Annotated[str, typer.Option(help="The AppMaster's cluster.")],
    service: Annotated[str, typer.Option(help="The AppMaster's service.")],
    run_dir: RunDir = None,
) -> None:
    """Revoke the Keeper credential of one AppMaster (in the Keepers' store: HA_SERVING_DB_URL,
    else the local stack's). Its calls are refused within seconds and its link is cut;
    the leader mints it a new credential when it restarts the serving job."""
    with open_store(run_dir) as store:
        n = store.revoke_credentials(cluster, service)
    if n == 0:
        raise InvalidSpec("keeper revoke", [f"no live credential for {service} on {cluster}"])
    out.print(f"revoked {n} credential(s) of the AppMaster of {service} on {cluster}")


@keeper_app.command("credentials")
def keeper_credentials(
    include_revoked: Annotated[bool, typer.Option("--all", help="Revoked ones too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run_dir: RunDir = None,
) -> None:
    """List the credentials the Keepers minted (ids and targets; the secrets are kept
    only as hashes, so none can be shown)."""
    with open_store(run_dir) as store:
        found = store.list_credentials(include_revoked=include_revoked)
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(c) for c in found], indent=2) + "\n")
        return
    table = Table(title="Keeper credentials")
    for col in ("id", "scope", "cluster", "service", "state"):
        table.add_column(col)
    for c in found:
        state = "[red]revoked[/]" if c.revoked else "live"
        table.add_row(c.id, c.scope, c.cluster, c.service, state)
    out.print(table)


@keeper_app.command("kill")
def keeper_kill(keeper_id: str, run_dir: RunDir = None) -> None:
    """SIGKILL one Keeper replica."""
    infra.signal_keeper(run_dir_of(run_dir), keeper_id, signal.SIGKILL)
    out.print(f"killed keeper {keeper_id}")


@keeper_app.command("pause")
def keeper_pause(keeper_id: str, run_dir: RunDir = None) -> None:
    """SIGSTOP one Keeper replica (a frozen leader, as in a long GC pause)."""
    infra.signal_keeper(run_dir_of(run_dir), keeper_id, signal.SIGSTOP)
    out.print(f"paused keeper {keeper_id}")


@keeper_app.command("resume")
def keeper_resume(keeper_id: str, run_dir: RunDir = None) -> None:
    """SIGCONT a paused Keeper replica."""
    infra.signal_keeper(run_dir_of(run_dir), keeper_id, signal.SIGCONT)
    out.print(f"resumed keeper {keeper_id}")


@keeper_app.command("restart")
def keeper_restart(keeper_id: str, run_dir: RunDir = None) -> None:
    """Start a killed Keeper replica again with its old command line."""
    infra.restart_keeper(run_dir_of(run_dir), keeper_id)
    out.print(f"keeper {keeper_id} is back")


# --- services -------------------------------------------------------------------------


@contextlib.contextmanager
def _ops(cluster: str, run_dir: Path | None) -> Iterator[ServiceOps]:
    path = run_dir_of(run_dir)
    topo = infra.load(path.resolve())
    if topo is None:
        raise StackError(f"no stack is up in {path} (run `make up`)")
    try:
        c = topo.cluster(cluster)
    except KeyError as exc:
        raise StackError(str(exc.args[0])) from None
    store = Store.connect(topo.db.ref())
    ops = ServiceOps(
        store, topo.db.ref(), c.name, c.gcs_address, c.head.address, proxy_tls=topo.proxy_tls()
    )
    try:
        yield ops
    finally:
        ops.close()
        store.close()


def _follow(ops: ServiceOps, service: str, ack: dict[str, object], timeout: float) -> None:
    out.print(f"accepted: {ack['op_id']}" + (" (duplicate)" if ack.get("duplicate") else ""))
    with progress_bar() as bar:
        task = bar.add_task(service, total=None)

        def show(view: dict[str, Any]) -> None:
            instances = view.get("instances", [])
            want = view.get("desired_version")
            done = sum(1 for i in instances if i["phase"] == "serving" and i["version"] == want)
            bar.update(
                task,
                total=max(len(instances), 1),
                completed=done,
                description=f"{service} -> {want}",
            )

        view = ops.wait(service, timeout_s=timeout, progress=show)
    last = (view.get("history") or [{}])[-1]
    out.print(f"{service}: rollout {last.get('status', 'done')} ({last.get('kind', '')})")
    if last.get("status") == "rolled_back":
        raise typer.Exit(1)


@app.command()
def deploy(
    spec_file: Annotated[Path, typer.Argument(help="Service spec (YAML).")],
    cluster: ViaCluster = None,
    wait: Wait = True,
    timeout: Timeout = 300.0,
    run_dir: RunDir = None,
) -> None:
    """Deploy (or redeploy) a service: through the Keepers onto the clusters its
    `placement` names, or with --cluster straight onto one cluster's AppMaster."""
    spec, code = load_spec_file(spec_file)
    if cluster is None:
        keeper = keepers(run_dir)
        package = make_package(code).data
        op_id = submit_op(keeper, spec.model_dump_json(), package, kind="deploy")
        if wait:
            follow_op(keeper, spec.name, op_id, timeout)
        return
    with _ops(cluster, run_dir) as ops:
        ack = ops.deploy(spec, code)
        if wait:
            _follow(ops, spec.name, ack, timeout)


@app.command()
def update(
    service: str,
    config: Annotated[Path | None, typer.Option(help="New user config (YAML/JSON).")] = None,
    code: Annotated[Path | None, typer.Option(help="Directory with the new code.")] = None,
    version: Annotated[str | None, typer.Option(help="Version of the new code.")] = None,
    cluster: ViaCluster = None,
    drain: Drain = False,
    wait: Wait = True,
    timeout: Timeout = 300.0,
    run_dir: RunDir = None,
) -> None:
    """Rolling in-place update: new config (reconfigure) or new code version."""
    changes: dict[str, Any] = {}
    if config is not None:
        changes["config"] = _read_config(config)
    if (code is None) != (version is None):
        raise InvalidSpec("update", ["--code and --version go together"])
    if code is not None:
        if not code.is_dir():
            raise InvalidSpec("update", [f"--code: {code} is not a directory"])
        changes["code"] = code
        changes["version"] = version
    if not changes:
        raise InvalidSpec("update", ["nothing to update: give --config or --code/--version"])
    kind = "code" if code else "config"
    if drain and cluster is not None:
        raise InvalidSpec("update", ["--drain moves traffic between clusters: not with --cluster"])
    if cluster is None:
        _change_via_keepers(
            service, kind, changes, run_dir, wait=wait, timeout=timeout, drain=drain
        )
        return
    with _ops(cluster, run_dir) as ops:
        ack = ops.change(service, kind=kind, **changes)
        if wait:
            _follow(ops, service, ack, timeout)


@app.command()
def scale(
    service: str,
    instances: int,
    cluster: ViaCluster = None,
    wait: Wait = True,
    timeout: Timeout = 300.0,
    run_dir: RunDir = None,
) -> None:
    """Change the number of instances (scale-down drains before removing)."""
    if cluster is None:
        changes = {"instances": instances}
        _change_via_keepers(service, "scale", changes, run_dir, wait=wait, timeout=timeout)
        return
    with _ops(cluster, run_dir) as ops:
        ack = ops.change(service, kind="scale", instances=instances)
        if wait:
            _follow(ops, service, ack, timeout)


@app.command()
def call(
    service: str,
    method: str,
    payload: Annotated[str, typer.Option("--json", help="JSON payload.")] = "null",
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 10.0,
    run_dir: RunDir = None,
) -> None:
    """Call a method of a service through its proxies; print the JSON reply."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("--json", [str(exc)]) from None
    path = run_dir_of(run_dir)
    topo = infra.load(path.resolve())
    if topo is None:
        raise StackError(f"no stack is up in {path} (run `make up`)")
    with Store.connect(topo.db.ref()) as store:
        addresses = [e.address for e in store.list_endpoints(service)]
    if not addresses:
        raise UnknownService(service)
    with Client(addresses, tls=topo.client_tls()) as client:
        reply = client.call(service, method, value, timeout=timeout)
    sys.stdout.write(json.dumps(reply) + "\n")


def _change_via_keepers(
    service: str,
    kind: str,
    changes: dict[str, Any],
    run_dir: Path | None,
    *,
    wait: bool,
    timeout: float,
    drain: bool = False,
) -> None:
    keeper = keepers(run_dir)
    current = keeper.get_service(service)
    spec = dict(current["spec"])
    package = b""
    if "code" in changes:
        package = make_package(changes.pop("code")).data
    spec.update(changes)
    options = {"drain": True} if drain else None
    op_id = submit_op(keeper, json.dumps(spec), package, kind=kind, options=options)
    if wait:
        follow_op(keeper, service, op_id, timeout)


def _read_config(path: Path) -> dict[str, Any]:
    data = load_yaml(path)  # safe and bounded, as a spec is
    if not isinstance(data, dict):
        raise InvalidSpec(str(path), ["config must be a mapping"])
    return data


def _service_status(service: str, cluster: str, run_dir: Path | None, *, as_json: bool) -> None:
    with _ops(cluster, run_dir) as ops:
        view = ops.describe(service)
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2) + "\n")
        return
    if view.get("from_db"):
        out.print(f"[yellow]AppMaster of {service} not answering; persisted state:[/]")
        out.print_json(json.dumps(view["state"]))
        return
    table = Table(title=f"{service} on {cluster} (desired {view['desired_version']})")
    for col in ("instance", "worker", "phase", "version", "in-flight"):
        table.add_column(col)
    for i in view["instances"]:
        table.add_row(
            i["id"], i["worker"], i["phase"], str(i["version"]), str(i.get("inflight", ""))
        )
    out.print(table)
    for p in view["proxies"]:
        out.print(f"proxy {p['name']:<16} {p['address']}  metrics {p['metrics_address']}")
    if view.get("rollout"):
        r = view["rollout"]
        out.print(f"rollout {r['op_id']}: {r['status']} ({r['kind']}), failures {r['failures']}")


def main() -> None:
    # timestamps: Keeper and AppMaster logs are read to time recoveries
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app()
    except HAServingError as exc:
        _error_line(str(exc))
        sys.exit(2 if isinstance(exc, UserError) else 1)
    except TimeoutError as exc:
        _error_line(str(exc))
        sys.exit(1)
    except Exception as exc:
        if not type(exc).__module__.startswith("ray."):
            raise
        # an actor's failure, re-raised by Ray with its remote traceback: say it in one
        # line; the actor's log has the rest
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        _error_line(f"a remote actor failed: {first}")
        sys.exit(1)


MAX_ERROR_CHARS = 2000
"""The CLI's ``error:`` line is at most this long (InvalidSpec already shows 5 problems)."""


def _error_line(message: str) -> None:
    """The one ``error: …`` line the CLI promises: whatever the message holds (newlines,
    a 10 MB value, text that looks like rich markup), one line of bounded length."""
    text = escape(one_line(message, MAX_ERROR_CHARS))
    err.print(f"[red]error:[/] {text}", highlight=False, soft_wrap=True)

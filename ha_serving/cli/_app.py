"""``ha-serving``: the local stack (up/down/status) and its fault primitives.

Every command turns a known failure (HAServingError) into one ``error: …`` line on
stderr and a non-zero exit: 2 for a user's mistake, 1 for a system failure.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import infra
from ha_serving._errors import HAServingError, UserError
from ha_serving._settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
node_app = typer.Typer(no_args_is_help=True, help="Kill or restart one Ray node.")
cluster_app = typer.Typer(no_args_is_help=True, help="Kill or restart a whole Ray cluster.")
app.add_typer(node_app, name="node")
app.add_typer(cluster_app, name="cluster")

out = Console()
err = Console(stderr=True)

RunDir = Annotated[
    Path | None,
    typer.Option("--run-dir", help="Stack directory (default: HA_SERVING_RUN_DIR or .run)."),
]


def _settings(run_dir: Path | None = None, **stack: object) -> Settings:
    settings = Settings.from_env()
    changes = {k: v for k, v in stack.items() if v is not None}
    if run_dir is not None:
        changes["run_dir"] = run_dir
    return settings.with_stack(**changes) if changes else settings


def _run_dir(run_dir: Path | None) -> Path:
    return _settings(run_dir).stack.run_dir


@app.command()
def up(
    clusters: Annotated[str | None, typer.Option(help="Number of Ray clusters (1-9).")] = None,
    workers: Annotated[str | None, typer.Option(help="Worker nodes per cluster.")] = None,
    run_dir: RunDir = None,
) -> None:
    """Start the DB, Redis and the local Ray clusters, and wait until all are alive."""
    # taken as text so a bad value gets the same one-line error as HA_SERVING_CLUSTERS
    settings = _settings(run_dir, clusters=clusters or None, workers_per_cluster=workers or None)
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
    path = _run_dir(run_dir)
    with err.status("stopping the stack") as spinner:
        result = infra.down(path, report=spinner.update)
    if result.was_up:
        out.print(f"stack down: {result.stopped} processes stopped")
    else:
        out.print(f"no stack is up in {path.resolve()}; nothing to stop")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run_dir: RunDir = None,
) -> None:
    """Show clusters, nodes (alive or not), the DB and Redis."""
    path = _run_dir(run_dir)
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
    db = report["db"]
    redis = report["redis"]
    out.print(f"DB     {db['kind']:<8} {db['url']:<50} {_yes(db['alive'])}")  # type: ignore[index]
    if redis["gcs_fault_tolerance"]:  # type: ignore[index]
        out.print(f"Redis  {redis['address']:<59} {_yes(redis['alive'])}")  # type: ignore[index]
    else:
        out.print("Redis  none: clusters run WITHOUT GCS fault tolerance")


def _yes(flag: object) -> str:
    return "[green]alive[/]" if flag else "[red]dead[/]"


@node_app.command("kill")
def node_kill(name: str, run_dir: RunDir = None) -> None:
    """SIGKILL a node (e.g. a-head, b-w1) and its Ray workers."""
    n = infra.kill_node(_run_dir(run_dir), name)
    out.print(f"killed {name} ({n} processes)")


@node_app.command("restart")
def node_restart(name: str, run_dir: RunDir = None) -> None:
    """Start a killed node again (a head of a GCS-FT cluster recovers its state)."""
    with err.status(f"restarting {name}"):
        node = infra.restart_node(_run_dir(run_dir), name)
    out.print(f"{name} is back (pid {node.proc.pid})")


@cluster_app.command("kill")
def cluster_kill(name: str, run_dir: RunDir = None) -> None:
    """SIGKILL every node of one cluster; the others are untouched."""
    n = infra.kill_cluster(_run_dir(run_dir), name)
    out.print(f"killed cluster {name} ({n} processes)")


@cluster_app.command("restart")
def cluster_restart(name: str, run_dir: RunDir = None) -> None:
    """Start every dead node of a cluster again, head first."""
    with err.status(f"restarting cluster {name}"):
        infra.restart_cluster(_run_dir(run_dir), name)
    out.print(f"cluster {name} is back")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except HAServingError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, UserError) else 1)
    except TimeoutError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)

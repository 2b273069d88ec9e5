"""Release commands: canary and blue-green through the Keepers, the operator's promote,
pause, resume, abort and rollback, and ``release status`` (steps, weights, analysis)."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ha_serving._errors import InvalidSpec
from ha_serving._status import ACTIVE
from ha_serving.backend import make_package
from ha_serving.cli._common import (
    RunDir,
    Timeout,
    Wait,
    follow_op,
    keepers,
    out,
    progress_of,
    submit_op,
)
from ha_serving.cli._services import load_spec_file

release_app = typer.Typer(
    no_args_is_help=True,
    help="Releases across clusters: status, and commands to a canary or blue-green.",
)

Steps = Annotated[
    str,
    typer.Option(help="Candidate traffic percentages, comma-separated, ending at 100."),
]
MaxFailed = Annotated[
    int, typer.Option(help="Failed analysis checks before an automatic rollback.")
]
MinSuccess = Annotated[float, typer.Option(help="The candidate's lowest acceptable success rate.")]
MaxP99 = Annotated[float, typer.Option(help="The candidate's highest acceptable p99 (ms).")]
Interval = Annotated[float, typer.Option(help="Seconds between analysis checks.")]


def canary(
    spec_file: Annotated[Path, typer.Argument(help="The candidate's spec (YAML).")],
    *,
    steps: Steps = "10,50,100",
    pause: Annotated[float, typer.Option(help="Seconds each step is held.")] = 30.0,
    instances: Annotated[
        int, typer.Option(help="Instances per cluster that run the candidate (in place).")
    ] = 1,
    max_failed_checks: MaxFailed = 2,
    min_success_rate: MinSuccess = 0.99,
    max_p99_ms: MaxP99 = 1000.0,
    interval: Interval = 5.0,
    wait: Wait = True,
    timeout: Timeout = 3600.0,
    run_dir: RunDir = None,
) -> None:
    """Canary release of SPEC's version through the Keepers, traffic moved by weight.

    The candidate runs on a few instances beside the current version; its share of
    traffic rises in steps, each held while the proxies' metrics are analysed; it is
    promoted everywhere after the last step, or rolled back automatically."""
    options = {
        "steps": _steps(steps),
        "pause_s": pause,
        "canary_instances": instances,
        "analysis": _analysis(max_failed_checks, min_success_rate, max_p99_ms, interval),
    }
    _release(spec_file, "canary", options, run_dir, wait=wait, timeout=timeout)


def bluegreen(
    spec_file: Annotated[Path, typer.Argument(help="The new (green) version's spec (YAML).")],
    *,
    window: Annotated[
        float, typer.Option(help="Rollback window after the switch: blue stays warm (s).")
    ] = 60.0,
    max_failed_checks: MaxFailed = 2,
    min_success_rate: MinSuccess = 0.99,
    max_p99_ms: MaxP99 = 1000.0,
    interval: Interval = 5.0,
    wait: Wait = True,
    timeout: Timeout = 3600.0,
    run_dir: RunDir = None,
) -> None:
    """Blue-green release of SPEC's version through the Keepers: a full set, then the switch.

    All traffic switches once every new instance is healthy; the old version stays warm
    for the rollback window (`release rollback` flips back), then it is retired."""
    options = {
        "steps": [100],
        "pause_s": window,
        "analysis": _analysis(max_failed_checks, min_success_rate, max_p99_ms, interval),
    }
    _release(spec_file, "blue_green", options, run_dir, wait=wait, timeout=timeout)


def _release(
    spec_file: Path,
    kind: str,
    options: dict[str, Any],
    run_dir: Path | None,
    *,
    wait: bool,
    timeout: float,
) -> None:
    spec, code = load_spec_file(spec_file)
    keeper = keepers(run_dir)
    op_id = submit_op(
        keeper, spec.model_dump_json(), make_package(code).data, kind=kind, options=options
    )
    if wait:
        follow_op(keeper, spec.name, op_id, timeout)
    else:
        out.print(f"accepted: {op_id}")


def _steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidSpec(
            "--steps", [f"{text!r} is not a comma-separated list of integers"]
        ) from None


def _analysis(failed: int, success: float, p99: float, interval: float) -> dict[str, Any]:
    return {
        "max_failed_checks": failed,
        "min_success_rate": success,
        "max_p99_ms": p99,
        "interval_s": interval,
    }


OpId = Annotated[str, typer.Argument(help="The release's operation id (`release status`).")]


@release_app.command("promote")
def promote(op_id: OpId, run_dir: RunDir = None) -> None:
    """Promote the candidate everywhere now, skipping the remaining steps."""
    _command(op_id, "promote", run_dir)


@release_app.command("pause")
def pause(op_id: OpId, run_dir: RunDir = None) -> None:
    """Hold the release at its current step (analysis and automatic rollback go on)."""
    _command(op_id, "pause", run_dir)


@release_app.command("resume")
def resume(op_id: OpId, run_dir: RunDir = None) -> None:
    """Let a paused release move on."""
    _command(op_id, "resume", run_dir)


@release_app.command("abort")
def abort(op_id: OpId, run_dir: RunDir = None) -> None:
    """Abort: the candidate's traffic returns to the current version at once."""
    _command(op_id, "abort", run_dir)


@release_app.command("rollback")
def rollback(op_id: OpId, run_dir: RunDir = None) -> None:
    """Blue-green rollback within the window: a traffic flip back (same as abort)."""
    _command(op_id, "abort", run_dir)


def _command(op_id: str, what: str, run_dir: Path | None) -> None:
    op = keepers(run_dir).command(op_id, what)
    out.print(f"{op_id}: {what} accepted ({op['status']}, step {op['step']})")


@release_app.command("status")
def status(
    service: Annotated[str, typer.Argument(help="Only this service's operations.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run_dir: RunDir = None,
) -> None:
    """Each operation's step and status, with a release's weight and analysis.

    For a canary or blue-green: the candidate's weight, the operator's last command and
    the latest analysis checks."""
    ops = keepers(run_dir).operations(service)
    if as_json:
        sys.stdout.write(json.dumps(ops, indent=2) + "\n")
        return
    table = Table(title="Releases")
    for col in ("op", "kind", "version", "status", "step", "clusters", "where", "error"):
        table.add_column(col)
    for o in ops:
        total, done, where = progress_of(o)
        table.add_row(
            o["op_id"],
            o["kind"],
            str(o["plan"].get("version") or ""),
            o["status"],
            f"{done}/{total}",
            ", ".join(c["name"] for c in o["plan"]["clusters"]),
            where,
            o["error"],
        )
    out.print(table)
    for o in ops:
        checks = (o.get("progress") or {}).get("checks") or []
        if checks and o["status"] in ACTIVE:
            out.print(_checks_table(o["op_id"], checks[-5:]))


def _checks_table(op_id: str, checks: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{op_id}: latest analysis checks")
    for col in ("at", "step", "weight", "calls", "success", "p99 ms", "stable p99", "verdict"):
        table.add_column(col)
    for c in checks:
        at = datetime.datetime.fromtimestamp(c["at"], tz=datetime.UTC).strftime("%H:%M:%S")
        table.add_row(
            at,
            str(c.get("step")),
            f"{c.get('weight')}%",
            str(c["requests"]),
            "-" if c["success_rate"] is None else f"{c['success_rate']:.4f}",
            "-" if c["p99_ms"] is None else f"{c['p99_ms']:.0f}",
            "-" if c["stable_p99_ms"] is None else f"{c['stable_p99_ms']:.0f}",
            c["verdict"] + (f" ({c['reason']})" if c["reason"] else ""),
        )
    return table

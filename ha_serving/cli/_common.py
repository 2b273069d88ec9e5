"""What the CLI's command modules share: consoles, common options, the stack's
Keepers, and following an operation to its end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import tenacity
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import infra
from ha_serving._errors import StackError
from ha_serving._settings import Settings
from ha_serving._status import ACTIVE, OperationStatus
from ha_serving.keeper import KeeperClient, KeeperError

out = Console()
err = Console(stderr=True)


RunDir = Annotated[
    Path | None,
    typer.Option("--run-dir", help="Stack directory (default: HA_SERVING_RUN_DIR or .run)."),
]

Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the rollout ends.")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the rollout.")]


def settings_for(run_dir: Path | None = None, **stack: object) -> Settings:
    settings = Settings.from_env()
    changes = {k: v for k, v in stack.items() if v is not None}
    if run_dir is not None:
        changes["run_dir"] = run_dir
    return settings.with_stack(**changes) if changes else settings


def run_dir_of(run_dir: Path | None) -> Path:
    return settings_for(run_dir).stack.run_dir


def keepers(run_dir: Path | None) -> KeeperClient:
    path = run_dir_of(run_dir)
    topo = infra.load(path.resolve())
    if topo is None:
        raise StackError(f"no stack is up in {path} (run `make up`)")
    if not topo.keepers:
        raise StackError("this stack runs no Keepers; use --cluster")
    return KeeperClient(
        [k.address for k in topo.keepers], token=topo.keeper_token(), tls=topo.client_tls()
    )


SUBMIT_RETRY_S = 30.0
"""How long a command keeps retrying its operation while no Keeper takes it."""
RETRIED = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})
"""Keeper failures a command retries: no replica answered, or one went away (failover)
mid-request, or a concurrent change of the service won; the request may have been
recorded or not, and its op_id makes the retry safe either way."""


def submit_op(
    keeper: KeeperClient,
    spec_json: str,
    package: bytes,
    *,
    kind: str,
    options: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Record an operation through the Keepers under an op_id made here, once: a failed
    attempt is retried with the same op_id, which a Keeper answers with the operation it
    recorded under it (never a second one). Returns the op_id."""
    op_id = f"{kind}-{uuid.uuid4().hex[:12]}"
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda exc: isinstance(exc, KeeperError) and exc.code in RETRIED
        ),
        stop=tenacity.stop_after_delay(SUBMIT_RETRY_S),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
        sleep=sleep,
        reraise=True,
    )
    return str(retrying(keeper.deploy, spec_json, package, kind=kind, op_id=op_id, options=options))


def progress_bar() -> Progress:
    """The bar every command that follows a rollout shows (on stderr)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )


def follow_op(keeper: KeeperClient, service: str, op_id: str, timeout: float) -> None:
    """Show an operation's progress until it ends: clusters done of all for a rolling
    one; step, candidate weight and the last analysis for a canary or blue-green."""
    out.print(f"accepted: {op_id}")
    deadline = time.monotonic() + timeout
    with progress_bar() as bar:
        task = bar.add_task(f"{service} {op_id}", total=None)
        while True:
            op = keeper.operation(op_id)  # this one operation, not the whole history
            if op is not None:
                total, done, where = progress_of(op)
                bar.update(
                    task,
                    total=total,
                    completed=done,
                    description=f"{service} {op['status']} ({where})",
                )
                if op["status"] not in ACTIVE:
                    break
            if time.monotonic() > deadline:
                raise StackError(f"{op_id} did not finish within {timeout:.0f}s")
            time.sleep(0.5)
    out.print(f"{service}: {op_id} {op['status']}" + (f": {op['error']}" if op["error"] else ""))
    if op["status"] != OperationStatus.SUCCEEDED:
        raise typer.Exit(1)


def progress_of(op: dict[str, Any]) -> tuple[int, int, str]:
    """(steps, steps done, where it is) of an operation as the Keepers report it."""
    release = op["plan"].get("release")
    if release is None:
        clusters = [c["name"] for c in op["plan"]["clusters"]]
        done = min(op["step"], len(clusters))
        return len(clusters), done, f"cluster {clusters[done] if done < len(clusters) else '-'}"
    progress = op.get("progress") or {}
    steps = len(release["steps"])
    where = f"candidate weight {progress.get('weight', 0)}%"
    if progress.get("ending"):
        where += f", {progress['ending']}: {progress.get('reason', '')}"
    elif op.get("command") == "pause":
        where += ", paused"
    checks = progress.get("checks") or []
    if checks:
        last = checks[-1]
        where += f", last check {last['verdict']}"
    done = steps + 1 if op["status"] == "succeeded" else min(op["step"], steps + 1)
    return steps + 1, done, where

"""``python -m sim``: run scenarios (``run``), the growth series (``growth``), or one
simulated Keeper replica (``keeper``, started by the other two)."""

from __future__ import annotations

import asyncio
import io
import logging
import pstats
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ha_serving.store import StoreRef
from ha_serving.util.secrets import secret_dir
from infra import procs
from infra.services import admin_url, start_mariadb
from sim._keeper import serve
from sim._report import scenario_rows, write_growth, write_runs
from sim._scenarios import (
    DB_PORT,
    DEFAULT_TIMINGS,
    NET,
    SCENARIOS,
    ScenarioResult,
    Sim,
    SimConfig,
    config_json,
    mariadbd,
    scaled,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
REPORTS = Path(__file__).parent / "reports"


@contextmanager
def _database(work: Path) -> Iterator[tuple[str, int]]:
    """A private mariadbd at 127.0.120.1 for this invocation; stopped by its handle."""
    db = start_mariadb(
        mariadbd(),
        work / "db",
        address=f"{NET}.1",
        port=DB_PORT,
        secrets=secret_dir(work / "secrets"),
    )
    if db.proc is None:
        raise RuntimeError("the private mariadbd has no process handle")
    try:
        # root (through the unix socket): each scenario creates and drops its own database
        yield admin_url(db), db.proc.pid
    finally:
        procs.kill(db.proc, grace_s=10)


def _run_all(
    configs: list[tuple[str, SimConfig]], out: Path, *, profile: bool
) -> tuple[list[ScenarioResult], str | None]:
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=out / "sim.log",
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("sim").setLevel(logging.INFO)
    # SIGTERM (a timeout, a CI cancel) unwinds like ^C, so every process started is stopped
    signal.signal(signal.SIGTERM, _interrupt)
    results: list[ScenarioResult] = []
    profiles: list[Path] = []
    with (
        tempfile.TemporaryDirectory(prefix="ha-sim-") as tmp,
        _database(Path(tmp)) as (url, db_pid),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar,
    ):
        for scenario, cfg in configs:
            task = bar.add_task(scenario, total=None)

            def show(
                what: str, done: int, total: int, task: TaskID = task, name: str = scenario
            ) -> None:
                bar.update(task, description=f"{name}: {what}", completed=done, total=total)

            sim = Sim(cfg, url, db_pid, Path(tmp), show, profile=profile)
            try:
                results.append(asyncio.run(sim.run(scenario)))
            except (TimeoutError, RuntimeError) as exc:  # reported; the next one runs
                logging.getLogger("sim").exception("%s failed", scenario)
                failed = ScenarioResult(scenario, config_json(cfg), figures={"error": str(exc)})
                results.append(failed)
            finally:  # the Keepers' logs outlive the run's temporary directory
                for k in sim.keepers:
                    if sim.log_path(k).exists():
                        shutil.copy(sim.log_path(k), out / f"{scenario}-{k}.log")
            bar.update(task, description=f"{scenario}: done")
            profiles += sim.profiles()
        text = _profile_text(profiles) if profiles else None
    return results, text


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _profile_text(paths: list[Path], top: int = 30) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(*(str(p) for p in paths), stream=buf)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    return buf.getvalue().strip()


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


@app.command()
def run(
    scenario: str = typer.Option("all", help=f"one of {', '.join(SCENARIOS)}, or all"),
    services: int = typer.Option(10, min=1, help="S: services"),
    clusters: int = typer.Option(3, min=2, max=200, help="C: clusters (2+ for a loss)"),
    instances: int = typer.Option(5, min=1, max=5000, help="I: instances per service"),
    instances_per_worker: int = typer.Option(1, min=1, max=100),
    max_unavailable: int = typer.Option(0, min=0, help="per rollout step; 0: I/4"),
    wave_fraction: float = typer.Option(0.1, min=0.001, max=1.0, help="services in a wave"),
    hold_s: float = typer.Option(10.0, min=1.0, help="steady window and others' tail"),
    time_scale: float = typer.Option(1.0, min=0.0, help="actor timings x this"),
    timeout_s: float = typer.Option(600.0, min=10.0, help="longest wait for operations"),
    profile: bool = typer.Option(False, help="cProfile the leader's rounds"),
) -> None:
    """Run scenarios at S x C x I and write sim/reports/<timestamp>/."""
    chosen = list(SCENARIOS) if scenario == "all" else [scenario]
    if any(s not in SCENARIOS for s in chosen):
        raise typer.BadParameter(
            f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}, all"
        )
    cfg = SimConfig(
        services=services,
        clusters=clusters,
        instances=instances,
        instances_per_worker=instances_per_worker,
        max_unavailable=max_unavailable,
        timings=scaled(DEFAULT_TIMINGS, time_scale),
        wave_fraction=wave_fraction,
        hold_s=hold_s,
        timeout_s=timeout_s,
    )
    out = REPORTS / _stamp()
    results, text = _run_all([(s, cfg) for s in chosen], out, profile=profile)
    write_runs(out, results, text)
    console.print("\n".join(scenario_rows(results)))
    console.print(f"report: {out}/report.md")


@app.command()
def growth(
    services: int = typer.Option(5, min=1, help="S at the start"),
    instances: int = typer.Option(2, min=1, help="I at the start"),
    clusters: int = typer.Option(3, min=1, max=200),
    doublings: int = typer.Option(2, min=1, max=10, help="times S (then I) doubles"),
    hold_s: float = typer.Option(10.0, min=1.0),
    time_scale: float = typer.Option(1.0, min=0.0),
) -> None:
    """Steady runs as S doubles (I fixed), then as I doubles (S fixed): a table of each
    figure, its log-log slope and a log-log plot in sim/reports/<timestamp>-growth/."""
    sizes = [(services * 2**d, instances) for d in range(doublings + 1)]
    sizes += [(services, instances * 2**d) for d in range(1, doublings + 1)]
    configs = [
        (
            "steady",
            SimConfig(
                services=s,
                clusters=clusters,
                instances=i,
                hold_s=hold_s,
                timings=scaled(DEFAULT_TIMINGS, time_scale),
            ),
        )
        for s, i in sizes
    ]
    out = REPORTS / f"{_stamp()}-growth"
    results, _ = _run_all(configs, out, profile=False)
    write_growth(out, results)
    console.print((out / "report.md").read_text())


@app.command(hidden=True)
def keeper(
    keeper_id: str,
    address: str,
    db_url: str,
    stats: Path,
    lease_ttl_s: float = typer.Option(3.0),
    profile: Path | None = typer.Option(None),  # noqa: B008 - typer's idiom
    password_file: Path | None = typer.Option(None),  # noqa: B008 - typer's idiom
) -> None:
    """One simulated Keeper replica (the scenarios start these); ``db_url`` carries no
    password: it is read from ``--password-file``."""
    db = StoreRef.of(db_url, password_file)
    asyncio.run(serve(keeper_id, address, db, stats, lease_ttl_s, profile))


if __name__ == "__main__":
    app()

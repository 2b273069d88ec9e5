"""`make demo`: the HA story on the real path, in about two minutes.

    .venv/bin/python -m loadtest.demo

Stands a stack up if none is up (and takes it down again at the end in that case),
deploys the echo service *through the Keepers* on every cluster, and calls it with the
SDK (discovery through the Keepers, 8 paced callers) while cluster ``b`` is killed whole
(every node SIGKILLed) and then restarted. A live table shows, second by second, which
cluster answered and what failed: traffic leaves ``b`` when it dies and comes back once
its AppMaster is running again. It ends with a one-screen summary. Exit status 0 when
every failed call was an explicit UNAVAILABLE (a call in flight on the killed proxies)
and ``b`` served again within the bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

import infra
from ha_serving import Settings
from ha_serving._errors import StackError
from ha_serving.keeper import KeeperClient
from loadtest.callers import Call, Load
from loadtest.soak_recovery import TOLERATED, deploy_echo

SERVICE = "demo-echo"
ROWS = 14
"""Seconds shown in the live table (the latest ones)."""


def _second_rows(calls: list[Call], t0: float, clusters: list[str]) -> list[list[str]]:
    """One row per second since ``t0`` (monotonic, as each call's end): answers per
    cluster, failures by code."""
    per: dict[int, Counter[str]] = {}
    for c in calls:
        per.setdefault(int(c.done - t0), Counter())[c.answer] += 1
    rows = []
    for second in sorted(per)[-ROWS:]:
        counts = per[second]
        failed = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in clusters)
        rows.append([f"{second:>3}s", *(str(counts.get(c, 0)) for c in clusters), failed or "-"])
    return rows


def _table(calls: list[Call], t0: float, clusters: list[str], phase: str) -> Table:
    table = Table(title=f"{SERVICE}: answers per second ({phase})", expand=False)
    table.add_column("t")
    for c in clusters:
        table.add_column(f"from {c}", justify="right")
    table.add_column("failed")
    for row in _second_rows(calls, t0, clusters):
        table.add_row(*row)
    return table


def _discovered(load: Load, proxies: int, within_s: float) -> bool:
    """Wait until discovery lists ``proxies`` endpoints (every proxy of every cluster)."""
    deadline = time.monotonic() + within_s
    while len(load.discovery.endpoints) < proxies:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_demo(topo: infra.Topology, console: Console, victim: str, bound_s: float) -> bool:
    clusters = [c.name for c in topo.clusters]
    keeper = KeeperClient(
        [k.address for k in topo.keepers], token=topo.keeper_token(), tls=topo.client_tls()
    )
    console.print(f"deploying {SERVICE} through the Keepers on {', '.join(clusters)} ...")
    started = time.monotonic()
    deploy_echo(topo, keeper, SERVICE, timeout_s=240)
    console.print(f"deployed in {time.monotonic() - started:.1f} s")
    load = Load(topo, SERVICE, rate=100.0)
    if not _discovered(load, 2 * len(clusters), within_s=60):
        load.close()
        console.print("[red]discovery never listed every proxy[/red]")
        return False
    t0 = time.monotonic()
    phase = "both clusters serving"
    marks: dict[str, float] = {}
    """Monotonic times of the kill, the restart and the first answer from the victim."""
    try:
        load.start()
        with Live(console=console, refresh_per_second=2, transient=False) as live:

            def show() -> None:
                with load.lock:
                    calls = list(load.calls)
                live.update(_table(calls, t0, clusters, phase))

            def hold(seconds: float, until: Callable[[], bool] | None = None) -> bool:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    show()
                    if until is not None and until():
                        return True
                    time.sleep(0.25)
                return until is None

            hold(5.0)
            phase = f"cluster {victim} killed"
            marks["killed"] = time.monotonic()
            infra.kill_cluster(topo.run_dir, victim)
            hold(5.0)
            phase = f"cluster {victim} restarting"
            show()
            try:
                infra.restart_cluster(
                    topo.run_dir, victim, timeout_s=bound_s, report=lambda _: None
                )
            except StackError as exc:
                console.print(f"[red]cluster {victim} did not restart: {exc}[/red]")
                return False
            marks["restarted"] = time.monotonic()
            phase = f"cluster {victim} back, waiting for its proxies"

            def serving() -> bool:
                return any(c.answer == victim for c in load.since(marks["restarted"]))

            if not hold(bound_s, serving):
                console.print(f"[red]{SERVICE} never answered from {victim} again[/red]")
                return False
            marks["serving"] = time.monotonic()
            phase = f"cluster {victim} serving again"
            hold(5.0)
    finally:
        load.close()
    return _summary(console, load.since(0), clusters, marks, victim)


def _summary(
    console: Console, calls: list[Call], clusters: list[str], marks: dict[str, float], victim: str
) -> bool:
    killed = marks["killed"]
    last_from_victim = max(  # by the end of each call (monotonic, as the marks)
        (c.done for c in calls if c.answer == victim and killed <= c.done < marks["restarted"]),
        default=killed,
    )
    failed = Counter(c.answer for c in calls if c.answer not in clusters)
    untolerated = {k: v for k, v in failed.items() if k not in TOLERATED}
    answers = Counter(c.answer for c in calls if c.answer in clusters)
    lines = [
        f"calls: {len(calls):,}  answered: "
        + ", ".join(f"{c} {answers.get(c, 0):,}" for c in clusters),
        f"failed: {sum(failed.values())} "
        + (f"({', '.join(f'{k} {v}' for k, v in failed.items())})" if failed else "")
        + f"; availability {1 - sum(failed.values()) / max(len(calls), 1):.5f}",
        f"last answer from {victim} after its kill: {last_from_victim - killed:+.2f} s",
        f"{victim} restarted (nodes up) {marks['restarted'] - killed:.1f} s after the kill;"
        f" serving again {marks['serving'] - killed:.1f} s after the kill",
    ]
    ok = not untolerated
    verdict = "[green]PASSED[/green]" if ok else f"[red]FAILED: {untolerated}[/red]"
    console.print()
    console.print(Panel("\n".join([*lines, verdict]), title="demo summary", expand=False))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="b", help="the cluster to kill and restart")
    parser.add_argument("--bound-s", type=float, default=90.0, help="restart and serve bound")
    args = parser.parse_args(argv)
    console = Console()
    say = lambda text: console.print(f"[demo] {text}")  # noqa: E731
    started = time.monotonic()
    with infra.stack_for_run(Settings.from_env(), report=say) as topo:
        if args.cluster not in {c.name for c in topo.clusters}:
            parser.error(f"no cluster {args.cluster!r} in this stack")
        passed = run_demo(topo, console, args.cluster, args.bound_s)
    console.print(
        f"[demo] {'PASSED' if passed else 'FAILED'} in {time.monotonic() - started:.0f} s"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

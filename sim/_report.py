"""The report of a simulation run: report.json (everything), report.md (the tables a
reader wants) and PNG plots (each scenario's reconcile rounds over time; growth log-log)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sim._figures import loglog_slope
from sim._scenarios import ScenarioResult


def _ms(summary: dict[str, Any] | None, key: str) -> str:
    v = (summary or {}).get(key)
    return "-" if v is None else f"{v * 1000:.1f}"


def _s(summary: dict[str, Any] | None, key: str) -> str:
    v = (summary or {}).get(key)
    return "-" if v is None else f"{v:.2f}"


def scenario_rows(results: Sequence[ScenarioResult]) -> list[str]:
    lines = [
        "| scenario | S x C x I | round p50 ms | round p99 ms | stmts/round | tx/round | DB q/s "
        "| DB w/s "
        "| DB CPU | ack->end p50 s | ack->end p99 s | discovery p50 s | discovery p99 s "
        "| Keeper RSS MB | load 1m | sim CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f, c = r.figures, r.config
        if "error" in f:
            size = f"{c['services']}x{c['clusters']}x{c['instances']}"
            lines.append(f"| {r.scenario} | {size} | failed: {f['error']} |" + " |" * 13)
            continue
        ops = f.get("action", {}).get("ack_to_end_s") or f.get("deploy", {}).get("ack_to_end_s")
        prop = f.get("propagation_s") if (f.get("propagation_s") or {}).get("count") else None
        prop = prop or f.get("deploy", {}).get("propagation_s")
        rss = max((f.get("keeper_rss_mb") or {"-": 0}).values())
        lines.append(
            f"| {r.scenario} | {c['services']}x{c['clusters']}x{c['instances']} "
            f"| {_ms(f.get('round_s'), 'p50')} | {_ms(f.get('round_s'), 'p99')} "
            f"| {f.get('reconciler_statements_per_round', '-')} "
            f"| {f.get('reconciler_transactions_per_round', '-')} "
            f"| {f.get('db_queries_per_s', '-')} | {f.get('db_writes_per_s', '-')} "
            f"| {f.get('db_cpu_cores', '-')} | {_s(ops, 'p50')} | {_s(ops, 'p99')} "
            f"| {_s(prop, 'p50')} | {_s(prop, 'p99')} | {rss} "
            f"| {max(f.get('load_average_1m') or ['-'])} "
            f"| {(f.get('cpu_cores') or {}).get('sim', '-')} |"
        )
    return lines


ROUND_P99_GOAL_S = 0.5
WAVE_VS_ONE_GOAL = 2.0
DISCOVERY_P99_GOAL_S = 2.0


def goal_rows(results: Sequence[ScenarioResult]) -> list[str]:
    """Issue #16's goals, each against what this run measured ("-": not measured here)."""
    rows: list[tuple[str, str, str]] = []
    for r in results:
        f = r.figures
        if "error" in f:
            continue
        p99 = (f.get("round_s") or {}).get("p99")
        if p99 is not None:
            rows.append(
                (
                    f"{r.scenario}: reconcile round p99 <= 500 ms",
                    f"{p99 * 1000:.0f} ms",
                    _met(p99 <= ROUND_P99_GOAL_S),
                )
            )
        prop = f.get("propagation_s") if (f.get("propagation_s") or {}).get("count") else None
        prop = prop or f.get("deploy", {}).get("propagation_s")
        if prop and prop.get("p99") is not None:
            rows.append(
                (
                    f"{r.scenario}: discovery p99 <= 2 s",
                    f"{prop['p99']:.2f} s",
                    _met(prop["p99"] <= DISCOVERY_P99_GOAL_S),
                )
            )
        action = f.get("action", {})
        if "wave_vs_one" in action:
            rows.append(
                (
                    f"{r.scenario}: a {action['wave_services']}-service wave within 2x one "
                    "service's update",
                    f"{action['span_s']} s vs {action['one_service']['span_s']} s: "
                    f"{action['wave_vs_one']}x",
                    _met(action["wave_vs_one"] <= WAVE_VS_ONE_GOAL),
                )
            )
        if "acknowledged_ops_lost" in action:
            lost = len(action["acknowledged_ops_lost"])
            rows.append(
                (
                    f"{r.scenario}: no acknowledged op lost",
                    f"{lost} lost of {action['ops']}",
                    _met(lost == 0 and action["acknowledged_ops_not_succeeded"] == 0),
                )
            )
    if not rows:
        return []
    size = {
        f"{c['services']}x{c['clusters']}x{c['instances']}" for c in (r.config for r in results)
    }
    return [
        f"## Goals (issue #16, set for 1000x3x100; measured here at {', '.join(sorted(size))})",
        "",
        "| goal | measured | |",
        "|---|---|---|",
        *(f"| {g} | {m} | {ok} |" for g, m, ok in rows),
        "",
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def write_runs(out: Path, results: Sequence[ScenarioResult], profile: str | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    payload = [
        {
            "scenario": r.scenario,
            "config": r.config,
            "figures": r.figures,
            "events": r.events,
            "rounds": r.rounds,
        }
        for r in results
    ]
    (out / "report.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# Control-plane simulation",
        "",
        "Wall-clock figures from one machine (2 cores, shared with whatever else ran: see",
        "load 1m, the 1-minute load average at the window's ends; times are comparable",
        "between runs only at similar load). stmts/round: the leader's DB statements per",
        "reconcile round, which does not depend on load.",
        "ack->end: operation acknowledged by a Keeper -> its row ended (the wave's ops, or",
        "the deploys for steady). discovery: endpoint written -> a watcher's list shows it",
        "(the loss's withdrawals for cluster-loss, else the deploys' first publications).",
        "DB q/s and w/s: statements per second of every client in the window. sim CPU:",
        "cores used by the simulation's own process (every AppMaster, link, fake actor and",
        "watcher): near 1, it is saturated and its links hear their Keepers late.",
        "",
        *scenario_rows(results),
        "",
    ]
    lines += goal_rows(results)
    for r in results:
        lines += [f"## {r.scenario}", "", "```json", json.dumps(r.figures, indent=2), "```", ""]
    if profile:
        lines += [
            "## Where the leader's time goes (cProfile, cumulative)",
            "",
            "```",
            profile,
            "```",
            "",
        ]
    (out / "report.md").write_text("\n".join(lines))
    _plot_rounds(out / "rounds.png", results)
    return out


def _plot_rounds(path: Path, results: Sequence[ScenarioResult]) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.6 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        t0 = r.events.get("window_start", r.rounds[0][0] if r.rounds else 0.0)
        ax.plot([t - t0 for t, _ in r.rounds], [d * 1000 for _, d in r.rounds], ".", ms=3)
        for name, at in r.events.items():
            if name != "window_start":
                ax.axvline(at - t0, color="red", lw=1)
                ax.annotate(name, (at - t0, 0), color="red", fontsize=8)
        ax.set_title(r.scenario, fontsize=10)
        ax.set_ylabel("round ms")
    axes[-1, 0].set_xlabel("seconds into the window")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


GROWTH_METRICS: tuple[tuple[str, Callable[[dict[str, Any]], float]], ...] = (
    ("round p50 ms", lambda f: (f["round_s"]["p50"] or math.nan) * 1000),
    ("stmts/round", lambda f: f["reconciler_statements_per_round"] or math.nan),
    ("tx/round", lambda f: f["reconciler_transactions_per_round"] or math.nan),
    ("DB q/s", lambda f: f["db_queries_per_s"]),
    ("DB w/s", lambda f: f["db_writes_per_s"]),
    ("DB CPU", lambda f: f["db_cpu_cores"]),
    ("Keeper RSS MB", lambda f: max(f["keeper_rss_mb"].values())),
)


def write_growth(out: Path, results: Sequence[ScenarioResult]) -> Path:
    """Steady runs as S doubles (I fixed) and as I doubles (S fixed): a table, each
    figure's log-log slope per axis, and the log-log plot."""
    out.mkdir(parents=True, exist_ok=True)
    payload = [{"config": r.config, "figures": r.figures} for r in results]
    results = [r for r in results if "error" not in r.figures]  # in report.json only
    (out / "report.json").write_text(json.dumps(payload, indent=2))
    names = [m[0] for m in GROWTH_METRICS]
    lines = [
        "# Growth of the steady state as S and I double",
        "",
        "| S | C | I | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in results:
        c = r.config
        vals = " | ".join(f"{m(r.figures):.3g}" for _, m in GROWTH_METRICS)
        lines.append(f"| {c['services']} | {c['clusters']} | {c['instances']} | {vals} |")
    lines += ["", "Log-log slope (1 = linear, 0 = flat):", ""]
    lines += ["| grows with | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for axis in ("services", "instances"):
        series = _series(results, axis)
        if len(series) < 2:
            continue
        xs = [r.config[axis] for r in series]
        slopes = [loglog_slope(xs, [m(r.figures) for r in series]) for _, m in GROWTH_METRICS]
        lines.append(f"| {axis} | " + " | ".join(f"{s:.2f}" for s in slopes) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot_growth(out / "growth.png", results)
    return out


def _series(results: Sequence[ScenarioResult], axis: str) -> list[ScenarioResult]:
    """The runs that vary ``axis`` with the other held at its smallest value."""
    other = "instances" if axis == "services" else "services"
    base = min(r.config[other] for r in results)
    return sorted((r for r in results if r.config[other] == base), key=lambda r: r.config[axis])


def _plot_growth(path: Path, results: Sequence[ScenarioResult]) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, axis in zip(axes, ("services", "instances"), strict=True):
        series = _series(results, axis)
        xs = [r.config[axis] for r in series]
        for name, m in GROWTH_METRICS:
            ys = [m(r.figures) for r in series]
            if all(y > 0 for y in ys):
                ax.loglog(xs, ys, "o-", label=name, base=2)
        ax.set_xlabel(f"{axis} (log2)")
        ax.set_title(f"steady state as {axis} double")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

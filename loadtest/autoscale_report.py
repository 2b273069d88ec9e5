"""Writing an autoscaling scenario's reports: per service ``sla.json``, ``report.md`` and
``timeline.png`` (its instance count drawn over the load), and for the run
``comparison.md``, ``comparison.json`` and ``comparison.png`` (the four side by side).
The figures and goals come from ``autoscale_analysis``; this module only presents them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.autoscale_analysis import (
    POLICIES,
    Figures,
    Goal,
    Sample,
    Second,
    cut,
    extra_cost,
    violations,
)

COLOURS = {
    "static": "tab:gray",
    "baseline": "tab:orange",
    "reactive": "tab:blue",
    "predictive": "tab:green",
}


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0%}"


def service_markdown(f: Figures, meta: Mapping[str, Any]) -> str:
    """One service's report.md."""
    capacity = ""
    if f.needed is not None:
        capacity = (
            f"| time to capacity (serving >= {f.needed}) | {_s(f.capacity_s)} "
            f"(decided after {_s(f.decided_s)}) |\n"
        )
    return f"""# {meta["scenario"]}: {f.policy} ({f.service})

{meta["policies"][f.policy]}

| | |
|---|---|
| SLO-violation seconds | **{f.violation_s}** (p99 > {meta["slo_p99_ms"]:g} ms or a failure) |
| instance-seconds | **{f.instance_s:.0f}** |
| flips (changes of direction) | {f.flips}; most in any 10 min: {f.most_flips_10min}; \
{f.flips_per_10min:.2f} per 10 min |
{capacity}| calls | {f.requests:,} ({f.failures:,} failed), p99 {f.p99_ms:.1f} ms |
| judged | seconds {meta["window"][0]:.0f} to {meta["window"][1]:.0f} of the trace |

Definitions: `loadtest/autoscale_analysis.py`. `timeline.png`: the offered and answered
calls per second, the instances decided and serving, and the p99 per second with the
violation seconds shaded; `raw.jsonl` holds every call, `counts.jsonl` every sample of
the counts, `events.json` the autoscaler's decisions that changed the count.
"""


def comparison_markdown(
    meta: Mapping[str, Any], by_policy: Mapping[str, Figures], goals: Sequence[Goal]
) -> str:
    """The run's side-by-side table, the ratios against the baseline, and the goals."""
    verdict = "GOALS MET" if all(g.met for g in goals) else "GOALS NOT MET"
    base = by_policy["baseline"]
    rows = []
    for p in POLICIES:
        f = by_policy[p]
        rows.append(
            f"| {p} | {f.violation_s} | {_pct(None if p == 'baseline' else _neg(cut(f, base)))} "
            f"| {f.instance_s:.0f} | {_pct(None if p == 'baseline' else extra_cost(f, base))} "
            f"| {f.flips} | {f.most_flips_10min} | {_s(f.capacity_s) if f.needed else ''} "
            f"| {f.requests:,} | {f.failures:,} | {f.p99_ms:.0f} |"
        )
    goal_rows = [f"| {'met' if g.met else '**not met**'} | {g.text} | {g.figure} |" for g in goals]
    control = by_policy["static"].violation_s
    caveat = (
        f"\n**Caveat:** static, provisioned for the peak, had {control} violation seconds: "
        "in those the machine or the load generator, not an autoscaler, was short; a lower "
        "`--rate` keeps them out of the comparison.\n"
        if control
        else ""
    )
    policies = "\n".join(f"- **{p}**: {meta['policies'][p]}" for p in POLICIES)
    params = ", ".join(f"{k} {v}" for k, v in meta["load"].items())
    return f"""# Autoscaling scenario {meta["scenario"]}: {verdict}

Four services on the same stack, the same trace played at each by its own Locust
process from the same start (T0). Judged over seconds {meta["window"][0]:.0f} to \
{meta["window"][1]:.0f} of the trace.

| service | violation s | vs baseline | instance-s | vs baseline | flips | most flips / 10 min \
| time to capacity | calls | failed | p99 ms |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

"vs baseline": violation seconds and instance-seconds relative to the Ray-Serve-like
baseline (-40 % violation seconds is a 40 % cut).
{caveat}
| goal | | figure |
|---|---|---|
{chr(10).join(goal_rows)}

Services:

{policies}

Load: {params}. SLO: p99 <= {meta["slo_p99_ms"]:g} ms and no failure, per second.
Definitions: `loadtest/autoscale_analysis.py`.
"""


def _neg(value: float | None) -> float | None:
    return None if value is None else -value


def write_service(
    out: Path,
    f: Figures,
    meta: Mapping[str, Any],
    *,
    seconds: Sequence[Second],
    samples: Sequence[Sample],
    offered: Sequence[float],
    sla: Mapping[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    body = {**sla, **f.to_json(), "scenario": meta["scenario"], "window": meta["window"]}
    (out / "sla.json").write_text(json.dumps(body, indent=2) + "\n")
    (out / "report.md").write_text(service_markdown(f, meta))
    plot_service(
        out / "timeline.png", f, meta=meta, seconds=seconds, samples=samples, offered=offered
    )


def write_comparison(
    out: Path,
    meta: Mapping[str, Any],
    by_policy: Mapping[str, Figures],
    goals: Sequence[Goal],
    *,
    samples: Mapping[str, Sequence[Sample]],
    offered: Sequence[float],
) -> None:
    body = {
        **meta,
        "passed": all(g.met for g in goals),
        "goals": [g.to_json() for g in goals],
        "services": {p: f.to_json() for p, f in by_policy.items()},
    }
    (out / "comparison.json").write_text(json.dumps(body, indent=2) + "\n")
    (out / "comparison.md").write_text(comparison_markdown(meta, by_policy, goals))
    plot_comparison(out / "comparison.png", meta, samples, offered)


def _held(samples: Sequence[Sample], end: float) -> list[Sample]:
    """``samples`` with the last one repeated at ``end``, so a step plot draws it."""
    if not samples or samples[-1].t >= end:
        return list(samples)
    last = samples[-1]
    return [*samples, Sample(end, last.wanted, last.serving, last.existing)]


def _marks(ax: Any, meta: Mapping[str, Any], *, label: bool) -> None:
    for name, t in meta.get("marks", {}).items():
        ax.axvline(t, color="gray", linestyle="--", linewidth=1)
        if label:
            ax.text(t, ax.get_ylim()[1] * 0.92, f" {name}", fontsize=8)


def plot_service(
    path: Path,
    f: Figures,
    *,
    meta: Mapping[str, Any],
    seconds: Sequence[Second],
    samples: Sequence[Sample],
    offered: Sequence[float],
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    t = [s.t for s in seconds]
    top.plot(range(len(offered)), offered, label="offered calls/s", color="lightgray")
    top.plot(t, [s.requests for s in seconds], label="calls/s", color="tab:blue", linewidth=0.8)
    top.plot(t, [s.failures for s in seconds], label="failed/s", color="tab:red", linewidth=0.8)
    top.set_ylabel("calls per second")
    counts = top.twinx()
    samples = _held(samples, meta["window"][1])
    counts.step(
        [s.t for s in samples], [s.wanted for s in samples], where="post",
        label="instances decided", color="black", linestyle=":",
    )  # fmt: skip
    counts.step(
        [s.t for s in samples], [s.serving for s in samples], where="post",
        label="instances serving", color="black",
    )  # fmt: skip
    counts.set_ylabel("instances")
    counts.set_ylim(bottom=0)
    bad = violations(seconds, meta["slo_p99_ms"])
    bottom.plot(t, [s.p99_ms for s in seconds], label="p99 per second", color="tab:purple")
    bottom.axhline(meta["slo_p99_ms"], color="tab:red", linestyle="--", linewidth=1, label="SLO")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds since the trace's start")
    for ax in (top, bottom):
        for k in bad:
            ax.axvspan(k, k + 1, color="tab:red", alpha=0.15, linewidth=0)
        ax.grid(alpha=0.3)
    _marks(top, meta, label=True)
    _marks(bottom, meta, label=False)
    lines = top.get_legend_handles_labels()
    more = counts.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    bottom.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"{meta['scenario']}, {f.policy}: {f.violation_s} violation s, "
        f"{f.instance_s:.0f} instance-s, {f.flips} flips"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(
    path: Path,
    meta: Mapping[str, Any],
    samples: Mapping[str, Sequence[Sample]],
    offered: Sequence[float],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5))
    ax.fill_between(range(len(offered)), offered, color="lightgray", label="offered calls/s")
    ax.set_ylabel("offered calls per second")
    ax.set_xlabel("seconds since the trace's start")
    counts = ax.twinx()
    for p in POLICIES:
        got = _held(samples.get(p, ()), meta["window"][1])
        counts.step(
            [s.t for s in got], [s.serving for s in got], where="post",
            label=f"{p}: serving", color=COLOURS[p],
        )  # fmt: skip
    counts.set_ylabel("instances serving")
    counts.set_ylim(bottom=0)
    _marks(ax, meta, label=True)
    lines = ax.get_legend_handles_labels()
    more = counts.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{meta['scenario']}: the same trace at four services")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

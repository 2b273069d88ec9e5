"""A chaos run's report: each drill judged from its journal, its calls and the checkers'
violations, then ``summary.md``, ``timeline.png``, ``history.jsonl`` and the journals.

Everything but the file writing and the plot is pure, so the verdicts and the summary
are unit-tested on synthetic journals and histories.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chaos import history
from chaos.catalogue import Thresholds
from chaos.checker import ACKED_OPS_LOST, DataPlane, Violation, data_plane, within
from chaos.history import CallRecord, ControlEvent, FaultWindow
from loadtest.sla import Record, timeline

# --- reading a Chaos Toolkit journal -------------------------------------------------


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True)
class ActivityRun:
    name: str
    status: str
    start: float
    end: float


def method_runs(journal: Mapping[str, Any]) -> list[ActivityRun]:
    return [
        ActivityRun(r["activity"]["name"], r.get("status", "?"), _ts(r["start"]), _ts(r["end"]))
        for r in journal.get("run") or []
        if r.get("start") and r.get("end")
    ]


def fault_window(drill: str, journal: Mapping[str, Any]) -> FaultWindow | None:
    """The method's span: first activity's start to last activity's end."""
    runs = method_runs(journal)
    if not runs:
        return None
    return FaultWindow(drill, min(r.start for r in runs), max(r.end for r in runs))


def recovery_s(journal: Mapping[str, Any], t: Thresholds) -> float | None:
    """``recovery_from``'s start (or end) to ``recovery_until``'s end; None when not
    defined, or when the wait did not succeed (not recovered)."""
    if t.recovery_from is None or t.recovery_until is None:
        return None
    runs = {r.name: r for r in method_runs(journal)}
    begin, until = runs.get(t.recovery_from), runs.get(t.recovery_until)
    if begin is None or until is None or until.status != "succeeded":
        return None
    if t.recovery_from_edge == "measured":
        output = next(
            (r.get("output") for r in journal.get("run") or []
             if r["activity"]["name"] == t.recovery_until),
            None,
        )  # fmt: skip
        return float(output) if isinstance(output, int | float) else None
    return until.end - (begin.start if t.recovery_from_edge == "start" else begin.end)


def failed_activities(journal: Mapping[str, Any]) -> list[str]:
    """Method activities and rollbacks that failed (raised), by name."""
    return [
        f"{part}: {r['activity'].get('name')}"
        for part in ("run", "rollbacks")
        for r in journal.get(part) or []
        if r.get("status") == "failed"
    ]


def steady_state(journal: Mapping[str, Any], when: str) -> tuple[bool | None, list[str]]:
    """Whether the steady state held ``before`` or ``after``, and the probes that did not."""
    state = (journal.get("steady_states") or {}).get(when)
    if not state:
        return None, []
    missed = [
        p["activity"]["name"] for p in state.get("probes") or [] if not p.get("tolerance_met")
    ]
    return bool(state.get("steady_state_met")), missed


# --- judging a drill -----------------------------------------------------------------


@dataclass(frozen=True)
class DrillResult:
    name: str
    fault: str
    control: bool
    thresholds: Thresholds
    journal_status: str
    deviated: bool
    span: tuple[float, float]
    """The whole experiment (wall clock): steady state, method, steady state, rollbacks."""
    window: FaultWindow | None
    whole: DataPlane
    during: DataPlane
    """The calls that started in the fault window."""
    recovery_s: float | None
    ops: Mapping[str, int] = field(default_factory=dict)
    """Control ops by outcome (ok, fail, info)."""
    violations: tuple[Violation, ...] = ()
    reasons: tuple[str, ...] = ()
    """Why it failed; empty when it passed."""

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def acked_ops_lost(self) -> int:
        return len({v.subject for v in self.violations if v.kind in ACKED_OPS_LOST})


def judge(
    name: str,
    fault: str,
    *,
    control: bool,
    thresholds: Thresholds,
    journal: Mapping[str, Any],
    calls: Sequence[CallRecord],
    history: Sequence[ControlEvent],
    violations: Sequence[Violation],
    span: tuple[float, float],
) -> DrillResult:
    window = fault_window(name, journal)
    whole = data_plane(within(calls, *span), span[0])
    during = (
        data_plane(within(calls, window.start, window.end), window.start)
        if window is not None
        else DataPlane(calls=0, failures=0)
    )
    recovery = recovery_s(journal, thresholds)
    reasons = _reasons(journal, thresholds, whole, during, recovery, violations)
    return DrillResult(
        name=name,
        fault=fault,
        control=control,
        thresholds=thresholds,
        journal_status=str(journal.get("status")),
        deviated=bool(journal.get("deviated")),
        span=span,
        window=window,
        whole=whole,
        during=during,
        recovery_s=recovery,
        ops=dict(Counter(e.type for e in history if e.type != "invoke")),
        violations=tuple(violations),
        reasons=tuple(reasons),
    )


def _reasons(  # noqa: PLR0917 - everything a verdict is made of
    journal: Mapping[str, Any],
    t: Thresholds,
    whole: DataPlane,
    during: DataPlane,
    recovery: float | None,
    violations: Sequence[Violation],
) -> list[str]:
    reasons = []
    if journal.get("status") != "completed":
        reasons.append(f"journal status {journal.get('status')}")
    before, missed_before = steady_state(journal, "before")
    if before is not True:
        reasons.append(f"steady state not met before the fault {missed_before}")
    after, missed_after = steady_state(journal, "after")
    if journal.get("deviated") or (before and after is not True):
        reasons.append(f"steady state deviated after the fault {missed_after}")
    reasons += [f"failed {a}" for a in failed_activities(journal)]
    if whole.calls == 0:
        reasons.append("no call was recorded")
    elif whole.availability < t.min_availability:
        reasons.append(f"availability {whole.availability:.5f} < {t.min_availability}")
    streak = whole.longest_streak.seconds
    if t.max_failure_streak_s is not None and streak > t.max_failure_streak_s:
        reasons.append(f"failure streak {streak:.2f}s > {t.max_failure_streak_s}s")
    if t.max_recovery_s is not None:
        if recovery is None:
            reasons.append(f"not recovered ({t.recovery_until} did not succeed)")
        elif recovery > t.max_recovery_s:
            reasons.append(f"recovery {recovery:.2f}s > {t.max_recovery_s}s")
    if t.max_p99_ms is not None and during.p99_ms > t.max_p99_ms:
        reasons.append(f"p99 during the fault {during.p99_ms:.0f}ms > {t.max_p99_ms}ms")
    if violations:
        kinds = Counter(v.kind for v in violations)
        reasons.append("violations: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return reasons


# --- summary.md ----------------------------------------------------------------------


def _codes(d: DataPlane) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.by_code.items()) or "-"


def _streak(d: DataPlane) -> str:
    s = d.longest_streak
    return f"{s.calls} calls / {s.seconds:.2f} s" if s.calls else "-"


def _recovery(r: DrillResult) -> str:
    t = r.thresholds
    if t.recovery_until is None:
        return "-"
    if r.recovery_s is None:
        return "**not recovered**"
    bar = f" (≤ {t.max_recovery_s:g})" if t.max_recovery_s is not None else ""
    return f"{r.recovery_s:.2f} s{bar}"


def row(r: DrillResult) -> str:
    verdict = "PASS" if r.passed else "**FAIL**"
    p99 = f"{r.during.p99_ms:.1f} ms" if r.during.calls else "-"
    cells = [
        r.name,
        r.fault,
        f"{r.whole.calls:,}",
        _codes(r.whole),
        f"{r.whole.availability:.5f}",
        _streak(r.whole),
        p99,
        _recovery(r),
        str(r.acked_ops_lost),
        str(len(r.violations)),
        verdict,
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| drill | fault | calls | failures by code | availability | longest failure streak "
    "| p99 during fault | recovery | acked ops lost | violations | verdict |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def summary_md(run: str, results: Sequence[DrillResult], about: Mapping[str, str]) -> str:
    passed = bool(results) and all(r.passed for r in results)
    lines = [f"# Chaos run {run}: {'PASSED' if passed else 'FAILED'}", ""]
    lines += [f"- {k}: {v}" for k, v in about.items()]
    lines += ["", HEADER, *(row(r) for r in results), ""]
    control = next((r for r in results if r.control), None)
    if control is not None:
        lines.append(
            f"Noise floor (control run, no fault): availability "
            f"{control.whole.availability:.5f}, p50 / p99 {control.whole.p50_ms:.1f} / "
            f"{control.whole.p99_ms:.1f} ms over {control.whole.calls:,} calls."
        )
        lines.append("")
    lines.append(
        "Availability and the longest failure streak count every call of the drill (steady "
        "state, fault, recovery, rollback); p99 counts the calls that started during the "
        "fault (the experiment's method). Recovery is timed from the journal: the start of "
        "the fault's activity to the end of the probe that saw the system back. Acked ops "
        "lost: control operations a Keeper acknowledged that are not durable or were not "
        "carried out."
    )
    for r in results:
        lines += ["", f"## {r.name}: {'passed' if r.passed else 'FAILED'}", ""]
        lines.append(
            f"- journal: {r.journal_status}, deviated {str(r.deviated).lower()}; control ops: "
            + (", ".join(f"{k} {v}" for k, v in sorted(r.ops.items())) or "none")
        )
        if r.window is not None:
            lines.append(
                f"- during the fault ({r.window.end - r.window.start:.1f} s): "
                f"{r.during.calls:,} calls, availability {r.during.availability:.5f}, "
                f"failures {_codes(r.during)}, answers {dict(r.during.per_cluster)}"
            )
        lines += [f"- {reason}" for reason in r.reasons]
        lines += [f"  - {v.kind} `{v.subject}`: {v.detail}" for v in r.violations[:20]]
        if len(r.violations) > 20:
            lines.append(f"  - … {len(r.violations) - 20} more in the journal's directory")
    return "\n".join(lines) + "\n"


# --- files ---------------------------------------------------------------------------


def write_journal(out: Path, drill: str, journal: Mapping[str, Any]) -> Path:
    path = out / f"journal-{drill}.json"
    path.write_text(json.dumps(journal, indent=2, default=str) + "\n")
    return path


def plot_timeline(path: Path, calls: Sequence[CallRecord], results: Sequence[DrillResult]) -> None:
    """Success rate and p99 per second over the run, each drill's fault window shaded."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    records = [Record(c.start, c.latency_ms, c.outcome, c.cluster) for c in calls]
    seconds = timeline(records)
    t0 = min(c.start for c in calls) if calls else 0.0
    t = [p["t"] for p in seconds]
    rate = [100 * (1 - p["failures"] / p["requests"]) if p["requests"] else 0.0 for p in seconds]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 6), sharex=True)
    top.plot(t, rate, color="tab:green", linewidth=1)
    top.set_ylabel("success %")
    top.set_ylim(min([*rate, 90.0]) - 1, 100.5)
    bottom.plot(t, [p["p99_ms"] for p in seconds], color="tab:purple", linewidth=1)
    bottom.set_ylabel("p99 ms")
    bottom.set_xlabel("seconds since the first call")
    for r in results:
        if r.window is None or r.control:
            continue
        color = "tab:red" if not r.passed else "tab:orange"
        for ax in (top, bottom):
            ax.axvspan(r.window.start - t0, r.window.end - t0, color=color, alpha=0.18)
        top.text(r.window.start - t0, 100.3, r.name, fontsize=7, rotation=30, va="bottom")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.suptitle("chaos run: success rate and p99 per second; fault windows shaded", y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(  # noqa: PLR0917 - one report's parts
    out: Path,
    run: str,
    results: Sequence[DrillResult],
    calls: Sequence[CallRecord],
    control: Sequence[ControlEvent],
    about: Mapping[str, str],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    windows = [r.window for r in results if r.window is not None]
    history.write(out / "history.jsonl", [*calls, *control, *windows])
    (out / "summary.md").write_text(summary_md(run, results, about))
    plot_timeline(out / "timeline.png", calls, results)


# --- random mode ----------------------------------------------------------------------


@dataclass(frozen=True)
class RandomRun:
    """A random run (``chaos.run --mode random``): its faults, each judged on its own
    checks, and the whole run's data plane and history checks."""

    seed: int
    duration_s: float
    planned: int
    min_faults: int
    min_availability: float
    started: float
    ended: float
    whole: DataPlane
    violations: tuple[Violation, ...]
    faults: tuple[DrillResult, ...]
    reasons: tuple[str, ...]
    """Why the run failed; empty when it passed."""

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def acked_ops_lost(self) -> int:
        return len({v.subject for v in self.violations if v.kind in ACKED_OPS_LOST})


def random_reasons(
    whole: DataPlane,
    violations: Sequence[Violation],
    *,
    injected: int,
    min_faults: int,
    min_availability: float,
    unhealed: Sequence[str] = (),
    deviated: Sequence[str] = (),
    stopped: str = "",
) -> list[str]:
    """Why a random run failed: availability over the whole run below the bar, any
    violation of the history checkers, fewer faults injected than promised, a fault
    after which the stack could not be healed, a fault that missed its own checks
    (steady states, activities, recovery bar), or a run that stopped on an error."""
    reasons = []
    if whole.calls == 0:
        reasons.append("no call was recorded")
    elif whole.availability < min_availability:
        reasons.append(f"availability {whole.availability:.5f} < {min_availability}")
    if violations:
        kinds = Counter(v.kind for v in violations)
        reasons.append("violations: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    if injected < min_faults:
        reasons.append(f"only {injected} faults injected (at least {min_faults})")
    if unhealed:
        reasons.append(f"not healed after {', '.join(unhealed)}")
    if deviated:
        reasons.append(f"own checks missed by {', '.join(deviated)}")
    if stopped.startswith("the run stopped"):
        reasons.append(stopped)
    return reasons


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%H:%M:%S")


def random_row(r: DrillResult, started: float) -> str:
    took = r.span[1] - r.span[0]
    own = "ok" if r.passed else "; ".join(r.reasons)
    cells = [
        r.name.split("-", 1)[0],
        f"{r.span[0] - started:.0f} s ({_clock(r.span[0])})",
        r.name.split("-", 1)[-1],
        r.fault,
        f"{took:.1f} s",
        r.journal_status,
        f"{r.whole.calls:,}",
        _codes(r.whole),
        _recovery(r),
        own,
    ]
    return "| " + " | ".join(cells) + " |"


RANDOM_HEADER = (
    "| # | at (UTC) | drill | fault | took | journal | calls | failures by code | recovery "
    "| its own checks |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def random_summary_md(run: str, r: RandomRun, about: Mapping[str, str]) -> str:
    verdict = "PASSED" if r.passed else "FAILED"
    injected = sum(1 for f in r.faults if f.window is not None)
    w = r.whole
    lines = [f"# Chaos run {run} (random, seed {r.seed}): {verdict}", ""]
    lines += [
        f"- seed {r.seed}: `make chaos MODE=random SEED={r.seed} DURATION={r.duration_s:g}` "
        "plans the same faults",
        f"- {len(r.faults)} faults ran: {min(len(r.faults), r.planned)} of {r.planned} "
        f"planned, {max(0, len(r.faults) - r.planned)} topped up after the plan "
        f"({injected} injected, at least {r.min_faults} required), in "
        f"{r.ended - r.started:.0f} s of {r.duration_s:g} s, from {_clock(r.started)} UTC",
    ]
    lines += [f"- {k}: {v}" for k, v in about.items()]
    lines += [
        "",
        "## The whole run",
        "",
        f"- calls {w.calls:,}, failures {_codes(w)}, availability {w.availability:.5f} "
        f"(≥ {r.min_availability}), longest failure streak {_streak(w)}, p50 / p99 "
        f"{w.p50_ms:.1f} / {w.p99_ms:.1f} ms",
        f"- acknowledged ops lost {r.acked_ops_lost}, violations {len(r.violations)}",
    ]
    lines += [f"- {reason}" for reason in r.reasons]
    lines += [f"  - {v.kind} `{v.subject}`: {v.detail}" for v in r.violations[:20]]
    if len(r.violations) > 20:
        lines.append(f"  - … {len(r.violations) - 20} more in history.jsonl's checks")
    lines += ["", "## The faults", "", RANDOM_HEADER]
    lines += [random_row(f, r.started) for f in r.faults]
    lines += [
        "",
        "Each fault is its drill's own experiment (steady state before, the fault, steady "
        "state after, heal). Its own checks are its steady states, activities and recovery "
        "bar; availability is judged over the whole run only (a fault has no observation "
        "window of its own here), as are the history checkers. Journals: "
        "`journal-<#>-<drill>.json`.",
    ]
    return "\n".join(lines) + "\n"


def write_random(  # noqa: PLR0917 - one report's parts
    out: Path,
    run: str,
    r: RandomRun,
    calls: Sequence[CallRecord],
    control: Sequence[ControlEvent],
    about: Mapping[str, str],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    windows = [f.window for f in r.faults if f.window is not None]
    history.write(out / "history.jsonl", [*calls, *control, *windows])
    (out / "summary.md").write_text(random_summary_md(run, r, about))
    plot_timeline(out / "timeline.png", calls, r.faults)

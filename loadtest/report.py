"""Writing a scenario's report directory: sla.json, report.md and timeline.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtest.sla import Record, timeline


def write(out: Path, sla: dict[str, Any], records: list[Record]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sla.json").write_text(json.dumps(sla, indent=2) + "\n")
    (out / "report.md").write_text(markdown(sla))
    plot(out / "timeline.png", records, sla)


def markdown(s: dict[str, Any]) -> str:
    verdict = "PASSED" if s["passed"] else "FAILED"
    failures = ", ".join(f"{k}: {v}" for k, v in s["failures_by_outcome"].items()) or "none"
    per_cluster = ", ".join(f"{k}: {v}" for k, v in s["per_cluster"].items())
    return f"""# SLA report: {s["scenario"]} ({verdict})

| | |
|---|---|
| availability | **{s["availability"]:.5f}** (SLO {s["slo"]}) |
| requests | {s["requests"]:,} ({s["failures"]:,} failed: {failures}) |
| latency p50 / p99 / p99.9 / max | {s["p50_ms"]:.1f} / {s["p99_ms"]:.1f} / {s["p999_ms"]:.1f} / \
{s["max_ms"]:.1f} ms |
| instances | {s["instances"]} across {s["clusters"]} clusters, \
{s["instances_per_worker"]} per worker process |
| update | {s["update_duration_s"]:.1f} s ({s["update"]}) |
| longest run of seconds with a failure | {s["longest_bad_streak_s"]:.0f} s |
| answers per cluster | {per_cluster} |
| load | {s["users"]} Locust users, {s["duration_s"]:.0f} s, deadline {s["deadline_s"]} s |

Availability = successful / all requests; every non-OK status (UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, …), connection error or timeout
is a failure. Percentiles are computed from every raw latency. `timeline.png` shows
requests/s, failures/s and p99 per second, with the update's start and end marked;
`locust.html` is Locust's own report.
"""


def plot(path: Path, records: list[Record], s: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    seconds = timeline(records)
    t = [p["t"] for p in seconds]
    t0 = min(r.start for r in records) if records else 0.0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(t, [p["requests"] for p in seconds], label="requests/s", color="tab:blue")
    top.plot(t, [p["failures"] for p in seconds], label="failures/s", color="tab:red")
    top.set_ylabel("per second")
    bottom.plot(t, [p["p99_ms"] for p in seconds], label="p99 latency", color="tab:purple")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds since the first request")
    for ax in (top, bottom):
        for key, label in (("update_start", "update start"), ("update_end", "update end")):
            if s.get(key):
                ax.axvline(s[key] - t0, color="gray", linestyle="--", linewidth=1)
                if ax is top:
                    ax.text(s[key] - t0, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=8)
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{s['scenario']}: availability {s['availability']:.5f}, "
        f"p99 {s['p99_ms']:.1f} ms, {s['requests']:,} requests"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

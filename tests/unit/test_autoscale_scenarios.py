"""The autoscaling scenarios' machinery, without a stack: the load traces (deterministic,
bounded, the step and the burst where they should be), the analysis on hand-made
timelines (violation seconds, instance-seconds, flips, time to capacity) and the goals
it judges (a planted extra flip fails the noise goal), the reports, and the runner's
pure parts (the four services' specs, the seeded rate history, the sampler's reading of
an AppMaster state)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha_serving._jobstate import Instance, Phase
from ha_serving._spec import PredictivePolicy, Revision, parse_spec
from ha_serving.appmaster._forecast import forecast_rate
from ha_serving.store import Store
from loadtest import autoscale, shapes
from loadtest import autoscale_analysis as an
from loadtest import autoscale_report as report
from loadtest.shapes import TraceParams, build
from loadtest.sla import Record
from tests.unit.jobstates import job_state

# --- the traces ------------------------------------------------------------------------


def test_step_5x_is_1x_then_5x_from_its_step_second() -> None:
    trace = build(TraceParams("step-5x"))
    assert trace.step_at == shapes.PRE_S == 180
    assert trace.duration_s == shapes.PRE_S + shapes.HOLD_S
    assert set(trace.levels[:180]) == {1.0}
    assert set(trace.levels[180:]) == {5.0}
    assert (trace.users(179.9, 10), trace.users(180.0, 10)) == (10, 50)
    assert trace.judged == (0.0, trace.duration_s)
    short = build(TraceParams("step-5x", compress=2, step=4))
    assert (short.step_at, short.duration_s, short.peak) == (90, 210, 4.0)


@settings(max_examples=30, deadline=None)
@given(
    scenario=st.sampled_from(shapes.SCENARIOS),
    seed=st.integers(0, 10**6),
    compress=st.sampled_from([1.0, 2.0, 4.0, 10.0]),
)
def test_a_trace_is_the_same_for_the_same_params(scenario: str, seed: int, compress: float) -> None:
    p = TraceParams(scenario, seed=seed, compress=compress)
    assert build(p) == build(p)
    if scenario != "step-5x":  # the only trace without noise
        assert (
            build(p).levels != build(TraceParams(scenario, seed=seed + 1, compress=compress)).levels
        )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), noise=st.floats(0.0, 0.5), level=st.floats(0.5, 8.0))
def test_noise_stays_within_its_band_and_holds_each_period(
    seed: int, noise: float, level: float
) -> None:
    trace = build(TraceParams("noise", seed=seed, noise=noise, level=level, compress=10))
    assert all(level * (1 - noise) - 1e-9 <= x <= level * (1 + noise) + 1e-9 for x in trace.levels)
    period = 5
    for k in range(0, len(trace.levels), period):
        assert len(set(trace.levels[k : k + period])) == 1


def test_noise_has_its_mean_and_is_judged_after_it_settled() -> None:
    trace = build(TraceParams("noise", seed=7))
    assert trace.duration_s == shapes.SETTLE_S + shapes.NOISE_S
    assert trace.judged == (shapes.SETTLE_S, trace.duration_s)
    assert sum(trace.levels) / len(trace.levels) == pytest.approx(3.0, rel=0.03)
    short = build(TraceParams("noise", compress=3))
    assert short.judged == (360.0, 360.0 + 600.0)  # the settling is not compressed


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), cycles=st.integers(1, 3), compress=st.sampled_from([2.0, 5.0]))
def test_a_diurnal_day_has_its_curve_and_one_burst_in_its_last_day(
    seed: int, cycles: int, compress: float
) -> None:
    """Without the burst, every second is the day's curve within +-20 %; the burst
    doubles exactly its seconds, once, between 10 % and 85 % of the last day."""
    p = TraceParams("diurnal", seed=seed, cycles=cycles, compress=compress)
    trace, calm = (
        build(p),
        build(TraceParams("diurnal", seed=seed, cycles=cycles, compress=compress, burst=1.0)),
    )
    assert trace.burst is not None
    start, end = trace.burst
    cycle = round(shapes.CYCLE_S / compress)
    assert trace.duration_s == cycles * cycle
    assert trace.judged == ((cycles - 1) * cycle, cycles * cycle)
    day_start = (cycles - 1) * cycle
    assert day_start + 0.10 * cycle - 1 <= start < end <= day_start + 0.85 * cycle + 1
    assert end - start == round(shapes.BURST_SHARE * cycle)
    for k, (x, y) in enumerate(zip(trace.levels, calm.levels, strict=True)):
        assert x == pytest.approx(y * 2 if start <= k < end else y)
    curve = shapes._day(cycle, 5.0) * cycles
    assert all(
        0.8 * c - 1e-9 <= y <= 1.2 * c + 1e-9 for y, c in zip(calm.levels, curve, strict=True)
    )
    assert min(curve) == 1.0
    assert max(curve) == pytest.approx(5.0)


def test_the_history_is_the_curve_with_other_noise_and_no_burst() -> None:
    p = TraceParams("diurnal", seed=3, compress=4)
    days = shapes.history(p, 2)
    cycle = round(shapes.CYCLE_S / 4)
    assert len(days) == 2 * cycle
    curve = shapes._day(cycle, 5.0) * 2
    assert all(0.8 * c - 1e-9 <= y <= 1.2 * c + 1e-9 for y, c in zip(days, curve, strict=True))
    assert days[:cycle] != days[cycle:]
    assert days[:cycle] != list(build(p).levels)
    assert days == shapes.history(p, 2)
    with pytest.raises(ValueError, match="only diurnal has a history"):
        shapes.history(TraceParams("noise"), 1)


def test_impossible_params_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="scenario") as caught:
        TraceParams("ramp", compress=0, noise=1.0, cycles=0)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("scenario 'ramp'", "compress 0", "noise 1", "cycles 0"):
        assert part in message


# --- the analysis on hand-made timelines -----------------------------------------------

T0 = 1000.0


def calls(second: float, n: int, latency_ms: float = 10.0, outcome: str = "OK") -> list[Record]:
    return [Record(T0 + second + k / (n + 1), latency_ms, outcome) for k in range(n)]


def test_violation_seconds_are_the_seconds_with_a_failure_or_a_p99_over_the_slo() -> None:
    """Second 0 fine; 1 one failure; 2 two slow calls in 100 (p99 is the 99th); 3 one slow
    in 100 (p99 is still fast); 4 without calls; 5 fine. A call before the window and
    one after it do not count."""
    records = [
        *calls(0, 10),
        *calls(1, 9),
        *calls(1, 1, outcome="RESOURCE_EXHAUSTED"),
        *calls(2, 98),
        *calls(2, 2, latency_ms=900),
        *calls(3, 99),
        *calls(3, 1, latency_ms=900),
        *calls(5, 10),
        *calls(-1, 5, outcome="UNAVAILABLE"),
        *calls(6, 5, outcome="UNAVAILABLE"),
    ]
    seconds = an.seconds_of(records, T0, 0, 6)
    assert [s.t for s in seconds] == [0, 1, 2, 3, 4, 5]
    assert [s.requests for s in seconds] == [10, 10, 100, 100, 0, 10]
    assert an.violations(seconds, slo_p99_ms=500) == [1.0, 2.0]
    assert an.violations(seconds, slo_p99_ms=1000) == [1.0]


def test_instance_seconds_hold_each_sample_until_the_next() -> None:
    samples = [(-5.0, 1), (10.0, 3), (20.0, 2)]
    assert an.instance_seconds(samples, 0, 30) == 1 * 10 + 3 * 10 + 2 * 10
    assert an.instance_seconds(samples, 15, 25) == 3 * 5 + 2 * 5
    assert an.instance_seconds([(5.0, 4)], 0, 10) == 40  # before the first: the first's
    assert an.instance_seconds([], 0, 10) == 0
    assert an.instance_seconds(samples, 10, 10) == 0


def test_flips_are_reversals_of_direction_and_counted_per_10_minutes() -> None:
    changes = [(1.0, 1, 2), (2.0, 2, 4), (3.0, 4, 3), (4.0, 3, 2), (5.0, 2, 5), (6.0, 5, 5)]
    assert an.flips(changes) == [3.0, 5.0]
    assert an.flips([(1.0, 4, 2), (700.0, 2, 1)]) == []
    assert an.changes_of([(0.0, 1), (1.0, 1), (2.0, 3), (3.0, 2)]) == [(2.0, 1, 3), (3.0, 3, 2)]
    assert an.most_within([], 600) == 0
    assert an.most_within([0.0, 600.0, 1200.0], 600) == 1  # half-open spans
    assert an.most_within([0.0, 599.0, 1500.0], 600) == 2
    assert an.most_within([900.0, 10.0, 300.0], 600) == 2  # in any order


def test_time_to_capacity_is_the_first_sample_at_or_after_the_step_with_enough() -> None:
    samples = [(-1.0, 5), (0.0, 1), (5.0, 3), (12.0, 5), (13.0, 5)]
    assert an.first_reaching(samples, 0.0, 5) == 12.0  # the earlier 5 was before the step
    assert an.first_reaching(samples, 0.0, 1) == 0.0
    assert an.first_reaching(samples, 0.0, 6) is None
    assert an.needed_after_step(5, inflight_1x=2.0, target=2.0) == 5
    assert an.needed_after_step(5, inflight_1x=2.2, target=2.0) == 6
    assert an.needed_after_step(0.1, inflight_1x=1.0, target=2.0) == 1


def run_of(
    policy: str,
    counts: list[tuple[float, int, int]],
    changes: list[tuple[float, int, int]],
    bad: tuple[int, ...] = (),
    *,
    window: tuple[float, float] = (0.0, 1800.0),
    step_at: float | None = None,
    needed: int | None = None,
) -> an.Figures:
    """A service's run from hand-made parts: ``counts`` (t, wanted, serving) samples (the
    recorded count is the wanted one), a call per second, failing in ``bad`` seconds."""
    records = [
        r
        for k in range(int(window[1]))
        for r in calls(k, 1, outcome="UNKNOWN" if k in bad else "OK")
    ]
    samples = [an.Sample(t, w, s, w) for t, w, s in counts]
    return an.figures(
        policy,
        f"as-{policy}",
        records=records,
        samples=samples,
        changes=changes,
        t0=T0,
        window=window,
        slo_p99_ms=500,
        step_at=step_at,
        needed=needed,
    )


def test_figures_of_a_hand_made_run() -> None:
    """2 instances, 4 from t=100 (serving from 110), 3 from t=1000: 1800 s judged, the
    flip at 1000 (down after up), 3 failing seconds, capacity 4 after a step at 95."""
    f = run_of(
        "reactive",
        [(0.0, 2, 2), (100.0, 4, 2), (110.0, 4, 4), (1000.0, 3, 3)],
        [(100.0, 2, 4), (1000.0, 4, 3)],
        bad=(96, 97, 99),
        step_at=95.0,
        needed=4,
    )
    assert f.violation_s == 3
    assert f.instance_s == 2 * 100 + 4 * 900 + 3 * 800
    assert (f.flips, f.most_flips_10min) == (1, 1)
    assert f.flips_per_10min == pytest.approx(1 / 3)
    assert (f.capacity_s, f.decided_s) == (15.0, 5.0)
    assert (f.requests, f.failures) == (1800, 3)


def noise_run(policy: str, flip_times: list[float]) -> an.Figures:
    """A count of 3 that moves 3 -> 4 at t=50, then reverses at each of ``flip_times``."""
    counts, changes, n, up = [(0.0, 3, 3), (50.0, 4, 4)], [(50.0, 3, 4)], 4, True
    for t in flip_times:
        new = n - 1 if up else n + 1
        changes.append((t, n, new))
        counts.append((t, new, new))
        n, up = new, not up
    return run_of(policy, counts, changes)


def test_the_noise_goal_catches_an_extra_flip() -> None:
    """Flips at 300 and 1000 s: at most 1 in any 10 min, the goal is met. A planted extra
    flip at 600 s puts 2 in one 10-minute span: the same checker fails it."""
    ok = {
        "static": noise_run("static", []),
        "baseline": noise_run("baseline", [300.0, 400.0, 500.0]),  # not judged by this goal
        "reactive": noise_run("reactive", [300.0, 1000.0]),
        "predictive": noise_run("predictive", [1200.0]),
    }
    judged = an.goals("noise", ok, instance_start_s=10)
    assert [g.met for g in judged] == [True, True]
    planted = {**ok, "reactive": noise_run("reactive", [300.0, 600.0, 1000.0])}
    judged = an.goals("noise", planted, instance_start_s=10)
    assert [g.met for g in judged] == [False, True]
    assert judged[0].figure == "2 (of 3 in all)"


def test_the_step_goal_is_instance_start_plus_5_s() -> None:
    def step_run(serving_at: float | None) -> dict[str, an.Figures]:
        counts = [(0.0, 1, 1), (181.0, 5, 1)]
        if serving_at is not None:
            counts.append((serving_at, 5, 5))
        f = run_of("reactive", counts, [(181.0, 1, 5)], step_at=180.0, needed=5)
        return dict.fromkeys(an.POLICIES, f)

    assert [g.met for g in an.goals("step-5x", step_run(195.0), instance_start_s=10)] == [True]
    late = an.goals("step-5x", step_run(196.0), instance_start_s=10)
    assert [(g.met, g.figure) for g in late] == [(False, "16 s")]
    never = an.goals("step-5x", step_run(None), instance_start_s=10)
    assert [(g.met, g.figure) for g in never] == [(False, "never")]


def diurnal_of(
    base_bad: int, pred_bad: int, base_cost: int, pred_cost: int
) -> dict[str, an.Figures]:
    """Baseline and predictive runs with that many failing seconds and that many
    instances held over the 1800 s."""
    base = run_of("baseline", [(0.0, base_cost, base_cost)], [], bad=tuple(range(base_bad)))
    pred = run_of("predictive", [(0.0, pred_cost, pred_cost)], [], bad=tuple(range(pred_bad)))
    return {"static": base, "reactive": base, "baseline": base, "predictive": pred}


def test_the_diurnal_goals_are_the_cut_and_the_extra_cost_against_the_baseline() -> None:
    met = an.goals("diurnal", diurnal_of(100, 64, 10, 11), instance_start_s=10)
    assert [g.met for g in met] == [True, True]  # exactly 36 % fewer, exactly +10 %
    assert met[0].figure == "36% (64 s vs 100 s)"
    short = an.goals("diurnal", diurnal_of(100, 65, 10, 12), instance_start_s=10)
    assert [g.met for g in short] == [False, False]
    unjudged = an.goals("diurnal", diurnal_of(0, 0, 10, 5), instance_start_s=10)
    assert [g.met for g in unjudged] == [False, True]
    assert unjudged[0].figure.startswith("not judged")


# --- the reports -----------------------------------------------------------------------


def test_the_reports_are_written_with_their_verdict(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    by_policy = diurnal_of(100, 40, 10, 10)
    goals = an.goals("diurnal", by_policy, instance_start_s=10)
    meta = {
        "scenario": "diurnal",
        "window": [0.0, 1800.0],
        "slo_p99_ms": 500.0,
        "policies": autoscale.POLICY_TEXT,
        "marks": {"burst": 600.0},
        "load": {"1x": "10 calls/s from 10 users"},
    }
    samples = {p: [an.Sample(0.0, 2, 2, 2), an.Sample(900.0, 3, 3, 3)] for p in an.POLICIES}
    offered = [10.0] * 1800
    report.write_comparison(tmp_path, meta, by_policy, goals, samples=samples, offered=offered)
    text = (tmp_path / "comparison.md").read_text()
    assert text.startswith("# Autoscaling scenario diurnal: GOALS MET")
    assert "| predictive | 40 | -60% | 18000 | +0% |" in text
    assert "static, provisioned for the peak, had 100 violation seconds" in text  # the control
    body = json.loads((tmp_path / "comparison.json").read_text())
    assert body["passed"] is True
    assert body["services"]["baseline"]["violation_s"] == 100
    f = by_policy["predictive"]
    records = [r for k in range(1800) for r in calls(k, 1)]
    report.write_service(
        tmp_path / "predictive",
        f,
        meta,
        seconds=an.seconds_of(records, T0, 0, 1800),
        samples=samples["predictive"],
        offered=offered,
        sla={"requests": 1800},
    )
    for path in (tmp_path / "comparison.png", tmp_path / "predictive" / "timeline.png"):
        assert path.read_bytes().startswith(b"\x89PNG")
    assert "SLO-violation seconds | **40**" in (tmp_path / "predictive" / "report.md").read_text()
    missed = an.goals("diurnal", diurnal_of(100, 90, 10, 10), instance_start_s=10)
    assert "GOALS NOT MET" in report.comparison_markdown(meta, diurnal_of(100, 90, 10, 10), missed)


# --- the runner's pure parts -----------------------------------------------------------


def args_for(scenario: str, *extra: str) -> argparse.Namespace:
    return autoscale._parser().parse_args([scenario, *extra])


def load_of(args: argparse.Namespace) -> autoscale.Load:
    return autoscale.Load(
        rate=args.rate,
        users=args.users,
        work_s=args.work_s,
        target=args.target,
        max_concurrency=args.max_concurrency,
        slots=args.slots,
        per_worker=args.per_worker,
        instance_start_s=args.instance_start_s,
        slo_p99_ms=args.slo_p99_ms,
        deadline_s=args.deadline_s,
        headroom=args.headroom,
    )


def test_headroom_lets_the_autoscaled_services_grow_above_the_peaks_count_only() -> None:
    """noise at 3x: the peak (3.59x) needs 4 at a target of 2; with --headroom 3 ours and
    the baseline may grow to 7, and static still holds the peak's 4."""
    args = args_for("noise", "--headroom", "3")
    load, params = load_of(args), autoscale.trace_params(args)
    trace = build(params)
    sections = autoscale.policies(load, trace, params)
    without = autoscale.policies(load_of(args_for("noise")), trace, params)
    for p in ("baseline", "reactive", "predictive"):
        assert sections[p]["max_instances"] == without[p]["max_instances"] + 3  # type: ignore[index]
    static = autoscale.service_spec("as-static", "a", load, trace, sections["static"])
    assert static["instances"] == load.count(trace.peak, load.target) == 4
    with pytest.raises(ValueError, match="--headroom not negative"):
        autoscale.run(args_for("noise", "--headroom", "-1"))


def test_the_four_services_specs() -> None:
    """step-5x at 10 calls/s of 0.2 s calls: 2 in flight at 1x, 10 at 5x. Static holds the
    peak's 5 instances; the autoscaled ones start at 1 and may grow to 5; the baseline
    is Ray Serve's defaults; every spec is valid; a 5x load needs more instances than
    one can run (4 slots each), and one instance's proxies let the whole 5x demand be
    seen in flight (16) rather than shed."""
    args = args_for("step-5x")
    load, params = load_of(args), autoscale.trace_params(args)
    trace = build(params)
    sections = autoscale.policies(load, trace, params)
    specs = {
        p: parse_spec(autoscale.service_spec(f"as-{p}", "a", load, trace, sections[p]))
        for p in an.POLICIES
    }
    assert specs["static"].autoscaling is None
    assert specs["static"].instances == 5
    base = specs["baseline"].autoscaling
    assert base is not None
    assert (base.target_inflight, base.scale_up_delay_s, base.scale_down_delay_s) == (2, 30, 600)
    assert (base.reading_period_s, base.stable_window_s) == (10, 30)
    assert base.panic_threshold * 2 > load.max_concurrency  # never reached: no panic mode
    ours = specs["reactive"].autoscaling
    assert ours is not None
    assert (ours.stable_window_s, ours.scale_up_delay_s, ours.reading_period_s) == (60, 0, None)
    for p in ("baseline", "reactive", "predictive"):
        assert (specs[p].instances, specs[p].autoscaling.max_instances) == (1, 5)  # type: ignore[union-attr]
        assert specs[p].placement.clusters[0].instances == 1
    predictive = specs["predictive"].autoscaling.predictive  # type: ignore[union-attr]
    assert predictive is not None
    assert (predictive.season_s, predictive.step_s) == (1200, 30)
    assert all(s.resources.num_cpus == 0.1 and s.max_concurrency == 16 for s in specs.values())
    assert all(s.config == {"prefix": ">", "slots": 4} for s in specs.values())
    assert load.slots < 5 * load.inflight_1x <= load.max_concurrency


@pytest.mark.parametrize("compress", [1.0, 1.4, 2.0, 3.0, 7.0, 20.0])
def test_the_predictive_season_is_a_valid_policy_at_any_compression(compress: float) -> None:
    season_s, step_s = autoscale.season(TraceParams("diurnal", compress=compress))
    policy = PredictivePolicy(season_s=season_s, step_s=step_s, min_seasons=2)
    assert policy.step_s >= 10
    assert season_s == round(shapes.CYCLE_S / compress)


def test_a_too_short_day_or_an_invalid_spec_is_refused_before_any_deploy() -> None:
    with pytest.raises(ValueError, match="too short for a forecast"):
        autoscale.season(TraceParams("diurnal", compress=30))
    assert autoscale.main(["step-5x", "--max-concurrency", "1"]) == 2  # target 2 > 1
    assert autoscale.main(["step-5x", "--slots", "-1"]) == 2


def test_live_history_plays_three_days_and_judges_the_last() -> None:
    trace = build(
        autoscale.trace_params(args_for("diurnal", "--history", "live", "--compress", "4"))
    )
    assert trace.duration_s == 3 * 300
    assert trace.judged == (600.0, 900.0)


def test_the_seeded_history_is_what_the_appmaster_would_have_recorded(tmp_path: Path) -> None:
    """Two days before t0 (on the AppMaster's grid, as the runner puts it), each step the
    rate the trace's users offer; enough for the forecast, which then sees the night's
    rate ahead. A t0 off the grid still gets its two whole days."""
    args = args_for("diurnal", "--compress", "4")
    load, params = load_of(args), autoscale.trace_params(args)
    season_s, step_s = autoscale.season(params)
    policy = PredictivePolicy(season_s=season_s, step_s=step_s, min_seasons=2)
    for t0 in (1_700_000_010.0, 1_700_000_007.0):
        with Store.connect(f"sqlite:///{tmp_path / f'{t0}.db'}") as store:
            written = autoscale.seed_history(
                store, "as-predictive", "a", params, t0, load, step_s=step_s
            )
            samples = store.list_rate_samples("as-predictive", "a")
        assert written == len(samples)
        assert all(at % step_s == 0 for at, _ in samples)
        assert samples[0][0] <= t0 - 2 * season_s < samples[0][0] + step_s
        assert samples[-1][0] < t0 <= samples[-1][0] + step_s
        ahead = forecast_rate(samples, policy, t0, load.instance_start_s + step_s)
        assert ahead is not None
        assert ahead == pytest.approx(load.rate, rel=0.5)  # midnight: about 1x
    assert len(samples) == 2 * season_s / step_s + 1  # the off-grid t0's
    aligned = 1_700_000_010.0
    levels = shapes.history(params, 2)
    with Store.connect(f"sqlite:///{tmp_path / f'{aligned}.db'}") as store:
        samples = store.list_rate_samples("as-predictive", "a")
    assert len(samples) == 2 * season_s / step_s
    assert samples[0][0] == aligned - len(levels)
    for k in (0, 17, len(samples) - 1):
        at, rate = samples[k]
        span = levels[round(at - samples[0][0]) :][: round(step_s)]
        assert rate == pytest.approx(sum(round(10 * x) for x in span) / len(span) * 1.0)


def test_the_sampler_reads_the_counts_autoscale_status_shows(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "name": "as-reactive",
            "version": "1",
            "code": {"dir": "code", "import_path": "echo:Echo"},
            "instances": 2,
            "autoscaling": {"max_instances": 8},
        }
    )
    rev = Revision(version="1", package="p", import_path="echo:Echo")
    state = job_state(spec, rev, count=3, autoscaled=5)
    state = state.with_instance(Instance(id="i3", worker="w", index=3, phase=Phase.PENDING))
    with Store.connect(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.save_appmaster_state("a", "as-reactive", state.to_record(), expected_version=None)
        for current, desired in ((2, 5), (5, 4)):
            store.append_event(
                "autoscale",
                cluster="a",
                service="as-reactive",
                detail={"current": current, "desired": desired, "mode": "stable", "reason": ""},
            )
        sampler = autoscale.Sampler(store, "a", {"reactive": "as-reactive"}, t0=0.0)
        sample = sampler.read("as-reactive")
        assert sampler.read("as-other") is None
        changes = autoscale._changes(store, "as-reactive", t0=store.now())
    assert sample is not None
    assert (sample.wanted, sample.serving, sample.existing) == (5, 3, 4)
    assert [(a, b) for _, a, b in changes] == [(2, 5), (5, 4)]
    assert all(-60 < t <= 1 for t, _, _ in changes)
    assert sample.t > 0


def test_echo_slots_make_calls_beyond_them_wait_their_turn() -> None:
    """The scenarios' service model: with 1 slot held by another call, a call waits until
    it is released; without slots, nothing waits."""
    path = Path(__file__).resolve().parents[2] / "examples" / "echo" / "code" / "echo.py"
    found = importlib.util.spec_from_file_location("scenario_echo", path)
    assert found is not None
    assert found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    for slots in (1, 0):
        echo = module.Echo()
        echo.reconfigure({"slots": slots})
        done = threading.Event()
        if slots:
            echo.slots.acquire()  # another call holds the one slot
        call = threading.Thread(target=lambda e=echo, d=done: (e.work(0.0), d.set()))
        call.start()
        if slots:
            assert not done.wait(0.3)  # it waits its turn
            echo.slots.release()
        assert done.wait(10.0)
        call.join()
    assert module.Echo().slots is None  # no config, no limit: as before

"""The autoscaler inside the AppMaster's round, in fake time on the fake runtime: the
count follows the proxies' own figures, every change is saved before it is acted on and
recorded as an event with its reason, scale-out fills workers first, scale-in drains."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from ha_serving._instructions import DeployBody
from ha_serving._spec import Revision
from ha_serving.appmaster import JobState, Phase
from ha_serving.keeper._releases import converged as keeper_converged
from tests.unit.fixtures.control import Harness, run, spec
from tests.unit.jobstates import job_state

AUTO = {"min_instances": 1, "max_instances": 8, "target_inflight": 4}


def load(h: Harness, per_instance: dict[str, int]) -> None:
    """The proxies report these in-flight calls, split between them."""
    proxies = h.proxies()
    for k, p in enumerate(proxies):
        p.load = {
            i: n // len(proxies) + (n % len(proxies) if k == 0 else 0)
            for i, n in per_instance.items()
        }


async def until(h: Harness, done: Callable[[JobState], bool], most: int) -> None:
    """Rounds, a second apart, until ``done(state)``; fails after ``most``."""
    for _ in range(most):
        await h.core.round()
        h.clock.advance(1.0)
        if h.core.state is not None and done(h.core.state):
            return
    raise AssertionError(f"not within {most} rounds: {h.core.describe()['autoscale']}")


async def rounds(h: Harness, n: int) -> None:
    for _ in range(n):
        await h.core.round()
        h.clock.advance(1.0)


async def deployed(h: Harness) -> None:
    """2 instances (op-1) with autoscaling (``AUTO``: 1..8, 4 calls in flight each),
    converged."""
    await h.deploy(spec(instances=2, autoscaling=AUTO), "echo_v1", "op-1")
    await h.converge()


async def scaled_out_to_6(h: Harness) -> None:
    """``deployed``, then 24 calls in flight: the count goes to 6 (stable mode)."""
    await deployed(h)
    load(h, {"echo-0": 12, "echo-1": 12})
    await until(h, lambda s: s.autoscaled == 6, 60)


def events(h: Harness) -> list[dict[str, Any]]:
    return [
        e.detail or {}
        for e in h.store.list_events(service="echo", limit=1000)
        if e.kind == "autoscale"
    ]


def workers(h: Harness) -> list[str]:
    return sorted(n for n in h.runtime.actors if "-w" in n)


def test_a_burst_scales_out_from_the_proxies_figures_with_the_reason_recorded(
    h: Harness,
) -> None:
    """2 instances, then 80 calls in flight (target 4 each): at the second reading the
    AppMaster panics and asks for the maximum, 8; each change is saved before it is
    acted on and recorded as an event with its reason."""

    async def scenario() -> None:
        await deployed(h)
        assert h.core.state is not None
        assert h.core.state.autoscaled is None
        load(h, {"echo-0": 40, "echo-1": 40})
        await rounds(h, 2)
        state = h.core.state
        assert state.autoscaled == 8
        assert state.autoscale is not None
        assert state.autoscale.mode == "panic"
        # each count was saved before any instance was created for it
        first = next(s for s in h.saved if s.autoscaled is not None)
        assert len(first.instances) == 2
        await h.converge()
        assert len(await h.call_all()) == 8
        assert workers(h) == ["echo-w0", "echo-w1", "echo-w2", "echo-w3"]
        decisions = events(h)
        assert [(d["current"], d["desired"], d["mode"]) for d in decisions] == [(2, 8, "panic")]
        assert "panic: in-flight peak 80.0" in decisions[-1]["reason"]
        assert h.core.describe()["autoscale"]["instances"] == 8

    run(scenario())


def test_a_steady_load_is_followed_by_the_stable_window(h: Harness) -> None:
    """24 calls in flight on 2 instances (target 4), a burst too small to panic once
    the first instances start: stable mode raises the count step by step to 6."""

    async def scenario() -> None:
        await scaled_out_to_6(h)
        await rounds(h, 30)
        await h.converge()
        assert h.core.state is not None
        assert h.core.state.autoscaled == 6
        assert len(await h.call_all()) == 6
        assert all(d["mode"] == "stable" for d in events(h))

    run(scenario())


def test_scale_out_fills_a_workers_free_slot_before_starting_a_worker(h: Harness) -> None:
    """3 instances on 2 workers of 2 slots: a 4th goes to echo-w1's free slot."""

    async def scenario() -> None:
        await h.deploy(spec(instances=3, autoscaling=AUTO), "echo_v1", "op-1")
        await h.converge()
        assert workers(h) == ["echo-w0", "echo-w1"]
        created = list(h.runtime.created)
        load(h, {"echo-0": 5, "echo-1": 5, "echo-2": 5})  # 15 / 4 -> 4 instances
        await until(h, lambda s: s.autoscaled == 4, 60)
        await h.converge()
        assert h.core.state is not None
        assert h.core.state.instances["echo-3"].worker == "echo-w1"
        assert h.runtime.created == created  # no new actor of any kind
        assert len(await h.call_all()) == 4

    run(scenario())


def test_load_gone_scales_in_slowly_and_drains_before_removing(h: Harness) -> None:
    """After a load of 6 instances' worth, none: nothing leaves within the scale-down
    delay (300 s); then the count follows the highest count asked for over the last
    300 s down to min 1, at most halving per decision, each instance drained (out of
    every proxy's table) before it is removed, and empty workers stop."""

    async def scenario() -> None:
        await scaled_out_to_6(h)
        await h.converge()
        load(h, {})
        await rounds(h, 250)
        assert h.core.state is not None
        assert h.core.state.autoscaled == 6  # within the 300 s scale-down delay
        await rounds(h, 200)
        await h.converge()
        assert h.core.state.autoscaled == 1
        assert len(await h.call_all()) == 1
        assert workers(h) == ["echo-w0"]
        downs = [(e["current"], e["desired"]) for e in events(h) if e["desired"] < e["current"]]
        assert downs[0][0] == 6
        assert downs[-1][1] == 1
        assert all(new >= (old + 1) // 2 for old, new in downs)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(downs))
        _check_drained_before_removed(h.saved)
        for proxy in h.proxies():
            assert [e.instance_id for e in proxy.table.entries] == ["echo-0"]

    run(scenario())


def _check_drained_before_removed(saved: list[JobState]) -> None:
    removed = 0
    for before, after in itertools.pairwise(saved):
        for gone in set(before.instances) - set(after.instances):
            inst = before.instances[gone]
            assert inst.phase == Phase.REMOVING, inst
            drained = [s.instances[gone] for s in saved if gone in s.instances]
            assert any(i.phase == Phase.DRAINING and i.purpose == "remove" for i in drained)
            removed += 1
    assert removed == 5


def test_an_in_place_update_of_the_section_changes_no_instance(h: Harness) -> None:
    """A new scale-down delay changes the policy only: no instance is touched and the
    autoscaler's count stays; a lower max clamps the count at once."""

    async def scenario() -> None:
        await scaled_out_to_6(h)
        await h.converge()
        before = dict(h.core.state.instances) if h.core.state else {}
        marks = len(h.saved)
        await h.deploy(
            spec(instances=2, autoscaling={**AUTO, "scale_down_delay_s": 600}),
            "echo_v1",
            "op-2",
            kind="config",
        )
        await h.converge()
        assert h.core.state is not None
        assert h.core.state.spec.autoscaling is not None
        assert h.core.state.spec.autoscaling.scale_down_delay_s == 600
        for s in h.saved[marks:]:
            assert s.instances == before
        assert h.core.state.autoscaled == 6
        await h.deploy(
            spec(instances=2, autoscaling={**AUTO, "max_instances": 4}),
            "echo_v1",
            "op-3",
            kind="config",
        )
        await h.converge()
        assert len(await h.call_all()) == 4

    run(scenario())


def test_an_operators_scale_overrides_the_autoscalers_count(h: Harness) -> None:
    """A scale instruction (a new ``instances``) resets the autoscaler's count to it."""

    async def scenario() -> None:
        await scaled_out_to_6(h)
        await h.converge()
        assert h.core.state is not None
        assert h.core.state.autoscaled == 6
        await h.deploy(spec(instances=3, autoscaling=AUTO), "echo_v1", "op-2", kind="scale")
        assert h.core.state.autoscaled is None
        assert h.core.state.wanted() == 3  # the autoscaler goes on from there

    run(scenario())


def test_autoscaling_switched_off_and_on_again_starts_from_instances(h: Harness) -> None:
    """Switched off, the autoscaler's count is forgotten and its memory cleared: switched
    on again with the same ``instances`` and no load, the count is ``instances``, not the
    6 decided earlier (nor the 6 its scale-in delay remembered)."""

    async def scenario() -> None:
        await scaled_out_to_6(h)
        await h.converge()
        load(h, {})
        await h.deploy(spec(instances=2), "echo_v1", "op-2", kind="config")
        assert h.core.state is not None
        assert h.core.state.autoscaled is None
        assert h.core.state.autoscale_demand is None  # the Keeper reads no stale demand
        await h.converge()
        assert len(h.core.state.serving()) == 2
        await h.deploy(spec(instances=2, autoscaling=AUTO), "echo_v1", "op-3", kind="config")
        assert h.core.state.wanted() == 2
        await rounds(h, 10)
        assert h.core.state.wanted() < 6
        assert [(e["current"], e["desired"]) for e in events(h)][-1] != (2, 6)

    run(scenario())


def test_a_policys_own_reading_period_and_scale_up_delay(h: Harness) -> None:
    """A Ray-Serve-like policy (figures every 10 s, a scale-out only after 30 s of asking
    for it): the AppMaster reads its proxies once per 10 s however often its round runs,
    and scales out on the 4th reading that asks for more (3 held, the 4th carried out)."""
    ray_like = {
        **AUTO,
        "reading_period_s": 10,
        "scale_up_delay_s": 30,
        "stable_window_s": 30,
        "panic_threshold": 100,
    }

    async def scenario() -> None:
        await h.deploy(spec(instances=2, autoscaling=ray_like), "echo_v1", "op-1")
        await h.converge()
        load(h, {"echo-0": 20, "echo-1": 20})  # 40 in flight, target 4: 10, at most 8
        readings: list[tuple[float, int | None]] = []
        for _ in range(50):
            await h.core.round()
            last, state = h.core.autoscaler.last, h.core.state
            assert state is not None
            if last is not None and (not readings or readings[-1][0] != last.at):
                readings.append((last.at, state.autoscaled))
            h.clock.advance(1.0)
        assert all(b[0] - a[0] == 10 for a, b in itertools.pairwise(readings)), readings
        assert [n for _, n in readings] == [None, None, None, 8, 8], readings
        assert [(d["current"], d["desired"]) for d in events(h)] == [(2, 8)]
        assert "more asked for 30 s" in events(h)[0]["reason"]

    run(scenario())


def test_no_figures_no_decision(h: Harness) -> None:
    """Proxies that do not answer give no reading: the count stays, nothing is recorded."""

    async def scenario() -> None:
        await deployed(h)
        load(h, {"echo-0": 12, "echo-1": 12})
        h.runtime.down.update(n for n in h.runtime.actors if "-p" in n)
        h.clock.advance(5.0)
        assert h.core.state is not None
        assert await h.core.autoscaler.tick(h.core.state, h.core._mutate) is None
        assert h.core.state.autoscaled is None
        assert events(h) == []

    run(scenario())


def test_answered_calls_become_the_rate_history_the_forecast_reads(h: Harness) -> None:
    """With a forecast configured, each finished step's rate (calls answered per second,
    from the proxies' counters) is recorded in the store for the service and cluster."""
    predictive = {"step_s": 10, "season_s": 60, "min_seasons": 2}

    async def scenario() -> None:
        await h.deploy(
            spec(instances=2, autoscaling={**AUTO, "predictive": predictive}), "echo_v1", "op-1"
        )
        await h.converge()
        for _ in range(45):
            for p in h.proxies():  # 3 calls a second through each proxy: 6/s
                for _ in range(3):
                    p.metrics.observe("echo", "echo", "OK", 0.01, method_exists=True)
            await h.core.round()
            h.clock.advance(1.0)
        samples = h.store.list_rate_samples("echo", "a")
        assert len(samples) >= 3
        assert [r for _, r in samples[1:-1]] == [pytest.approx(6.0)] * len(samples[1:-1])
        assert all(at % 10 == 0 for at, _ in samples)

    run(scenario())


def test_the_keeper_judges_an_autoscaled_job_by_the_autoscalers_count() -> None:
    """A deploy whose AppMaster has autoscaled to 5 is converged with 5 instances, not
    the spec's 2 (one rule: ``ServiceSpec.scaled``)."""
    body_spec = spec(instances=2, autoscaling=AUTO).model_dump(mode="json")
    rev = Revision(version="v1", package="p", import_path="echo:Echo")
    state = job_state(spec(instances=2, autoscaling=AUTO), rev, autoscaled=5)
    assert len(state.instances) == 5
    body = DeployBody.model_validate({"spec": body_spec, "package": "p"})
    assert keeper_converged(state, body)
    assert not keeper_converged(state.model_copy(update={"autoscaled": 6}), body)
    assert not keeper_converged(state.model_copy(update={"autoscaled": None}), body)

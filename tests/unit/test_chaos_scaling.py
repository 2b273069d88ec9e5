"""The autoscaler drills' checker (``chaos.scaling.check``): each way a scaling decision
can be lost or doubled is caught (planted in the outcome), and an AppMaster killed at any
round of a scale-out (fake time, fake runtime) hands a successor a decision it carries
out exactly once."""

from __future__ import annotations

import pytest

from chaos.catalogue import DRILLS_DIR, load_drill
from chaos.scaling import Outcome, check
from tests.unit.fixtures.control import Harness, run
from tests.unit.test_appmaster_autoscale import deployed, events, load, workers

GOOD = Outcome(decisions=((1, 3),), before=1, counted=3, serving=3, workers=3)


def test_a_scale_out_carried_out_once_passes() -> None:
    assert check(GOOD) == []
    two_steps = Outcome(decisions=((1, 2), (2, 3)), before=1, counted=3, serving=3, workers=3)
    assert check(two_steps) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ({"decisions": ()}, "no scaling decision"),
        ({"decisions": ((1, 3), (1, 3))}, "doubled: decision 1->3 recorded twice"),
        (
            {"decisions": ((1, 2), (3, 4)), "counted": 4, "serving": 4, "workers": 4},
            "lost: 1->2 then 3->4",
        ),
        ({"before": 2}, "lost: the first decision starts from 1"),
        ({"counted": 1}, "lost: the last decision is 3, the state counts 1"),
        ({"serving": 2}, "lost: 2 instances serve for 3"),
        ({"workers": 6}, "doubled: 6 worker actors live for 3"),
        ({"ran_twice": ("n-1-7",)}, "1 calls ran twice, e.g. n-1-7"),
    ],
)
def test_each_planted_loss_or_double_is_caught(planted: dict[str, object], expected: str) -> None:
    bad = Outcome(**{**GOOD.__dict__, **planted})  # type: ignore[arg-type]
    problems = check(bad)
    assert any(expected in p for p in problems), problems


def test_workers_are_counted_by_instances_per_worker() -> None:
    packed = Outcome(decisions=((2, 5),), before=2, counted=5, serving=5, workers=3, per_worker=2)
    assert check(packed) == []
    assert check(Outcome(**{**packed.__dict__, "workers": 4}))  # one too many


class Killed(Exception):
    """The AppMaster's process dies at this write: the write is not made, and the core
    is not used again (whether it catches this or not)."""


@pytest.mark.parametrize("killed_at_save", range(5))  # the 6th write: all 8 serve
def test_an_appmaster_killed_mid_scale_out_leaves_the_decision_to_its_successor(
    h: Harness, killed_at_save: int
) -> None:
    """2 instances, a burst asks for 8; the AppMaster dies at its ``killed_at_save``-th
    state write after the decision (instances and workers half started), and a new one
    loads the state: 8 serve, on 4 workers (2 per worker), one decision recorded, the
    drills' checker passes."""

    async def scenario() -> None:
        await deployed(h)
        load(h, {"echo-0": 40, "echo-1": 40})
        save = h.store.save_appmaster_state
        writes: list[int] = []

        def dying_save(*args: object, **kw: object) -> int:
            if events(h):  # the decision is in: count the writes after it
                writes.append(1)
                if len(writes) > killed_at_save:
                    raise Killed
            return save(*args, **kw)  # type: ignore[arg-type]

        h.store.save_appmaster_state = dying_save  # type: ignore[method-assign]
        for _ in range(30):
            try:
                await h.core.round()
            except Killed:
                break
            if len(writes) > killed_at_save:
                break  # the core caught it: it is dead all the same
            h.clock.advance(1.0)
        assert len(writes) > killed_at_save, "the scale-out needed fewer writes"
        h.store.save_appmaster_state = save  # type: ignore[method-assign]
        assert events(h)
        assert len(h.saved[-1].serving()) < 8  # mid-scale: not all serve yet
        h.core = h.new_core()  # the standby takes over from the DB
        await h.converge()
        state = h.core.state
        assert state is not None
        outcome = Outcome(
            decisions=tuple((e["current"], e["desired"]) for e in events(h)),
            before=2,
            counted=state.spec.scaled(state.autoscaled),
            serving=len(state.serving()),
            workers=len(workers(h)),
            per_worker=state.spec.instances_per_worker,
        )
        assert check(outcome) == []
        assert outcome.decisions == ((2, 8),)

    run(scenario())


@pytest.mark.parametrize("name", ["autoscale-kill-appmaster", "autoscale-kill-keeper-leader"])
def test_the_drills_kill_mid_scale_and_check_after(name: str) -> None:
    drill = load_drill(DRILLS_DIR / f"{name}.json")
    steps = [a["name"] for a in drill.experiment["method"]]
    funcs = [a["provider"]["func"] for a in drill.experiment["method"]]
    assert funcs[:2] == ["start_scaling_load", "wait_scale_decision"]
    assert funcs[2] in {"kill_actor", "kill_keeper"}
    assert "scaling_settled" in funcs[3:]
    assert funcs[-1] == "stop_scaling_load"
    assert drill.thresholds.recovery_from == steps[2]
    assert not drill.meta.random
    assert not drill.meta.smoke

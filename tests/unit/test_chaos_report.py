"""The chaos report on synthetic data: verdicts from a Chaos Toolkit journal, the calls and
the violations; the summary table; recovery timed from the journal; history.jsonl round
trip; the timeline; and the control client's schedule and Jepsen-style recording."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from chaos import history
from chaos.catalogue import Thresholds
from chaos.checker import LOST, RAN_TWICE, Violation
from chaos.control import ControlLoad, plan_op, spec_for
from chaos.history import CallRecord, ControlEvent, FaultWindow
from chaos.observe import operation_of, seq_of
from chaos.report import DrillResult, judge, recovery_s, row, summary_md, write
from ha_serving.keeper import KeeperError, KeeperRefused

T0 = 1_800_000_000.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def activity(name: str, start: float, end: float, status: str = "succeeded") -> dict[str, Any]:
    return {"activity": {"name": name}, "start": iso(start), "end": iso(end), "status": status}


def steady(met: bool = True, failing: str = "") -> dict[str, Any]:
    probes = [{"activity": {"name": "stack-is-whole"}, "tolerance_met": True}]
    if failing:
        probes.append({"activity": {"name": failing}, "tolerance_met": False})
    return {"steady_state_met": met, "probes": probes}


def journal(**changes: Any) -> dict[str, Any]:
    j: dict[str, Any] = {
        "status": "completed",
        "deviated": False,
        "steady_states": {"before": steady(), "after": steady(), "during": []},
        "run": [
            activity("kill-keeper-leader", T0 + 10, T0 + 10.1),
            activity("new-leader-elected", T0 + 10.1, T0 + 13.5),
            activity("restart-dead-keepers", T0 + 18.5, T0 + 19),
        ],
        "rollbacks": [activity("heal", T0 + 25, T0 + 26)],
    }
    j.update(changes)
    return j


LEADER = Thresholds(
    max_recovery_s=5, recovery_from="kill-keeper-leader", recovery_until="new-leader-elected"
)


def calls(n: int = 1000, failed_at: tuple[int, ...] = ()) -> list[CallRecord]:
    return [
        CallRecord(
            "kill-keeper-leader",
            T0 + 5 + i * 0.02,
            12.0 + (i % 10),
            "UNAVAILABLE" if i in failed_at else "OK",
            "" if i in failed_at else "ab"[i % 2],
            f"id-{i}",
        )
        for i in range(n)
    ]


def result(**changes: Any) -> DrillResult:
    args: dict[str, Any] = {
        "control": False,
        "thresholds": LEADER,
        "journal": journal(),
        "calls": calls(),
        "history": [],
        "violations": [],
        "span": (T0, T0 + 30),
    }
    args.update(changes)
    return judge("kill-keeper-leader", "SIGKILL the Keeper leader", **args)


def test_a_clean_drill_passes_with_its_figures() -> None:
    r = result(calls=calls(failed_at=(300,)))
    assert r.passed, r.reasons
    assert r.recovery_s == pytest.approx(3.5)
    assert r.window == FaultWindow("kill-keeper-leader", T0 + 10, T0 + 19)
    assert (r.whole.calls, r.whole.failures) == (1000, 1)
    assert r.during.calls == 451  # started in the method's span, both ends included
    assert r.whole.availability == 0.999


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {
                "journal": journal(
                    deviated=True,
                    steady_states={"before": steady(), "after": steady(False, "one-keeper-leader")},
                )
            },
            "deviated",
        ),
        (
            {
                "journal": journal(
                    status="failed",
                    steady_states={"before": steady(False, "stack-is-whole"), "after": None},
                    run=[],
                )
            },
            "not met before",
        ),
        (
            {
                "journal": journal(
                    run=[
                        activity("kill-keeper-leader", T0 + 10, T0 + 10.1),
                        activity("new-leader-elected", T0 + 10.1, T0 + 40, "failed"),
                    ]
                )
            },
            "not recovered",
        ),
        (
            {"journal": journal(rollbacks=[activity("heal", T0, T0 + 1, "failed")])},
            "failed rollbacks: heal",
        ),
        ({"calls": calls(failed_at=(1, 2))}, "availability 0.99800 < 0.999"),
        ({"calls": []}, "no call"),
        (
            {"violations": [Violation(LOST, "op-1", "acknowledged, but not in the store")]},
            "violations: lost 1",
        ),
        ({"thresholds": LEADER.model_copy(update={"max_recovery_s": 1})}, "recovery 3.50s > 1"),
    ],
)
def test_a_drill_fails_for_each_reason(changes: dict[str, Any], reason: str) -> None:
    r = result(**changes)
    assert not r.passed
    assert any(reason in text for text in r.reasons), r.reasons


def test_recovery_clock_can_start_at_the_end_of_an_activity() -> None:
    j = journal(run=[activity("restart-db", T0, T0 + 4), activity("resumed", T0 + 4, T0 + 6)])
    t = Thresholds(recovery_from="restart-db", recovery_until="resumed")
    assert recovery_s(j, t) == pytest.approx(6)
    end = t.model_copy(update={"recovery_from_edge": "end"})
    assert recovery_s(j, end) == pytest.approx(2)
    assert recovery_s(j, Thresholds()) is None


def test_summary_has_one_row_per_drill_with_the_issue_columns() -> None:
    control = judge(
        "control",
        "none (control run)",
        control=True,
        thresholds=Thresholds(),
        journal=journal(run=[activity("hold-without-fault", T0 + 5, T0 + 25)]),
        calls=calls(),
        history=[],
        violations=[],
        span=(T0, T0 + 30),
    )
    bad = result(
        calls=calls(failed_at=(400, 401, 402)),
        violations=[Violation(RAN_TWICE, "id-7", "ran 2 times (OK)")],
    )
    text = summary_md("20261130T000000Z", [control, bad], {"stack": "2 clusters"})
    assert text.startswith("# Chaos run 20261130T000000Z: FAILED")
    header = next(line for line in text.splitlines() if line.startswith("| drill"))
    for column in (
        "fault",
        "calls",
        "failures by code",
        "availability",
        "longest failure streak",
        "p99 during fault",
        "recovery",
        "acked ops lost",
        "verdict",
    ):
        assert column in header
    assert row(bad).split(" | ")[3:6] == ["UNAVAILABLE 3", "0.99700", "3 calls / 0.05 s"]
    assert "3.50 s (≤ 5)" in row(bad)
    assert row(bad).endswith("| 0 | 1 | **FAIL** |")
    assert "Noise floor (control run, no fault)" in text
    assert "ran-twice `id-7`" in text


def test_history_round_trip_and_report_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r = result(calls=calls(failed_at=(500,)))
    ops = [ControlEvent("kill-keeper-leader", "invoke", T0, "c-1", "config", 1, 2, "k1")]
    write(tmp_path, "run", [r], calls(failed_at=(500,)), ops, {"stack": "test"})
    lines = list(history.read(tmp_path / "history.jsonl"))
    assert len(lines) == 1000 + 1 + 1
    assert lines[-1] == r.window
    assert ops[0] in lines
    assert (tmp_path / "summary.md").read_text().startswith("# Chaos run run: PASSED")
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ledger_counts_every_worker_file(tmp_path: Path) -> None:
    (tmp_path / "calls-1.log").write_text("a\nb\n")
    (tmp_path / "calls-2.log").write_text("b\n")
    (tmp_path / "other.txt").write_text("a\n")
    assert history.read_ledger(tmp_path) == {"a": 1, "b": 2}


# --- the control client ----------------------------------------------------------------


def test_op_schedule_config_then_scale_then_an_invalid_one() -> None:
    schedule = []
    seq, instances = 0, 2
    for n in range(1, 11):
        op = plan_op(
            n,
            prefix="c1",
            seq=seq,
            instances=instances,
            counts=(2, 3),
            scale_every=4,
            invalid_every=10,
        )
        schedule.append((op.kind, op.instances, op.valid))
        seq = op.seq
        instances = op.instances if op.valid else instances
    assert seq == 10
    assert schedule[3] == ("scale", 3, True)
    assert schedule[7] == ("scale", 2, True)
    assert schedule[9] == ("config", -1, False)
    assert {k for k, _, _ in schedule[:3]} == {"config"}
    op = plan_op(1, prefix="c1", seq=4, instances=2, counts=(2, 3), scale_every=4, invalid_every=0)
    assert spec_for({"name": "s", "config": {"ledger_dir": "/x"}}, op) == {
        "name": "s",
        "config": {"ledger_dir": "/x", "seq": 5},
        "instances": 2,
    }


def test_control_client_records_ok_fail_and_info_jepsen_style() -> None:
    answers: list[Exception | None] = [
        None,
        KeeperRefused("INVALID_ARGUMENT", "instances must be >= 0"),
        KeeperError("DEADLINE_EXCEEDED", "no answer"),
        TimeoutError("socket"),
    ]
    tried: list[list[str]] = []

    def deploy(addresses: Any, spec_json: str, kind: str, op_id: str) -> str:
        tried.append(list(addresses))
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return op_id

    clock = iter(range(100))
    client = ControlLoad(
        keepers=["k1", "k2", "k3"],
        base_spec={"name": "s", "config": {}},
        deploy=deploy,
        drill="d",
        prefix="c1",
        seq=0,
        instances=2,
        clock=lambda: float(next(clock)),
    )
    for _ in range(4):
        client.step()
    events = client.events()
    assert [e.type for e in events] == [
        "invoke", "ok", "invoke", "fail", "invoke", "info", "invoke", "info",
    ]  # fmt: skip
    assert [e.op_id for e in events[::2]] == ["c1-1", "c1-2", "c1-3", "c1-4"]
    assert "DEADLINE_EXCEEDED" in events[5].error
    assert [t[0] for t in tried] == ["k1", "k2", "k3", "k1"]  # each op starts elsewhere


def test_instruction_ids_map_to_their_operation() -> None:
    assert operation_of("c1-5@a") == "c1-5"
    assert operation_of("c1-5#drain@a") is None
    assert seq_of({"config": {"seq": 3}}) == 3
    assert seq_of({"config": {}}) is None
    assert seq_of(None) is None

"""The chaos checkers catch the bugs they exist for, and pass clean histories.

Control plane: histories of a correct system (a Hypothesis model) have no violation;
each planted bug (an acknowledged op lost, an op applied twice, a refused op applied, a
stale config served, a deposed leader's op applied with fencing off) is reported by
name. The fencing case runs the real AppMaster on a real SQLite store, read back by the
runner's own observation code. Data plane: a call the real SDK retried after it had
already run (the planted bug: every failure treated as retry-safe) shows in the drill
service's real ledger as a call that ran twice.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos import checker
from chaos.checker import (
    APPLIED_TWICE,
    FAILED_OP_APPLIED,
    LOST,
    NOT_CARRIED_OUT,
    NOT_NEWEST,
    OK_NEVER_RAN,
    RAN_TWICE,
    RECORD_STALE,
    REORDERED,
    STALE_CONFIG,
    STALE_EPOCH,
    UNSETTLED,
    Applied,
    ClusterView,
    FinalState,
    StoredOp,
    check_control,
    check_executions,
    data_plane,
    longest_streak,
)
from chaos.history import CallRecord, ControlEvent, read_ledger
from chaos.observe import final_state
from ha_serving._errors import BackendUnavailable, CallError
from ha_serving._settings import ClientSettings
from ha_serving._wire import RouteEntry
from ha_serving.appmaster import AppMasterCore
from ha_serving.backend import make_package
from ha_serving.client import Client
from ha_serving.keeper._control_api import deploy
from ha_serving.keeper._plan import Plan
from ha_serving.keeper._releases import cluster_body
from ha_serving.store import ClusterRecord, Store
from ha_serving.util.clock import FakeClock
from tests.store_contract import finish_operation
from tests.unit.fixtures.control import fake_core, grant_epochs
from tests.unit.fixtures.dataplane import Stack, running_stack

ROOT = Path(__file__).resolve().parents[2]
DRILL_CODE = ROOT / "examples" / "drill" / "code"
CLUSTERS = ("a", "b")


def kinds(violations: list[checker.Violation]) -> set[str]:
    return {v.kind for v in violations}


# --- a correct control plane, as a model --------------------------------------------


def ev(op_id: str, type_: Any, t: float, seq: int) -> ControlEvent:
    return ControlEvent("d", type_, op_id, t, "config", seq, 2)


@st.composite
def clean_runs(draw: st.DrawFn) -> tuple[list[ControlEvent], FinalState]:
    """A history and final state that a correct system could produce: ops one at a
    time; ``ok`` ones durable; ``fail`` ones nowhere; ``info`` ones maybe stored, maybe
    applied; applied ops carried out on every cluster in store order with epochs that
    never go down; the last applied op served everywhere and recorded as the service."""
    n = draw(st.integers(min_value=1, max_value=12))
    outcomes = draw(
        st.lists(
            st.sampled_from(["ok", "ok-superseded", "fail", "info-lost", "info-stored", "info"]),
            min_size=n,
            max_size=n,
        )
    )
    history: list[ControlEvent] = []
    stored: list[tuple[str, int, bool]] = []  # op, seq, applied
    t = 0.0
    for i, outcome in enumerate(outcomes, 1):
        op_id = f"op-{i}"
        history.append(ev(op_id, "invoke", t, i))
        t += 1
        history.append(ev(op_id, outcome.split("-")[0], t, i))
        t += 1
        if outcome in ("ok", "info"):
            stored.append((op_id, i, True))
        elif outcome in ("ok-superseded", "info-stored"):
            stored.append((op_id, i, False))
    if stored:  # the newest op is carried out once the system settles
        stored[-1] = (stored[-1][0], stored[-1][1], True)
    ops = tuple(
        StoredOp(op, "succeeded" if applied else "superseded", seq, CLUSTERS)
        for op, seq, applied in stored
    )
    applies = []
    epoch, event = 1, 0
    for op, _, applied in stored:
        epoch += draw(st.integers(min_value=0, max_value=1))
        for c in CLUSTERS:
            if applied:
                event += 1
                applies.append(Applied(event, c, op, epoch))
    last = next((s for s in reversed(stored) if s[2]), None)
    served = (last[1],) * 3 if last else (None,)
    views = tuple(
        ClusterView(c, tuple(op for op, _, applied in stored if applied), served) for c in CLUSTERS
    )
    final = FinalState(ops, tuple(applies), views, last[1] if last else None)
    return history, final


@given(clean_runs())
def test_a_correct_system_has_no_violation(run: tuple[list[ControlEvent], FinalState]) -> None:
    history, final = run
    assert check_control(history, final) == []


@given(clean_runs(), st.data())
def test_an_acknowledged_op_missing_from_the_store_is_lost(
    run: tuple[list[ControlEvent], FinalState], data: st.DataObject
) -> None:
    history, final = run
    acked = [e.op_id for e in history if e.type == "ok"]
    if not acked or not final.ops:
        return
    victim = data.draw(st.sampled_from(acked))
    final = replace(final, ops=tuple(o for o in final.ops if o.op_id != victim))
    assert LOST in kinds(check_control(history, final))


@given(clean_runs(), st.data())
def test_an_op_applied_twice_is_reported(
    run: tuple[list[ControlEvent], FinalState], data: st.DataObject
) -> None:
    history, final = run
    if not final.applies:
        return
    again = data.draw(st.sampled_from(final.applies))
    extra = replace(again, event_id=again.event_id + 1000)
    final = replace(final, applies=(*final.applies, extra))
    assert APPLIED_TWICE in kinds(check_control(history, final))


@given(clean_runs())
def test_a_refused_op_that_was_stored_is_reported(
    run: tuple[list[ControlEvent], FinalState],
) -> None:
    history, final = run
    history = [*history, ev("op-x", "invoke", 100, 99), ev("op-x", "fail", 101, 99)]
    final = replace(final, ops=(StoredOp("op-x", "superseded", 99, CLUSTERS), *final.ops))
    assert FAILED_OP_APPLIED in kinds(check_control(history, final))


@given(clean_runs())
def test_a_cluster_serving_another_config_is_reported(
    run: tuple[list[ControlEvent], FinalState],
) -> None:
    history, final = run
    if not final.ops:
        return
    views = (replace(final.clusters[0], served=(-1,)), *final.clusters[1:])
    assert STALE_CONFIG in kinds(check_control(history, replace(final, clusters=views)))


def clean_two_ops() -> tuple[list[ControlEvent], FinalState]:
    history = [
        ev("op-1", "invoke", 0, 1),
        ev("op-1", "ok", 1, 1),
        ev("op-2", "invoke", 2, 2),
        ev("op-2", "ok", 3, 2),
    ]
    final = FinalState(
        ops=(
            StoredOp("op-1", "superseded", 1, CLUSTERS),
            StoredOp("op-2", "succeeded", 2, CLUSTERS),
        ),
        applies=(
            Applied(1, "a", "op-1", 1),
            Applied(2, "a", "op-2", 2),
            Applied(3, "b", "op-2", 2),
        ),
        clusters=(
            ClusterView("a", ("op-1", "op-2"), (2, 2)),
            ClusterView("b", ("op-2",), (2, 2)),
        ),
        record_seq=2,
    )
    return history, final


def test_clean_two_op_history_passes() -> None:
    assert check_control(*clean_two_ops()) == []


def test_a_deposed_leader_applying_its_old_op_is_caught() -> None:
    """Fencing off: the paused leader (epoch 1) delivers op-1 after op-2 (epoch 2)."""
    history, final = clean_two_ops()
    stale = replace(
        final,
        applies=(*final.applies, Applied(4, "b", "op-1", 1)),
        clusters=(final.clusters[0], ClusterView("b", ("op-2", "op-1"), (1, 1))),
    )
    found = kinds(check_control(history, stale))
    assert {STALE_EPOCH, NOT_NEWEST} <= found


def test_unfinished_failed_and_unapplied_acknowledged_ops_were_not_carried_out() -> None:
    history, final = clean_two_ops()
    running = replace(final, ops=(final.ops[0], replace(final.ops[1], status="running")))
    assert {NOT_CARRIED_OUT, UNSETTLED} <= kinds(check_control(history, running))
    failed = replace(final, ops=(final.ops[0], replace(final.ops[1], status="failed")))
    assert NOT_CARRIED_OUT in kinds(check_control(history, failed))
    unapplied = replace(
        final,
        applies=final.applies[:2],
        clusters=(final.clusters[0], ClusterView("b", (), (2,))),
    )
    assert NOT_CARRIED_OUT in kinds(check_control(history, unapplied))


def test_a_later_op_stored_before_an_earlier_acknowledged_one_is_reordered() -> None:
    history, final = clean_two_ops()
    swapped = replace(final, ops=(final.ops[1], final.ops[0]))
    assert REORDERED in kinds(check_control(history, swapped))


def test_a_stale_service_record_is_reported() -> None:
    history, final = clean_two_ops()
    assert RECORD_STALE in kinds(check_control(history, replace(final, record_seq=1)))


def test_an_info_op_may_land_late_and_win() -> None:
    """A timed-out op written late (a paused Keeper) is legal, even after a newer one."""
    history = [
        ev("op-1", "invoke", 0, 1),
        ev("op-1", "info", 5, 1),
        ev("op-2", "invoke", 6, 2),
        ev("op-2", "ok", 7, 2),
    ]
    final = FinalState(
        ops=(
            StoredOp("op-2", "superseded", 2, ("a",)),
            StoredOp("op-1", "succeeded", 1, ("a",)),
        ),
        applies=(Applied(1, "a", "op-2", 2), Applied(2, "a", "op-1", 2)),
        clusters=(ClusterView("a", ("op-2", "op-1"), (1,)),),
        record_seq=1,
    )
    assert check_control(history, final) == []


def test_violations_of_earlier_drills_are_not_reported_again() -> None:
    history, final = clean_two_ops()
    old = replace(final, applies=(Applied(0, "a", "op-0", 5), *final.applies), since_event=0)
    assert STALE_EPOCH in kinds(check_control(history, old))
    assert check_control(history, replace(old, since_event=3)) == []


# --- the real AppMaster, fencing on and off -----------------------------------------


def _fenced_run(tmp_path: Path) -> tuple[list[ControlEvent], FinalState]:
    """Leader epoch 1 deploys op-0 and is about to send op-1; it pauses; leader epoch 2
    supersedes op-1 and carries op-2 out; the old leader resumes and delivers op-1."""
    store = Store.connect(f"sqlite:///{tmp_path / 'state.db'}")
    store.register_cluster(ClusterRecord("a", "127.0.0.1:1", None, "z"))
    grant_epochs(store, 2)  # two leaders' terms
    core = fake_core(store, service="drill", clock=FakeClock())
    package = make_package(DRILL_CODE).data

    def spec(seq: int) -> str:
        code = {"dir": "code", "import_path": "drill:Drill"}
        return json.dumps({"name": "drill", "version": "1", "code": code, "config": {"seq": seq}})

    def finish(op_id: str, status: str) -> None:
        finish_operation(store, op_id, status)

    def instruct(n: int, op_id: str, epoch: int) -> str:
        plan = Plan.from_record(store.get_operation(op_id).plan)
        body = cluster_body(plan, plan.clusters[0]).to_record()  # as the store keeps it
        return asyncio.run(core.take_instruction(n, body, op_id=f"{op_id}@a", epoch=epoch))

    history: list[ControlEvent] = []
    for i in range(3):
        history.append(ev(f"op-{i}", "invoke", 2 * i, i))
        deploy(store, spec(i), package, op_id=f"op-{i}", kind="config")
        history.append(ev(f"op-{i}", "ok", 2 * i + 1, i))
        if i == 0:
            assert instruct(1, "op-0", epoch=1) == "applied"
            finish("op-0", "succeeded")
    assert instruct(2, "op-2", epoch=2) == "applied"
    finish("op-1", "superseded")
    finish("op-2", "succeeded")
    instruct(3, "op-1", epoch=1)  # the deposed leader's late instruction
    assert core.state is not None
    served = core.state.desired.config["seq"]
    try:
        return history, final_state(store, "drill", ["a"], {"a": [served] * 3})
    finally:
        store.close()


def test_real_appmaster_fencing_leaves_a_clean_history(tmp_path: Path) -> None:
    history, final = _fenced_run(tmp_path)
    assert [a.op_id for a in final.applies] == ["op-0", "op-2"]
    assert check_control(history, final) == []


def test_real_appmaster_with_fencing_switched_off_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug: the AppMaster no longer refuses epochs below the highest seen."""

    async def no_fencing(self: AppMasterCore, op_id: str, epoch: int) -> bool:
        return self.state is not None and op_id in self.state.applied_ops

    monkeypatch.setattr(AppMasterCore, "_seen", no_fencing)
    history, final = _fenced_run(tmp_path)
    assert [a.op_id for a in final.applies] == ["op-0", "op-2", "op-1"]
    found = kinds(check_control(history, final))
    assert {STALE_EPOCH, NOT_NEWEST} <= found


# --- data plane ----------------------------------------------------------------------


def call(t: float, outcome: str = "OK", call_id: str = "", latency_ms: float = 10.0) -> CallRecord:
    return CallRecord("d", t, latency_ms, outcome, "a" if outcome == "OK" else "", call_id)


def test_availability_streak_and_last_failure_of_a_window() -> None:
    calls = [call(float(i)) for i in range(10)]
    calls[3] = call(3.0, "UNAVAILABLE")
    calls[4] = call(4.0, "UNAVAILABLE", latency_ms=500)
    calls[8] = call(8.0, "DEADLINE_EXCEEDED", latency_ms=2000)
    d = data_plane(calls, start=0.0)
    assert (d.calls, d.failures) == (10, 3)
    assert d.availability == 0.7
    assert d.by_code == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 2}
    assert d.longest_streak.calls == 2
    assert d.longest_streak.seconds == pytest.approx(1.5)
    assert d.last_failure_s == pytest.approx(10.0)
    assert data_plane([]).availability == 0.0


@given(st.lists(st.booleans(), max_size=60))
def test_longest_streak_is_the_longest_run_of_failures(oks: list[bool]) -> None:
    calls = [call(float(i), "OK" if ok else "UNAVAILABLE") for i, ok in enumerate(oks)]
    best = run = 0
    for ok in oks:
        run = 0 if ok else run + 1
        best = max(best, run)
    assert longest_streak(calls).calls == best
    assert data_plane(calls).failures == oks.count(False)


@pytest.mark.timeout(20)
def test_a_window_that_fails_throughout_is_judged_in_one_pass() -> None:
    """redis-kill-restart failed 49,398 of 61,601 calls in one run; the streak was
    recomputed over the whole run at every call, and judging it never ended."""
    calls = [call(i / 200, "UNAVAILABLE", latency_ms=2000) for i in range(60_000)]
    streak = longest_streak(calls)
    assert streak.calls == 60_000
    assert streak.seconds == pytest.approx(59_999 / 200 + 2.0)


def test_execution_ledger_checks() -> None:
    calls = [call(0, call_id="x"), call(1, "UNAVAILABLE", call_id="y"), call(2, call_id="z")]
    assert check_executions(calls, {"x": 1, "y": 1, "z": 1}) == []  # failed after it ran: ok
    assert kinds(check_executions(calls, {"x": 2, "z": 1})) == {RAN_TWICE}
    assert kinds(check_executions(calls, {"x": 1})) == {OK_NEVER_RAN}


def _serve_drill(stack: Stack, ledger: Path) -> None:
    host = stack.host("w1")
    config = {"seq": 1, "ledger_dir": str(ledger)}
    stack.run(host.add_instance("i1", make_package(DRILL_CODE), "drill:Drill", "1", config))
    stack.entries["i1"] = RouteEntry("i1", "w1", "1", 8)
    stack.publish()


def _dies_after_running(real: Any, died: set[bytes]) -> Any:
    """A HostCaller.call whose worker runs the call, then dies before replying (once per
    payload: the call's id)."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        payload = args[3]
        if payload not in died:
            died.add(payload)
            raise BackendUnavailable(args[0], "died after running", reached_user_code=True)
        return result

    return call


def _call_through_dying_workers(ledger: Path, call_id: str) -> CallRecord:
    """One call to the drill service through two proxies whose worker runs the call, then
    dies before its reply gets back (only the first time that call comes). Fresh proxies
    per call: a proxy ejects a worker that failed, which would hide the next call."""
    died: set[bytes] = set()
    with running_stack("drill") as one, running_stack("drill") as two:
        for stack in (one, two):
            _serve_drill(stack, ledger)
            stack.caller.call = _dies_after_running(stack.caller.call, died)  # type: ignore[method-assign]
        fast = ClientSettings(retry_backoff_s=0.0)
        with Client([one.address, two.address], settings=fast) as client:
            body = json.dumps({"id": call_id}).encode()
            try:
                reply = client.call_raw("drill", "call", body, timeout=5)
                outcome, cluster = "OK", reply.cluster
            except CallError as exc:
                outcome, cluster = exc.code, ""
    return CallRecord("d", 0.0, 1.0, outcome, cluster, call_id)


def _calls_through_dying_workers(ledger: Path) -> list[CallRecord]:
    return [_call_through_dying_workers(ledger, f"call-{i}") for i in range(5)]


def test_sdk_that_does_not_retry_a_call_that_ran_passes_the_ledger_check(tmp_path: Path) -> None:
    calls = _calls_through_dying_workers(tmp_path / "ledger")
    assert {c.outcome for c in calls} == {"UNAVAILABLE"}
    ran = read_ledger(tmp_path / "ledger")
    assert all(ran[c.call_id] == 1 for c in calls)
    assert check_executions(calls, ran) == []


def test_sdk_retrying_a_call_that_already_ran_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug: the SDK treats every failure as safe to retry."""
    monkeypatch.setattr("ha_serving.client._client._retry_safe", lambda *_a, **_k: True)
    calls = _calls_through_dying_workers(tmp_path / "ledger")
    assert {c.outcome for c in calls} == {"OK"}
    violations = check_executions(calls, read_ledger(tmp_path / "ledger"))
    assert kinds(violations) == {RAN_TWICE}
    assert len(violations) == 5


@settings(max_examples=30)
@given(st.lists(st.sampled_from(["OK", "UNAVAILABLE"]), max_size=30), st.data())
def test_ledger_of_a_correct_run_has_no_violation(outcomes: list[str], data: st.DataObject) -> None:
    calls = [call(float(i), o, call_id=f"c{i}") for i, o in enumerate(outcomes)]
    ran = {c.call_id: 1 for c in calls if c.ok}
    for c in calls:  # a failed call may or may not have run, once
        if not c.ok and data.draw(st.booleans()):
            ran[c.call_id] = 1
    assert check_executions(calls, ran) == []

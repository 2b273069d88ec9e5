"""The status machines of ``ha_serving._status`` and the AppMaster's instance and proxy
lifecycles (``ha_serving._jobstate``), all through ``check_move``: every move in a table
is allowed, every other move raises, and the stored values never change (the DB outlives
the code)."""

from __future__ import annotations

from enum import StrEnum

import hypothesis.strategies as st
import pytest
from hypothesis import given

from ha_serving._errors import IllegalTransition
from ha_serving._spec import Revision
from ha_serving._status import (
    ACTIVE,
    OPERATION_TRANSITIONS,
    RELEASE_MODES,
    ROLLOUT_TRANSITIONS,
    OperationStatus,
    ReleaseMode,
    RolloutKind,
    RolloutStatus,
    check_move,
)
from ha_serving.appmaster._state import (
    PROXY_TRANSITIONS,
    TRANSITIONS,
    Instance,
    Phase,
    ProxyPhase,
    Rollout,
)


def test_stored_values_are_the_strings_rows_and_json_already_hold() -> None:
    """Renaming a value would strand every row written before: they are pinned here."""
    assert [s.value for s in OperationStatus] == [
        "pending",
        "running",
        "succeeded",
        "failed",
        "aborted",
        "rolled_back",
        "superseded",
    ]
    assert [s.value for s in RolloutStatus] == [
        "running",
        "rolling_back",
        "succeeded",
        "failed",
        "rolled_back",
        "superseded",
    ]
    assert [m.value for m in ReleaseMode] == ["canary", "blue_green"] == list(RELEASE_MODES)
    assert {k.value for k in RolloutKind} == {
        "deploy",
        "config",
        "code",
        "scale",
        "canary",
        "blue_green",
        "promote",
        "abort",
    }


@pytest.mark.parametrize("table", [OPERATION_TRANSITIONS, ROLLOUT_TRANSITIONS])
def test_every_status_has_a_row_and_finished_ones_have_no_way_out(
    table: dict[StrEnum, frozenset[StrEnum]],
) -> None:
    statuses = set(type(next(iter(table))))
    assert set(table) == statuses
    finished = {s for s, out in table.items() if not out}
    assert finished, "a machine that never finishes"
    assert all(s.value not in {"pending", "running", "rolling_back"} for s in finished)


def test_active_is_exactly_the_operation_statuses_with_a_way_out() -> None:
    assert {s for s, out in OPERATION_TRANSITIONS.items() if out} == ACTIVE
    assert {"pending", "running"} <= ACTIVE  # plain strings from JSON match


def _pairs(enum: type[StrEnum]) -> st.SearchStrategy[tuple[StrEnum, StrEnum]]:
    return st.tuples(st.sampled_from(list(enum)), st.sampled_from(list(enum)))


@given(_pairs(OperationStatus))
def test_an_operation_moves_exactly_as_its_table_says(pair: tuple[StrEnum, StrEnum]) -> None:
    src, dst = pair
    _moves_exactly_as_the_table_says(OPERATION_TRANSITIONS, src, dst)


@given(_pairs(RolloutStatus))
def test_a_rollout_moves_exactly_as_its_table_says(pair: tuple[StrEnum, StrEnum]) -> None:
    src, dst = pair
    _moves_exactly_as_the_table_says(ROLLOUT_TRANSITIONS, src, dst)


def _moves_exactly_as_the_table_says(table: object, src: StrEnum, dst: StrEnum) -> None:
    assert isinstance(table, dict)
    if dst in table[src]:
        moved = check_move("thing", table, src, dst.value)  # a plain string is accepted
        assert moved is dst
    else:
        with pytest.raises(IllegalTransition, match=f"thing: illegal transition {src} -> {dst}"):
            check_move("thing", table, src, dst.value)


@given(st.sampled_from(list(OperationStatus)), st.text(max_size=12))
def test_a_status_that_is_none_is_no_move(src: OperationStatus, dst: str) -> None:
    if dst in {s.value for s in OperationStatus}:
        return
    with pytest.raises(IllegalTransition):
        check_move("op", OPERATION_TRANSITIONS, src, dst)


REV = Revision(version="1", package="p", import_path="m:C")


@given(_pairs(Phase))
def test_an_instance_moves_exactly_as_its_table_says(pair: tuple[StrEnum, StrEnum]) -> None:
    """The AppMaster's instance and proxy lifecycles use the same ``check_move``."""
    src, dst = pair
    _moves_exactly_as_the_table_says(TRANSITIONS, src, dst)
    inst = Instance(id="i1", worker="w", index=0, phase=src)
    assert isinstance(dst, Phase)
    if dst in TRANSITIONS[Phase(src)]:
        assert inst.to(dst, purpose="x").phase is dst
    else:
        with pytest.raises(IllegalTransition, match=f"instance i1: illegal transition {src} -> "):
            inst.to(dst)


@given(_pairs(ProxyPhase))
def test_a_proxy_moves_exactly_as_its_table_says(pair: tuple[StrEnum, StrEnum]) -> None:
    src, dst = pair
    _moves_exactly_as_the_table_says(PROXY_TRANSITIONS, src, dst)


@given(_pairs(RolloutStatus))
def test_a_rollout_record_refuses_an_illegal_move_and_keeps_its_status(
    pair: tuple[StrEnum, StrEnum],
) -> None:
    src, dst = pair
    rollout = Rollout(
        op_id="op-1", kind="code", from_rev=None, to_rev=REV, status=src, started_at=0.0
    )
    assert isinstance(dst, RolloutStatus)
    if dst in ROLLOUT_TRANSITIONS[RolloutStatus(src)]:
        moved = rollout.to(dst, finished_at=1.0)
        assert (moved.status, moved.finished_at, rollout.status) == (dst, 1.0, src)
    else:
        with pytest.raises(IllegalTransition, match="rollout op-1"):
            rollout.to(dst)


def test_a_rollout_saved_as_json_reads_back_as_the_same_enums() -> None:
    """What the AppMaster saves (``model_dump(mode="json")``) is plain strings, and an old
    record's strings read back as the enums."""
    rollout = Rollout(op_id="op-1", kind="canary", from_rev=None, to_rev=REV, started_at=0.0)
    record = rollout.model_dump(mode="json")
    assert (record["kind"], record["status"]) == ("canary", "running")
    again = Rollout.model_validate(record)
    assert (again.kind, again.status) == (RolloutKind.CANARY, RolloutStatus.RUNNING)

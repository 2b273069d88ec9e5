"""``ha-serving autoscale status SERVICE`` shows each cluster's count and policy and the
decisions with their reasons, from the store alone (no Keeper or AppMaster needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ha_serving.cli._app import main
from ha_serving.store import KEEPER_LEADER, Store
from tests.unit.fixtures.control import Harness, run
from tests.unit.test_appmaster_autoscale import deployed, load, rounds


def _autoscaled_store(url: str) -> None:
    """A service that burst from 2 to 8 instances on cluster a, as the AppMaster left it."""
    store = Store.connect(url)
    h = Harness.on(store)

    async def scenario() -> None:
        await deployed(h)
        load(h, {"echo-0": 40, "echo-1": 40})
        await rounds(h, 2)

    run(scenario())
    store.close()


def _run(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["ha-serving", *args])
    code = 0
    try:
        main()
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("HA_SERVING_DB_URL", url)
    monkeypatch.setenv("COLUMNS", "200")
    _autoscaled_store(url)
    return url


def test_status_shows_the_count_policy_and_each_decision_with_its_reason(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, _ = _run(["autoscale", "status", "echo", "--json"], monkeypatch, capsys)
    assert code == 0
    view = json.loads(text)
    (cluster,) = view["clusters"]
    assert (cluster["cluster"], cluster["instances"], cluster["spec_instances"]) == ("a", 8, 2)
    assert cluster["policy"]["max_instances"] == 8
    assert cluster["last_change"]["mode"] == "panic"
    (decision,) = view["decisions"]
    assert (decision["cluster"], decision["current"], decision["desired"]) == ("a", 2, 8)
    assert decision["reason"].startswith("2 -> 8: panic: in-flight peak 80.0")

    # its own demand is the stable window's average (its earlier readings had nothing in
    # flight), not the panic peak: what the Keeper reads must not swing per second
    assert (cluster["demand"], cluster["floor"]) == (5, 0)

    code, table, _ = _run(["autoscale", "status", "echo"], monkeypatch, capsys)
    assert code == 0
    assert "1..8" in table
    assert "panic" in table
    assert "in-flight peak 80.0" in table


def test_status_shows_the_keepers_floor_with_its_reason(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.connect(db)
    store.set_capacity_floor(
        "echo", "a", 6, "2 own + 4 of 4 unmet: b lost (4 unmet)",
        epoch=Harness.EPOCH, fence=KEEPER_LEADER,
    )  # fmt: skip
    store.close()
    code, text, _ = _run(["autoscale", "status", "echo", "--json"], monkeypatch, capsys)
    assert code == 0
    (cluster,) = json.loads(text)["clusters"]
    assert (cluster["floor"], cluster["floor_reason"]) == (
        6,
        "2 own + 4 of 4 unmet: b lost (4 unmet)",
    )
    code, table, _ = _run(["autoscale", "status", "echo"], monkeypatch, capsys)
    assert "Keeper floor" in table
    assert "6: 2 own + 4 of 4 unmet: b lost" in table


def test_an_unknown_service_is_one_error_line_and_exit_2(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["autoscale", "status", "nope"], monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines() == ["error: unknown service 'nope'"]

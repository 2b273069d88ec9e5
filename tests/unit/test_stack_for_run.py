"""``infra.stack_for_run`` without Ray: a stack of the run's own starts from an empty DB
(a DB an earlier stack left in the run dir is set aside, so its services do not come
back beside the run's) and leaves none behind; the earlier DB is put back."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ha_serving._settings import Settings
from infra import stack


class Slot:
    base = 11000
    released = False

    def settings(self, settings: Settings) -> Settings:
        return settings

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {"slot": Slot(), "db_at_up": None, "downs": 0}

    def up(settings: Settings) -> Any:
        db = tmp_path / "db"
        seen["db_at_up"] = sorted(p.name for p in db.iterdir()) if db.exists() else None
        db.mkdir()
        (db / "run-own").write_text("x")  # what the run's stack writes
        return SimpleNamespace(topology="topo")

    def down(run_dir: Path) -> None:
        seen["downs"] += 1

    monkeypatch.setattr(stack, "claim_slot", lambda: seen["slot"])
    monkeypatch.setattr(stack, "up", up)
    monkeypatch.setattr(stack, "down", down)
    return seen


def _settings(run_dir: Path) -> Settings:
    return Settings.build(stack={"run_dir": run_dir})


def test_an_earlier_db_is_set_aside_for_the_run_and_put_back(
    tmp_path: Path, fakes: dict[str, Any]
) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "earlier").write_text("services of an earlier run")
    with stack.stack_for_run(_settings(tmp_path)) as topo:
        assert topo == "topo"
        assert fakes["db_at_up"] is None  # the run's stack started from no DB
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["earlier"]
    assert [p.name for p in tmp_path.iterdir()] == ["db"]
    assert fakes["downs"] == 1
    assert fakes["slot"].released


def test_the_runs_own_db_is_removed_even_when_the_run_fails(
    tmp_path: Path, fakes: dict[str, Any]
) -> None:
    with pytest.raises(RuntimeError), stack.stack_for_run(_settings(tmp_path)):
        raise RuntimeError("the run failed")
    assert not (tmp_path / "db").exists()
    assert fakes["downs"] == 1

"""The startup heap is frozen in a Ray actor's process only, and once."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest

from ha_serving.util import heap


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(heap, "_frozen", False)
    yield heap
    gc.unfreeze()  # whatever a test froze goes back to the collector


def test_outside_a_ray_actor_nothing_is_frozen(fresh: Any) -> None:
    before = gc.get_freeze_count()
    assert fresh.freeze_startup_heap() is False
    assert gc.get_freeze_count() == before


def test_in_an_actor_process_the_heap_is_frozen_once(
    fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heap, "_in_ray_actor", lambda: True)
    assert fresh.freeze_startup_heap() is True
    assert gc.get_freeze_count() > 0
    assert fresh.freeze_startup_heap() is False  # user code loaded later stays collectable


def test_a_driver_that_is_no_actor_is_not_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray imported and initialised, but no actor id (a driver, e.g. a test's)."""

    class Context:
        def get_actor_id(self) -> None:
            return None

    class FakeRay:
        @staticmethod
        def is_initialized() -> bool:
            return True

        @staticmethod
        def get_runtime_context() -> Context:
            return Context()

    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    assert heap._in_ray_actor() is False

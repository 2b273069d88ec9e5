"""Unit-test fixtures: a fresh SQLite store per test (``store``; the in-process control
plane around it is ``tests/unit/fixtures/control.py``), and the store contract's
backend on its own SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_serving.store import Store
from tests.store_contract import Backend
from tests.unit.fixtures.control import Harness, sqlite_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An empty store on ``tmp_path/state.db``, closed after the test. A module that
    wants clusters registered overrides it, asking for this one."""
    with sqlite_store(tmp_path) as s:
        yield s


@pytest.fixture
def h(store: Store) -> Harness:
    """An AppMaster harness on the test's store (``Harness.on``)."""
    return Harness.on(store)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    """An empty SQLite database file; every Store opened on it is closed afterwards."""
    backend = Backend(f"sqlite:///{tmp_path / 'store.db'}")
    yield backend
    backend.close()

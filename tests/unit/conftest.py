"""Unit-test fixtures: the store contract runs on a fresh SQLite file per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store_contract import Backend


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    """An empty SQLite database file; every Store opened on it is closed afterwards."""
    backend = Backend(f"sqlite:///{tmp_path / 'store.db'}")
    yield backend
    backend.close()

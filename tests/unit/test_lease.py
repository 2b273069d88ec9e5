"""Leases on SQLite: the shared lease contract and the model-based state machine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.store_contract import LEASE_CHECKS, Backend, lease_matches_model_in_fake_time


@pytest.mark.parametrize("check", LEASE_CHECKS, ids=lambda c: c.__name__)
def test_lease_contract_on_sqlite(
    sqlite_backend: Backend, check: Callable[[Backend], None]
) -> None:
    """Each check's name states its claim; see tests/store_contract.py."""
    check(sqlite_backend)


def test_lease_matches_model_in_fake_time_on_sqlite(sqlite_backend: Backend) -> None:
    """Random acquire/renew/release/advance-time runs by 3 holders agree with the model:
    never two holders at one epoch, at most one unexpired holder, epochs only grow,
    expired leases can be taken, stale holders' renewals raise LeaseLost."""
    lease_matches_model_in_fake_time(sqlite_backend, max_examples=60, steps=40)

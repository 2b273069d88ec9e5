"""The store on MySQL/MariaDB: the same contract as on SQLite, on a fresh database each.

Uses the ``mysql_url`` fixture of ``tests/conftest.py`` (a private mariadbd, or the
server named by ``HA_SERVING_TEST_MYSQL_URL``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.store_contract import (
    LEASE_CHECKS,
    STORE_CHECKS,
    Backend,
    lease_matches_model_in_fake_time,
)

pytestmark = [pytest.mark.mysql, pytest.mark.integration]


@pytest.fixture
def mysql_backend(mysql_url: str) -> Iterator[Backend]:
    """A fresh, empty MySQL database; every Store opened on it is closed afterwards."""
    backend = Backend(mysql_url)
    yield backend
    backend.close()


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
def test_store_contract_on_mysql(mysql_backend: Backend, check: Callable[[Backend], None]) -> None:
    """Each check's name states its claim; see tests/store_contract.py."""
    check(mysql_backend)


@pytest.mark.parametrize("check", LEASE_CHECKS, ids=lambda c: c.__name__)
def test_lease_contract_on_mysql(mysql_backend: Backend, check: Callable[[Backend], None]) -> None:
    """Each check's name states its claim; see tests/store_contract.py."""
    check(mysql_backend)


def test_lease_matches_model_in_fake_time_on_mysql(mysql_backend: Backend) -> None:
    """Random acquire/renew/release/advance-time runs by 3 holders agree with the model:
    never two holders at one epoch, at most one unexpired holder, epochs only grow,
    expired leases can be taken, stale holders' renewals raise LeaseLost."""
    lease_matches_model_in_fake_time(mysql_backend, max_examples=25, steps=30)


def test_store_reconnects_after_the_server_kills_its_connections(
    mysql_backend: Backend, mysql_url: str
) -> None:
    """Pooled connections the server dropped (restart, wait_timeout, KILL) are replaced
    transparently (pre-ping): the next call succeeds instead of failing once."""
    store = mysql_backend.connect()
    store.create_service("echo", {"replicas": 1})
    database = make_url(mysql_url).database
    admin = sa.create_engine(make_url(mysql_url).set(database=""), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            ids = (
                conn.execute(
                    sa.text("SELECT id FROM information_schema.processlist WHERE db = :db"),
                    {"db": database},
                )
                .scalars()
                .all()
            )
            assert ids, "the store should hold a pooled connection to kill"
            for connection_id in ids:
                conn.execute(sa.text(f"KILL CONNECTION {int(connection_id)}"))
    finally:
        admin.dispose()
    assert store.get_service("echo").spec == {"replicas": 1}
    assert store.ping()

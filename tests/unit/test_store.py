"""The store on SQLite: the shared contract, plus what needs no database at all."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import CompileError

from ha_serving._errors import ConflictError, InvalidSpec, StoreUnavailable
from ha_serving.store import SCHEMA_VERSION, Store, db_now, safe_url, store_retry
from ha_serving.store._schema import MIGRATIONS
from tests.store_contract import STORE_CHECKS, Backend


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
def test_store_contract_on_sqlite(
    sqlite_backend: Backend, check: Callable[[Backend], None]
) -> None:
    """Each check's name states its claim; see tests/store_contract.py."""
    check(sqlite_backend)


def test_migrations_are_one_linear_history() -> None:
    """Each version is reached by exactly one migration, in order, up to SCHEMA_VERSION:
    6 is the autoscaler's rate history, 7 the Keepers' credentials (two branches that
    each called theirs 6, merged into one line)."""
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION == 8
    assert "request-rate" in MIGRATIONS[5].description
    assert "credentials" in MIGRATIONS[6].description


def test_connect_to_a_closed_port_fails_fast_without_leaking_the_password() -> None:
    """A MySQL URL nobody answers raises StoreUnavailable within the connect timeout,
    and the one-line message names the URL with the password masked."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        Store.connect("mysql+pymysql://root:s3cret@127.0.0.1:1/x", connect_timeout_s=2.0)
    assert time.monotonic() - started < 2.5
    message = str(caught.value)
    assert "s3cret" not in message
    assert "s3cret" not in repr(caught.value)
    assert "mysql+pymysql://root:***@127.0.0.1:1/x" in message
    assert "\n" not in message


def test_connect_to_an_unopenable_sqlite_file_raises_store_unavailable(tmp_path: Path) -> None:
    """A SQLite path in a missing directory is reported as an unavailable store."""
    with pytest.raises(StoreUnavailable, match="sqlite"):
        Store.connect(f"sqlite:///{tmp_path / 'missing' / 'store.db'}")


@pytest.mark.parametrize(
    "url", ["postgresql://u@h/db", "sqlite://", "sqlite:///:memory:", "not a url"]
)
def test_unsupported_store_urls_are_invalid_specs(url: str) -> None:
    """Only MySQL/MariaDB and SQLite files are stores; anything else is the user's error."""
    with pytest.raises(InvalidSpec):
        Store.connect(url)


def test_safe_url_masks_the_password() -> None:
    """Logs and errors may show the URL, never its password."""
    assert safe_url("mysql+pymysql://u:pw@h:3306/db") == "mysql+pymysql://u:***@h:3306/db"


def test_db_now_compiles_per_dialect() -> None:
    """The DB clock is UNIX_TIMESTAMP(NOW(6)) on MySQL, julianday on SQLite, and an error
    (not silently some other clock) elsewhere."""
    query = sa.select(db_now())
    assert "UNIX_TIMESTAMP(NOW(6))" in str(query.compile(dialect=mysql.dialect()))
    assert "julianday('now')" in str(query.compile(dialect=sqlite.dialect()))
    with pytest.raises(CompileError):
        query.compile(dialect=postgresql.dialect())


def test_store_retry_retries_only_store_unavailable_then_reraises() -> None:
    """Transient failures are retried up to `attempts`; conflicts are not retried."""
    naps: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise StoreUnavailable("blip")
        return "ok"

    assert store_retry(5, 0.1, sleep=naps.append)(flaky) == "ok"
    assert (calls, len(naps)) == (3, 2)
    assert all(0 <= nap <= 0.1 for nap in naps)

    def always_down() -> None:
        raise StoreUnavailable("down")

    with pytest.raises(StoreUnavailable):
        store_retry(3, 0.1, sleep=naps.append)(always_down)

    conflicts = 0

    def conflict() -> None:
        nonlocal conflicts
        conflicts += 1
        raise ConflictError("services", "echo", 1, 2)

    with pytest.raises(ConflictError):
        store_retry(5, 0.1, sleep=naps.append)(conflict)
    assert conflicts == 1


def test_ping_reports_false_when_the_database_is_gone(tmp_path: Path) -> None:
    """ping() answers False instead of raising when the DB cannot be reached."""
    folder = tmp_path / "db"
    folder.mkdir()
    store = Store.connect(f"sqlite:///{folder / 'store.db'}")
    try:
        assert store.ping()
        store.close()
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        assert not store.ping()
    finally:
        store.close()

"""Engines, the DB clock and error translation: everything that differs by dialect.

The rest of the store writes one SQLAlchemy Core statement per operation and runs it
unchanged on MySQL/MariaDB (pymysql) and SQLite. What differs lives here:

- ``db_now()``: the DB server's current time as float epoch seconds, so lease expiry is
  judged by one clock (the DB's) instead of every client's own.
- engine options: timeouts, UTC sessions and READ COMMITTED for MySQL; WAL, a busy
  timeout and ``BEGIN IMMEDIATE`` transactions for SQLite.
- ``translate_errors``: driver connection/lock failures become ``StoreUnavailable``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import sqlalchemy as sa
import tenacity
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from ha_serving._errors import InvalidSpec, StoreUnavailable

# --- the DB's clock -----------------------------------------------------------------


class TimeSource(Protocol):
    """Anything with ``now()`` in epoch seconds, e.g. ``ha_serving.util.clock.FakeClock``."""

    def now(self) -> float: ...


class DbNow(FunctionElement[float]):
    """``db_now()`` compiles to the server's current time in float epoch seconds."""

    type = sa.Double()
    inherit_cache = True
    name = "db_now"


def db_now() -> DbNow:
    return DbNow()


@compiles(DbNow, "mysql")
@compiles(DbNow, "mariadb")
def _db_now_mysql(_element: DbNow, _compiler: SQLCompiler, **_kw: Any) -> str:
    # NOW(6) keeps microseconds; "+ 0e0" turns the DECIMAL into a DOUBLE. Sessions run in
    # UTC (see make_engine) so UNIX_TIMESTAMP never meets a DST-ambiguous local time.
    return "(UNIX_TIMESTAMP(NOW(6)) + 0e0)"


@compiles(DbNow, "sqlite")
def _db_now_sqlite(_element: DbNow, _compiler: SQLCompiler, **_kw: Any) -> str:
    # julianday('now') is UTC with millisecond precision; 2440587.5 is 1970-01-01 00:00 UTC.
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(DbNow)
def _db_now_other(_element: DbNow, compiler: SQLCompiler, **_kw: Any) -> str:
    raise exc.CompileError(f"db_now() is not defined for dialect {compiler.dialect.name!r}")


# --- engines ------------------------------------------------------------------------

_MYSQL_BACKENDS = frozenset({"mysql", "mariadb"})


def safe_url(url: str | URL) -> str:
    """The URL as text with any password masked, fit for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<unparseable store URL>"


def make_engine(url: str, *, connect_timeout_s: float, query_timeout_s: float) -> Engine:
    """An engine for ``url`` with the options this store relies on (see module docstring)."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise InvalidSpec("store url", [f"cannot parse {safe_url(url)!r}"]) from None
    backend = parsed.get_backend_name()
    if backend in _MYSQL_BACKENDS:
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,  # a pooled connection may have died with a DB restart
            pool_recycle=1800,  # below MySQL's wait_timeout on any sane server
            # Every statement sees the latest committed rows, and fewer gap locks are
            # taken; correctness rests on compare-and-set UPDATEs, not on snapshots.
            isolation_level="READ COMMITTED",
            connect_args={
                "connect_timeout": connect_timeout_s,
                # A DB that stops answering (SIGSTOP, partition) must surface as an error,
                # not hang the caller forever on a TCP read.
                "read_timeout": query_timeout_s,
                "write_timeout": query_timeout_s,
                "charset": "utf8mb4",
                "init_command": "SET time_zone = '+00:00'",
            },
        )
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InvalidSpec("store url", ["SQLite needs a file (sqlite:///path/to/db)"])
        engine = sa.create_engine(parsed, connect_args={"timeout": connect_timeout_s})
        _configure_sqlite(engine)
        return engine
    raise InvalidSpec(
        "store url", [f"unsupported backend {backend!r}; use mysql+pymysql:// or sqlite:///"]
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so "begin" below decides.
        dbapi_conn.isolation_level = None
        # Readers never block the writer in WAL mode. Switching a fresh file to WAL needs
        # an exclusive lock, and SQLite reports "locked" at once (no busy wait) when
        # several processes open a new DB together: retry briefly.
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(sqlite3.OperationalError),
            wait=tenacity.wait_exponential(multiplier=0.01, max=0.2),
            stop=tenacity.stop_after_delay(5),
            reraise=True,
        ):
            with attempt:
                cursor = dbapi_conn.cursor()
                try:
                    cursor.execute("PRAGMA journal_mode=WAL")
                finally:
                    cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Take the write lock up front: a deferred transaction that reads and then writes
        # fails at once (SQLITE_BUSY_SNAPSHOT) when another writer slipped in between,
        # while BEGIN IMMEDIATE waits its turn under the busy timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# --- errors ---------------------------------------------------------------------------

# Connection refused/lost, lock wait timeouts, deadlocks, "database is locked": all
# transient. IntegrityError and ProgrammingError are not here: they mean a bug or a
# conflict the caller handles.
_TRANSIENT: tuple[type[Exception], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
)


def _one_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error)
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def translate_errors(url_for_humans: str) -> Iterator[None]:
    """Turn transient driver errors inside the block into ``StoreUnavailable``."""
    try:
        yield
    except _TRANSIENT as error:
        raise StoreUnavailable(f"state store {url_for_humans}: {_one_line(error)}") from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise StoreUnavailable(
                f"state store {url_for_humans}: connection lost: {_one_line(error)}"
            ) from error
        raise


def store_retry(
    attempts: int = 5,
    max_wait: float = 2.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """A tenacity ``Retrying`` that retries only ``StoreUnavailable``, then re-raises it.

    Use as ``store_retry()(store.get_service, name)`` or ``for attempt in store_retry():``.
    Conflicts and lost leases are not retried: the caller must re-read and decide.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(StoreUnavailable),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=max_wait),
        sleep=sleep,
        reraise=True,
    )

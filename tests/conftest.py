"""Fixtures shared by every test layer: a private MySQL-compatible server.

Tests never touch the machine's shared MariaDB: ``mysql_server`` starts a private
``mariadbd`` (its own loopback address and port) once per session and stops it by
process group at the end; ``mysql_url`` gives each test a fresh, empty database, as
the private server's root (through its unix socket: `up`'s server lets no root in over
TCP). ``HA_SERVING_TEST_MYSQL_URL`` (a server URL, e.g.
``mysql+pymysql://root@host:3306``) points the tests at an external server instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ha_serving.util.secrets import secret_dir
from infra import procs
from infra.ports import claim_slot
from infra.services import admin_url, start_mariadb

SLOT = claim_slot()
"""This test run's ports, claimed machine-wide for the session: a second test run, or one
beside `make up`, gets other ports (see ``infra.ports.SLOT_BASES``)."""

TEST_DB_ADDRESS = "127.0.101.1"
TEST_DB_PORT = SLOT.base + 10


@pytest.fixture(scope="session")
def mysql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (no database) of a MySQL-compatible server for this test session."""
    external = os.environ.get("HA_SERVING_TEST_MYSQL_URL")
    if external:
        yield make_url(external.rstrip("/")).render_as_string(hide_password=False)
        return
    from ha_serving._settings import Settings

    binary = Settings.from_env().stack.mariadbd_bin
    if binary is None:
        pytest.fail("no mariadbd/mysqld on this machine: install mariadb-server")
    work = Path(tmp_path_factory.mktemp("mariadb"))
    db = start_mariadb(
        binary,
        work / "db",
        address=TEST_DB_ADDRESS,
        port=TEST_DB_PORT,
        secrets=secret_dir(work / "secrets"),
    )
    assert db.proc is not None
    try:
        yield admin_url(db)
    finally:
        procs.kill(db.proc, grace_s=10)


@pytest.fixture
def mysql_url(mysql_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped after the test."""
    name = f"ha_serving_t_{uuid.uuid4().hex[:10]}"
    server = make_url(mysql_server)
    admin = sa.create_engine(server.set(database=""), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
    finally:
        admin.dispose()

"""The versioned schema and its migrations.

``schema_version`` holds one row with the version the DB is at. ``migrate(engine)``
applies every migration above it, in order, under a lock so that several processes
starting at once migrate exactly once (MySQL: a named ``GET_LOCK``; SQLite: the
``BEGIN IMMEDIATE`` write lock every transaction of this store takes). A DB whose
version is newer than this code is refused rather than written with an old shape.

Times are DB-clock float epoch seconds (``Double``: MySQL's ``FLOAT`` is single precision
and would lose the seconds). Key columns use short ``String`` lengths so composite keys
fit InnoDB's limits in utf8mb4; ``utf8mb4_bin`` makes names case- and space-sensitive on
MySQL exactly as on SQLite.

Adding a version: append a ``Migration`` that changes the schema from the previous
version (ALTER/CREATE), bump ``SCHEMA_VERSION``, and update the tables below to the new
shape; migration 1 must keep creating the version-1 tables, so give it its own copies
of them when they first diverge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from ha_serving._errors import PlatformError, StoreUnavailable

SCHEMA_VERSION = 8
"""The schema version this code reads and writes."""

_MIGRATE_LOCK = "ha_serving_migrate"
_MIGRATE_LOCK_WAIT_S = 20  # below the default query timeout (30 s), which would cut it off

NAME = sa.String(128)  # service names, lease names
CLUSTER = sa.String(64)
ADDRESS = sa.String(128)  # host:port
OP_ID = sa.String(64)
HOLDER = sa.String(191)
TIME: sa.Double[float] = sa.Double()

_MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("version", sa.Integer, nullable=False),
    **_MYSQL_TABLE,
)

services = sa.Table(
    "services",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("spec_version", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),  # optimistic concurrency
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    **_MYSQL_TABLE,
)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("op_id", OP_ID, primary_key=True),
    sa.Column("service", NAME, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("plan", sa.JSON, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    # added in version 4: a release's progress (weights, analysis) and the operator's
    # last command (promote, pause, resume, abort), written without a version check
    sa.Column("progress", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("command", sa.String(32), nullable=True),
    sa.Index("ix_operations_service_status", "service", "status"),
    **_MYSQL_TABLE,
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("holder", HOLDER, nullable=True),  # NULL: released
    sa.Column("epoch", sa.BigInteger, nullable=False),  # fencing token, only grows
    sa.Column("expires_at", TIME, nullable=False),
    **_MYSQL_TABLE,
)

appmasters = sa.Table(
    "appmasters",
    metadata,
    sa.Column("cluster", CLUSTER, primary_key=True),
    sa.Column("service", NAME, primary_key=True),
    sa.Column("actor_name", sa.String(191), nullable=False),
    sa.Column("address", ADDRESS, nullable=True),
    sa.Column("epoch_seen", sa.BigInteger, nullable=False),
    sa.Column("heartbeat_at", TIME, nullable=False),
    **_MYSQL_TABLE,
)

appmaster_state = sa.Table(
    "appmaster_state",
    metadata,
    sa.Column("cluster", CLUSTER, primary_key=True),
    sa.Column("service", NAME, primary_key=True),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    **_MYSQL_TABLE,
)

endpoints = sa.Table(
    "endpoints",
    metadata,
    sa.Column("service", NAME, primary_key=True),
    sa.Column("cluster", CLUSTER, primary_key=True),
    sa.Column("address", ADDRESS, primary_key=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("expires_at", TIME, nullable=False),
    sa.Index("ix_endpoints_expires_at", "expires_at"),
    **_MYSQL_TABLE,
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", TIME, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("cluster", CLUSTER, nullable=True),
    sa.Column("service", NAME, nullable=True),
    sa.Column("op_id", OP_ID, nullable=True),
    sa.Column("epoch", sa.BigInteger, nullable=True),
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_events_service", "service", "id"),
    **_MYSQL_TABLE,
)

packages = sa.Table(
    "packages",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),  # sha256 hex of ``data``
    sa.Column("data", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql")),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    **_MYSQL_TABLE,
)
"""Service code packages, content-addressed: clusters load code from here, never from
the deployer's disk. Added in schema version 2."""

clusters = sa.Table(
    "clusters",
    metadata,
    sa.Column("name", CLUSTER, primary_key=True),
    sa.Column("gcs_address", ADDRESS, nullable=False),
    sa.Column("dashboard_url", sa.String(191), nullable=True),  # Ray Job Submission API
    sa.Column("zone", sa.String(64), nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    sa.Column("tier", sa.String(64), nullable=False, server_default=""),  # version 5
    **_MYSQL_TABLE,
)
"""The Ray clusters the Keepers may place services on. Added in schema version 3."""

instructions = sa.Table(
    "instructions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("cluster", CLUSTER, nullable=False),
    sa.Column("service", NAME, nullable=False),
    sa.Column("op_id", OP_ID, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),  # the writing leader's fencing token
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Index("ix_instructions_target", "cluster", "service", "id"),
    **_MYSQL_TABLE,
)
"""The leader's instructions to AppMasters, in order; streamed to them by any Keeper.
Added in schema version 3."""

rate_samples = sa.Table(
    "rate_samples",
    metadata,
    sa.Column("service", NAME, primary_key=True),
    sa.Column("cluster", CLUSTER, primary_key=True),
    sa.Column("at", TIME, primary_key=True),  # the start of the sample's step
    sa.Column("rate", TIME, nullable=False),  # calls answered per second over the step
    sa.Index("ix_rate_samples_at", "at"),
    **_MYSQL_TABLE,
)
"""Each service's request rate per cluster, one row per step (``autoscaling.predictive.
step_s``): the history the autoscaler's forecast is fitted to. Added in schema version 6."""

credentials = sa.Table(
    "credentials",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the token's public part (hex)
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("cluster", CLUSTER, nullable=False),
    sa.Column("service", NAME, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),  # sha256 hex of the secret part
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("revoked_at", TIME, nullable=True),
    sa.Index("ix_credentials_target", "cluster", "service"),
    **_MYSQL_TABLE,
)
"""Credentials the Keepers mint (one per AppMaster): the secret's hash, never the secret.
Added in schema version 7."""

capacity_floors = sa.Table(
    "capacity_floors",
    metadata,
    sa.Column("service", NAME, primary_key=True),
    sa.Column("cluster", CLUSTER, primary_key=True),
    sa.Column("floor", sa.Integer, nullable=False),  # 0: none
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),  # the writing leader's fencing token
    sa.Column("updated_at", TIME, nullable=False),
    **_MYSQL_TABLE,
)
"""The Keeper leader's floor under each autoscaled service's count per cluster: the
share of demand other clusters cannot carry (one lost, one that cannot grow). Added in
schema version 8."""

_V1_TABLES = [
    t
    for t in metadata.sorted_tables
    if t.name
    not in {
        "packages",
        "clusters",
        "instructions",
        "rate_samples",
        "credentials",
        "capacity_floors",
    }
]  # what version 1 created, for migration 1


class SchemaTooNew(PlatformError):
    """The DB was migrated by newer code; this code must not write to it."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, found: int, known: int) -> None:
        self.found = found
        self.known = known
        super().__init__(
            f"state store schema is at version {found}, this code knows up to {known}: "
            "upgrade ha_serving before pointing it at this DB"
        )


@dataclass(frozen=True)
class Migration:
    version: int
    """The schema version the DB is at after this migration."""
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    metadata.create_all(conn, tables=_V1_TABLES, checkfirst=True)


def _v2_packages(conn: Connection) -> None:
    packages.create(conn, checkfirst=True)


def _v3_keeper(conn: Connection) -> None:
    clusters.create(conn, checkfirst=True)
    instructions.create(conn, checkfirst=True)


def _v4_release_progress(conn: Connection) -> None:
    """Add operations.progress and operations.command (migration 1 of this code already
    creates them: add only what is missing)."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(operations.name)}
    for name in ("progress", "command"):
        if name not in present:
            column = operations.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {operations.name} ADD COLUMN {name} {kind} NULL"))


def _v5_cluster_tier(conn: Connection) -> None:
    """Add clusters.tier, '' for the clusters already registered (migration 3 of this code
    already creates it: add it only if missing)."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(clusters.name)}
    if "tier" not in present:
        kind = clusters.c.tier.type.compile(dialect=conn.dialect)
        add = f"ALTER TABLE {clusters.name} ADD COLUMN tier {kind} NOT NULL DEFAULT ''"
        conn.execute(sa.text(add))


def _v6_rate_samples(conn: Connection) -> None:
    rate_samples.create(conn, checkfirst=True)


def _v7_credentials(conn: Connection) -> None:
    """Create the credentials table. Also rate_samples if missing: the security branch
    was developed with credentials as its version 6, so a DB it migrated says 6 without
    having run this code's migration 6."""
    rate_samples.create(conn, checkfirst=True)
    credentials.create(conn, checkfirst=True)


def _v8_capacity_floors(conn: Connection) -> None:
    capacity_floors.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial tables", _v1_initial),
    Migration(2, "content-addressed code packages", _v2_packages),
    Migration(3, "cluster registry and Keeper instructions", _v3_keeper),
    Migration(4, "release progress and operator commands on operations", _v4_release_progress),
    Migration(5, "a tier for each registered cluster", _v5_cluster_tier),
    Migration(6, "request-rate history for the autoscaler's forecast", _v6_rate_samples),
    Migration(7, "credentials the Keepers mint for AppMasters", _v7_credentials),
    Migration(8, "the Keeper's capacity floors for autoscaled services", _v8_capacity_floors),
)


def read_version(conn: Connection) -> int:
    """The DB's schema version; 0 for a DB this store never touched."""
    if not sa.inspect(conn).has_table(schema_version.name):
        return 0
    found = conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none()
    return 0 if found is None else int(found)


def migrate(engine: Engine) -> int:
    """Bring the DB up to ``SCHEMA_VERSION``; return the version it was at before.

    Safe to call from many processes at once; a no-op on an up-to-date DB.
    Raises ``SchemaTooNew`` for a DB newer than this code.
    """
    mysql = engine.dialect.name in ("mysql", "mariadb")
    with engine.connect() as conn:
        if mysql:
            _get_lock(conn)
        try:
            # SQLite: this first statement runs in a BEGIN IMMEDIATE transaction that holds
            # the DB's write lock until the commit below, serialising migrators.
            before = read_version(conn)
            if before > SCHEMA_VERSION:
                raise SchemaTooNew(before, SCHEMA_VERSION)
            for step in MIGRATIONS:
                if step.version > before:
                    step.apply(conn)
                    _write_version(conn, step.version)
            conn.commit()
        finally:
            if mysql:
                conn.rollback()
                conn.execute(sa.select(sa.func.release_lock(_MIGRATE_LOCK)))
                conn.commit()
    return before


def _get_lock(conn: Connection) -> None:
    got = conn.execute(
        sa.select(sa.func.get_lock(_MIGRATE_LOCK, _MIGRATE_LOCK_WAIT_S))
    ).scalar_one()
    if got != 1:
        # Another process holds it for longer than any migration should take.
        raise StoreUnavailable(
            f"could not take the migration lock {_MIGRATE_LOCK!r} within "
            f"{_MIGRATE_LOCK_WAIT_S}s (GET_LOCK returned {got!r})",
            retry_after=1.0,
        )


def _write_version(conn: Connection, version: int) -> None:
    updated = conn.execute(sa.update(schema_version).values(version=version))
    if updated.rowcount == 0:
        conn.execute(sa.insert(schema_version).values(id=1, version=version))

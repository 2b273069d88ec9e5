"""``Store``: the one object the rest of the stack uses to read and write durable state.

Every method is one short transaction. Writes to versioned rows are compare-and-set on
the ``version`` column (``UPDATE ... WHERE version = :expected``); a lost race raises
``ConflictError`` with the version found, and the caller re-reads and decides. Transient
DB failures raise ``StoreUnavailable``; retrying is the caller's business
(``store_retry``). Methods are blocking: async callers run them in a thread.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from ha_serving._errors import (
    ConflictError,
    LeaseLost,
    OperationFinished,
    StoreUnavailable,
    UnknownService,
)
from ha_serving._status import ACTIVE, OPERATION_TRANSITIONS, OperationStatus, check_move
from ha_serving.store import (
    _catalog,
    _control,
    _credentials,
    _floors,
    _lease,
    _rates,
    _retention,
)
from ha_serving.store._catalog import Endpoint
from ha_serving.store._control import (
    AppMasterBeat,
    AppMasterRecord,
    ClusterRecord,
    Instruction,
    InstructionsRead,
)
from ha_serving.store._credentials import CredentialRecord
from ha_serving.store._engine import (
    TimeSource,
    db_now,
    make_engine,
    safe_url,
    translate_errors,
)
from ha_serving.store._lease import Lease
from ha_serving.store._records import (
    AlreadyExists,
    CapacityFloor,
    EventRecord,
    OperationRecord,
    ServiceRecord,
    UnknownOperation,
)
from ha_serving.store._ref import StoreRef
from ha_serving.store._schema import (
    appmaster_state,
    events,
    leases,
    migrate,
    operations,
    read_version,
    services,
)


class Store:
    """Durable state on MySQL/MariaDB or SQLite. Build with ``Store.connect(url)``."""

    def __init__(self, engine: Engine, *, clock: TimeSource | None = None) -> None:
        """Wrap an engine made by ``make_engine``; prefer ``Store.connect``."""
        self._engine = engine
        self._clock = clock
        self.url = safe_url(engine.url)
        """The store's URL with the password masked."""

    @classmethod
    def connect(
        cls,
        url: str | StoreRef,
        *,
        connect_timeout_s: float = 3.0,
        query_timeout_s: float = 30.0,
        clock: TimeSource | None = None,
    ) -> Store:
        """Connect, check that the DB answers, and migrate it to ``SCHEMA_VERSION``.

        ``query_timeout_s`` bounds each MySQL round trip, so a DB that stops answering
        (SIGSTOP, partition) raises instead of hanging; SQLite waits up to
        ``connect_timeout_s`` for a lock. ``clock`` replaces the DB's clock for lease
        expiry and timestamps (fake-time tests); leave it None in production.
        Raises ``StoreUnavailable`` if the DB does not answer within
        ``connect_timeout_s``, ``SchemaTooNew`` for a newer DB.
        """
        if isinstance(url, StoreRef):
            url = url.connect_url()  # the password is read now, from its file
        engine = make_engine(
            url, connect_timeout_s=connect_timeout_s, query_timeout_s=query_timeout_s
        )
        store = cls(engine, clock=clock)
        try:
            with translate_errors(store.url):
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        """Close pooled connections; the Store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # --- plumbing ---------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with translate_errors(self.url), self._engine.begin() as conn:
            yield conn

    def _now_sql(self) -> sa.ColumnElement[float]:
        """The "now" of one statement: the DB's clock, or the injected clock's reading."""
        if self._clock is None:
            return db_now()
        return sa.literal(self._clock.now(), sa.Double())

    def ping(self) -> bool:
        """Whether the DB answers right now; never raises for an unreachable DB."""
        try:
            with self._tx() as conn:
                conn.execute(sa.text("SELECT 1"))
        except StoreUnavailable:
            return False
        return True

    def now(self) -> float:
        """The store's current time in epoch seconds (the clock leases expire by)."""
        if self._clock is not None:
            return self._clock.now()
        with self._tx() as conn:
            return float(conn.execute(sa.select(db_now())).scalar_one())

    def schema_version(self) -> int:
        with self._tx() as conn:
            return read_version(conn)

    # --- services ---------------------------------------------------------------------

    def create_service(self, name: str, spec: Mapping[str, Any]) -> ServiceRecord:
        """Store a new service at version 1; ``AlreadyExists`` if the name is taken."""
        now = self._now_sql()
        try:
            with self._tx() as conn:
                conn.execute(
                    sa.insert(services).values(
                        name=name,
                        spec=dict(spec),
                        spec_version=1,
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
                return self._service(conn, name)
        except exc.IntegrityError:
            raise AlreadyExists("services", name) from None

    def get_service(self, name: str) -> ServiceRecord:
        """The service's record; ``UnknownService`` if there is none."""
        with self._tx() as conn:
            return self._service(conn, name)

    def list_services(self) -> list[ServiceRecord]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(services).order_by(services.c.name))
            return [ServiceRecord.from_record(row._mapping) for row in rows]

    def update_service(
        self, name: str, spec: Mapping[str, Any], *, expected_version: int
    ) -> ServiceRecord:
        """Replace the spec if the row is still at ``expected_version``, else
        ``ConflictError``; bumps both ``version`` and ``spec_version``."""
        with self._tx() as conn:
            updated = conn.execute(
                sa.update(services)
                .where(services.c.name == name, services.c.version == expected_version)
                .values(
                    spec=dict(spec),
                    spec_version=services.c.spec_version + 1,
                    version=services.c.version + 1,
                    updated_at=self._now_sql(),
                )
            )
            if updated.rowcount != 1:
                actual = self._service(conn, name).version  # UnknownService if gone
                raise ConflictError("services", name, expected_version, actual)
            return self._service(conn, name)

    def _service(self, conn: Connection, name: str) -> ServiceRecord:
        row = conn.execute(sa.select(services).where(services.c.name == name)).one_or_none()
        if row is None:
            raise UnknownService(name)
        return ServiceRecord.from_record(row._mapping)

    # --- operations -------------------------------------------------------------------

    def create_operation(self, op: OperationRecord) -> OperationRecord:
        """Store ``op`` at version 1 and return it as stored.

        Idempotent: creating the same ``op_id`` again with the same service, kind and
        plan returns the stored row (with whatever progress it has made); a different
        request under the same ``op_id`` raises ``AlreadyExists``.
        """
        now = self._now_sql()
        values = op.to_record() | {"version": 1, "created_at": now, "updated_at": now}
        try:
            with self._tx() as conn:
                conn.execute(sa.insert(operations).values(values))
                return self._operation(conn, op.op_id)
        except exc.IntegrityError:
            pass
        stored = self.get_operation(op.op_id)
        if not stored.same_request(op):
            raise AlreadyExists("operations", op.op_id) from None
        return stored

    def create_operation_with_service(
        self, op: OperationRecord, spec: Mapping[str, Any], *, expected_version: int | None
    ) -> tuple[OperationRecord, bool]:
        """Store ``op`` and make ``spec`` the record of service ``op.service``, in one
        transaction: both are written or neither is. Returns (the stored op, created).

        ``expected_version`` is the service row's version the caller read, None for a
        service that must not exist yet; a mismatch raises ``ConflictError`` (``expected``
        0 for "absent") and writes nothing. Idempotent like ``create_operation``: an
        ``op_id`` already stored for the same request returns it with ``created`` False
        and leaves the service alone; a different request raises ``AlreadyExists``.
        """
        now = self._now_sql()
        values = op.to_record() | {"version": 1, "created_at": now, "updated_at": now}
        with self._tx() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(operations).values(values))
            except exc.IntegrityError:
                stored = self._operation(conn, op.op_id)
            else:
                self._put_service(conn, op.service, spec, expected_version)
                return self._operation(conn, op.op_id), True
        if not stored.same_request(op):
            raise AlreadyExists("operations", op.op_id)
        return stored, False

    def _put_service(
        self, conn: Connection, name: str, spec: Mapping[str, Any], expected: int | None
    ) -> None:
        """Create (``expected`` None) or compare-and-set the service row, in ``conn``'s
        transaction; ``ConflictError`` if it is not as expected."""
        now = self._now_sql()
        if expected is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(services).values(
                            name=name,
                            spec=dict(spec),
                            spec_version=1,
                            version=1,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except exc.IntegrityError:
                actual = self._service(conn, name).version
                raise ConflictError("services", name, 0, actual) from None
            return
        updated = conn.execute(
            sa.update(services)
            .where(services.c.name == name, services.c.version == expected)
            .values(
                spec=dict(spec),
                spec_version=services.c.spec_version + 1,
                version=services.c.version + 1,
                updated_at=now,
            )
        )
        if updated.rowcount != 1:
            found = conn.execute(
                sa.select(services.c.version).where(services.c.name == name)
            ).scalar_one_or_none()
            raise ConflictError("services", name, expected, found)

    def get_operation(self, op_id: str) -> OperationRecord:
        """The operation's record; ``UnknownOperation`` if there is none."""
        with self._tx() as conn:
            return self._operation(conn, op_id)

    def list_operations(
        self,
        service: str | None = None,
        status: str | None = None,
        *,
        statuses: Collection[str] | None = None,
        op_id: str | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[OperationRecord]:
        """Operations, oldest first (by ``created_at``, then ``op_id``), optionally only one
        service's, one status' (or any of ``statuses``) or one operation. A page:
        ``after`` an operation's ``(created_at, op_id)``, at most ``limit`` of them."""
        c = operations.c
        query = sa.select(operations).order_by(c.created_at, c.op_id)
        if service is not None:
            query = query.where(c.service == service)
        if status is not None:
            query = query.where(c.status == str(status))
        if statuses is not None:
            query = query.where(c.status.in_(sorted(str(s) for s in statuses)))
        if op_id is not None:
            query = query.where(c.op_id == op_id)
        if after is not None:
            at, last = after
            query = query.where((c.created_at > at) | ((c.created_at == at) & (c.op_id > last)))
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            return [OperationRecord.from_record(row._mapping) for row in conn.execute(query)]

    def latest_operations(self, *, exclude_status: str | None = None) -> list[OperationRecord]:
        """Each service's newest operation (by ``created_at``, then ``op_id``), passing
        over those with ``exclude_status``; one row per service, however long the
        history (the DB ranks them), by service name."""
        c = operations.c
        rank = (
            sa.func.row_number()
            .over(partition_by=c.service, order_by=(c.created_at.desc(), c.op_id.desc()))
            .label("rank")
        )
        inner = sa.select(operations, rank)
        if exclude_status is not None:
            inner = inner.where(c.status != str(exclude_status))
        ranked = inner.subquery()
        query = (
            sa.select(*(ranked.c[col.name] for col in operations.c))
            .where(ranked.c.rank == 1)
            .order_by(ranked.c.service)
        )
        with self._tx() as conn:
            return [OperationRecord.from_record(row._mapping) for row in conn.execute(query)]

    def advance_operation(
        self,
        op_id: str,
        *,
        expected_version: int,
        step: int | None = None,
        status: OperationStatus | None = None,
        error: str | None = None,
        epoch: int | None = None,
        progress: Mapping[str, Any] | None = None,
        fence: str | None = None,
    ) -> OperationRecord:
        """Record progress if the row is still at ``expected_version``, else
        ``ConflictError``. Fields left None keep their value (so a recorded error survives
        later status changes); ``epoch`` records the leader that made the progress, and
        with ``fence`` (a lease name) the write needs that lease still at ``epoch``.
        A ``status`` its table (``ha_serving._status``) does not allow from the stored
        one raises ``IllegalTransition`` and writes nothing."""
        changes: dict[str, Any] = {
            "version": operations.c.version + 1,
            "updated_at": self._now_sql(),
        }
        if step is not None:
            changes["step"] = step
        if error is not None:
            changes["error"] = error
        if epoch is not None:
            changes["epoch"] = epoch
        if progress is not None:
            changes["progress"] = dict(progress)
        with self._tx() as conn:
            if fence is not None:
                if epoch is None:
                    raise ValueError("a fenced write needs the writer's epoch")
                self._fence(conn, fence, epoch)
            current = self._operation(conn, op_id)  # UnknownOperation if gone
            if current.version != expected_version:
                raise ConflictError("operations", op_id, expected_version, current.version)
            if status is not None:
                moved = check_move(
                    f"operation {op_id}", OPERATION_TRANSITIONS, current.status, status
                )
                changes["status"] = str(moved)
            updated = conn.execute(
                sa.update(operations)
                .where(operations.c.op_id == op_id, operations.c.version == expected_version)
                .values(changes)
            )
            if updated.rowcount != 1:
                actual = self._operation(conn, op_id).version  # UnknownOperation if gone
                raise ConflictError("operations", op_id, expected_version, actual)
            return self._operation(conn, op_id)

    def command_operation(self, op_id: str, command: str) -> OperationRecord:
        """Leave the operator's ``command`` on an active operation for the leader to
        carry out. No version check, so it never races the leader's progress writes;
        the last command wins. ``UnknownOperation`` if there is none;
        ``OperationFinished`` if it has finished."""
        with self._tx() as conn:
            updated = conn.execute(
                sa.update(operations)
                .where(
                    operations.c.op_id == op_id,
                    operations.c.status.in_(sorted(str(s) for s in ACTIVE)),
                )
                .values(command=command)
            )
            op = self._operation(conn, op_id)
            if updated.rowcount != 1:
                raise OperationFinished(op_id, op.status)
            return op

    def _fence(self, conn: Connection, lease: str, epoch: int) -> None:
        """LeaseLost unless lease ``lease`` is at ``epoch`` (row locked until the commit,
        so no takeover can slip between this check and the caller's write)."""
        row = conn.execute(
            sa.select(leases.c.holder, leases.c.epoch)
            .where(leases.c.name == lease)
            .with_for_update()
        ).one_or_none()
        if row is None or int(row.epoch) != epoch:
            found = 0 if row is None else int(row.epoch)
            raise LeaseLost(lease, f"the writer at epoch {epoch}", found)

    def _operation(self, conn: Connection, op_id: str) -> OperationRecord:
        row = conn.execute(sa.select(operations).where(operations.c.op_id == op_id)).one_or_none()
        if row is None:
            raise UnknownOperation(op_id)
        return OperationRecord.from_record(row._mapping)

    # --- appmaster state --------------------------------------------------------------

    def save_appmaster_state(
        self,
        cluster: str,
        service: str,
        state: Mapping[str, Any],
        *,
        expected_version: int | None,
        fence: tuple[str, int] | None = None,
    ) -> int:
        """Write one job's AppMaster state; return its new version.

        ``expected_version=None`` creates it and requires that none exists yet;
        otherwise the stored version must equal it. A mismatch raises ``ConflictError``
        (``expected`` 0 stands for "absent", ``actual`` None for "there is none").
        With ``fence`` (lease name, epoch) it is written only while that lease is at
        that epoch, in the same transaction (``LeaseLost`` otherwise): an AppMaster
        whose warm standby took over can no longer write.
        """
        key = f"{cluster}/{service}"
        now = self._now_sql()
        if expected_version is None:
            try:
                with self._tx() as conn:
                    if fence is not None:
                        self._fence(conn, *fence)
                    conn.execute(
                        sa.insert(appmaster_state).values(
                            cluster=cluster,
                            service=service,
                            state=dict(state),
                            version=1,
                            updated_at=now,
                        )
                    )
                    return 1
            except exc.IntegrityError:
                found = self.load_appmaster_state(cluster, service)
                actual = None if found is None else found[1]
                raise ConflictError("appmaster_state", key, 0, actual) from None
        where = (
            appmaster_state.c.cluster == cluster,
            appmaster_state.c.service == service,
        )
        with self._tx() as conn:
            if fence is not None:
                self._fence(conn, *fence)
            updated = conn.execute(
                sa.update(appmaster_state)
                .where(*where, appmaster_state.c.version == expected_version)
                .values(state=dict(state), version=expected_version + 1, updated_at=now)
            )
            if updated.rowcount != 1:
                actual = conn.execute(
                    sa.select(appmaster_state.c.version).where(*where)
                ).scalar_one_or_none()
                raise ConflictError("appmaster_state", key, expected_version, actual)
            return expected_version + 1

    def load_appmaster_state(self, cluster: str, service: str) -> tuple[dict[str, Any], int] | None:
        """``(state, version)`` of one job's AppMaster, or None if never saved."""
        with self._tx() as conn:
            return _appmaster_state(conn, cluster, service)

    def read_targets(
        self,
        targets: Iterable[tuple[str, str]],
        *,
        known: Mapping[tuple[str, str], int] | None = None,
    ) -> dict[tuple[str, str], Target]:
        """For each (cluster, service): its last instruction and its AppMaster's state,
        read in one transaction, a few statements per ``TARGETS_PER_STATEMENT`` targets
        (it was two statements per target). The leader reads every active operation's
        targets so. ``known``: state versions the caller holds already; a target still at
        its known version comes back with ``state_unchanged`` and no state body (not
        read, not decoded)."""
        wanted = list(dict.fromkeys(targets))
        if not wanted:
            return {}
        known = known or {}
        out: dict[tuple[str, str], Target] = {}
        with self._tx() as conn:
            last = _control.last_instructions(conn, wanted)
            versions = _appmaster_versions(conn, wanted)
            changed = [t for t, v in versions.items() if known.get(t) != v]
            bodies = _appmaster_states(conn, changed)
        for target in wanted:
            version = versions.get(target)
            if version is None:
                out[target] = Target(last.get(target), None, None)
            elif target in bodies:
                out[target] = Target(last.get(target), bodies[target][0], bodies[target][1])
            else:  # at the version the caller knows (or deleted since: read again next time)
                out[target] = Target(last.get(target), None, version, state_unchanged=True)
        return out

    # --- events -----------------------------------------------------------------------

    def append_event(
        self,
        kind: str,
        *,
        cluster: str | None = None,
        service: str | None = None,
        op_id: str | None = None,
        epoch: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Append to the audit log; return the event's id (ids grow with time)."""
        with self._tx() as conn:
            inserted = conn.execute(
                sa.insert(events).values(
                    at=self._now_sql(),
                    kind=kind,
                    cluster=cluster,
                    service=service,
                    op_id=op_id,
                    epoch=epoch,
                    detail=None if detail is None else dict(detail),
                )
            )
            key = inserted.inserted_primary_key
            if key is None:  # only for executemany, which this is not
                raise RuntimeError("the DB did not report the new event's id")
            return int(key[0])

    def list_events(
        self, *, service: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """The latest ``limit`` events, optionally of one service and one kind, newest
        last."""
        query = sa.select(events).order_by(events.c.id.desc()).limit(limit)
        if service is not None:
            query = query.where(events.c.service == service)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [EventRecord.from_record(row._mapping) for row in reversed(rows)]

    # --- leases (the state machine lives in _lease.py) --------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take lease ``name`` for ``ttl_s`` seconds, or None if another holder has it."""
        with self._tx() as conn:
            return _lease.acquire(conn, self._now_sql(), name, holder, ttl_s)

    def take_lease(self, name: str, holder: str, from_holder: str, ttl_s: float) -> Lease | None:
        """Take lease ``name`` from ``from_holder`` (known dead), expired or not; None
        if it is not ``from_holder``'s any more."""
        with self._tx() as conn:
            return _lease.take(conn, self._now_sql(), name, holder, from_holder, ttl_s)

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        """Extend ``lease`` by ``ttl_s`` from now; ``LeaseLost`` if it expired or moved."""
        with self._tx() as conn:
            return _lease.renew(conn, self._now_sql(), lease, ttl_s)

    def release_lease(self, lease: Lease) -> bool:
        """Free ``lease`` if still held at its epoch; False (no change) otherwise."""
        with self._tx() as conn:
            return _lease.release(conn, self._now_sql(), lease)

    def get_lease(self, name: str) -> Lease | None:
        with self._tx() as conn:
            return _lease.get(conn, name)

    # --- code packages and endpoints (in _catalog.py) ---------------------------------

    def put_package(self, data: bytes) -> str:
        """Store a code package (idempotent); returns its SHA-256 digest."""
        with self._tx() as conn:
            return _catalog.put_package(conn, self._now_sql(), data)

    def get_package(self, digest: str) -> bytes:
        """The package with ``digest``, verified; ``UnknownPackage`` if absent."""
        with self._tx() as conn:
            return _catalog.get_package(conn, digest)

    def upsert_endpoint(
        self, service: str, cluster: str, address: str, labels: dict[str, Any], ttl_s: float
    ) -> None:
        """Register or heartbeat a proxy endpoint; it lapses ``ttl_s`` after the last call."""
        with self._tx() as conn:
            _catalog.upsert_endpoint(
                conn, self._now_sql(), service, cluster, address, labels, ttl_s
            )

    def remove_endpoints(self, service: str, cluster: str, *, keep: set[str] | None = None) -> int:
        with self._tx() as conn:
            return _catalog.remove_endpoints(conn, service, cluster, keep)

    def remove_endpoint(self, service: str, cluster: str, address: str) -> bool:
        """Withdraw one proxy's endpoint (idempotent); True if it was listed."""
        with self._tx() as conn:
            return _catalog.remove_endpoint(conn, service, cluster, address)

    def remove_cluster_endpoints(self, cluster: str) -> int:
        """Withdraw every service's endpoints on ``cluster`` at once (cluster lost)."""
        with self._tx() as conn:
            return _catalog.remove_cluster_endpoints(conn, cluster)

    def list_endpoints(self, service: str) -> list[Endpoint]:
        """Unexpired endpoints of ``service`` on every cluster."""
        with self._tx() as conn:
            return _catalog.list_endpoints(conn, self._now_sql(), service)

    def list_endpoints_for(self, services: Iterable[str]) -> dict[str, list[Endpoint]]:
        """``list_endpoints`` for many services in one transaction (one statement per
        ``SERVICES_PER_STATEMENT`` services): a Keeper's read for every Watch stream it
        serves (``keeper._watchhub``). Every service given is a key of the result; none
        given reads nothing."""
        wanted = set(services)
        if not wanted:
            return {}
        with self._tx() as conn:
            return _catalog.list_endpoints_for(conn, self._now_sql(), wanted)

    # --- the Keepers' records (in _control.py) ----------------------------------------

    def register_cluster(self, record: ClusterRecord) -> None:
        with self._tx() as conn:
            _control.register_cluster(conn, self._now_sql(), record)

    def list_clusters(self) -> list[ClusterRecord]:
        with self._tx() as conn:
            return _control.list_clusters(conn)

    def remove_cluster(self, name: str) -> bool:
        """Take ``name`` out of the registry (idempotent); True if it was registered."""
        with self._tx() as conn:
            return _control.remove_cluster(conn, name)

    def heartbeat_appmaster(
        self, cluster: str, service: str, actor_name: str, epoch_seen: int
    ) -> None:
        with self._tx() as conn:
            _control.heartbeat_appmaster(
                conn, self._now_sql(), cluster, service, actor_name, epoch_seen
            )

    def heartbeat_appmasters(self, beats: Iterable[AppMasterBeat]) -> None:
        """Many AppMasters' heartbeats in one transaction and one statement (a Keeper's
        batch, ``keeper._linkhub``): each row as ``heartbeat_appmaster`` writes it, the
        last beat of a (cluster, service) winning. All are committed or none."""
        with self._tx() as conn:
            _control.heartbeat_appmasters(conn, self._now_sql(), beats)

    def list_appmasters(self, service: str | None = None) -> list[AppMasterRecord]:
        with self._tx() as conn:
            return _control.list_appmasters(conn, service)

    def add_instruction(
        self,
        cluster: str,
        service: str,
        op_id: str,
        epoch: int,
        body: dict[str, Any],
        *,
        fence: str | None = None,
    ) -> int:
        """Append an instruction for the AppMaster of (cluster, service); returns its id.

        With ``fence`` (a lease name), it is written only if that lease is still at
        ``epoch``, in the same transaction (``LeaseLost`` otherwise): a leader that was
        paused between its last check and this write cannot write at its old epoch."""
        with self._tx() as conn:
            if fence is not None:
                self._fence(conn, fence, epoch)
            return _control.add_instruction(
                conn, self._now_sql(), cluster, service, op_id, epoch, body
            )

    def list_instructions(
        self, cluster: str, service: str, *, after: int = 0, limit: int = 100
    ) -> list[Instruction]:
        with self._tx() as conn:
            return _control.list_instructions(conn, cluster, service, after=after, limit=limit)

    def list_instructions_for(
        self, after_by_target: Mapping[tuple[str, str], int], *, limit: int = 100
    ) -> dict[tuple[str, str], list[Instruction]]:
        """``list_instructions`` for many (cluster, service) targets, each after its own
        id, in one transaction (one statement per ``TARGETS_PER_STATEMENT`` targets): a
        Keeper's read for every link it holds open (``keeper._linkhub``). Every target
        given is a key of the result; none given reads nothing."""
        if not after_by_target:
            return {}
        with self._tx() as conn:
            return _control.list_instructions_for(conn, after_by_target, limit=limit)

    def read_instructions(
        self,
        since: int | None,
        behind: Mapping[tuple[str, str], int],
        *,
        limit: int = 100,
        new_limit: int = 10_000,
    ) -> InstructionsRead:
        """Every target's instructions above id ``since`` (a Keeper's global cursor:
        instruction ids commit in id order, see ``keeper._linkhub``) and, for the targets
        in ``behind``, ``list_instructions_for(behind)``, in one transaction. ``since``
        None: only the highest id there is, and the ``behind`` part."""
        with self._tx() as conn:
            return _control.read_instructions(conn, since, behind, limit=limit, new_limit=new_limit)

    def last_instruction(self, cluster: str, service: str) -> Instruction | None:
        with self._tx() as conn:
            return _control.last_instruction(conn, cluster, service)

    # --- request-rate history (in _rates.py) ------------------------------------------

    def record_rate_sample(self, service: str, cluster: str, at: float, rate: float) -> None:
        """Record ``service``'s rate on ``cluster`` (calls/s) over the step starting at
        ``at`` (epoch seconds); a step recorded again is replaced."""
        with self._tx() as conn:
            _rates.record_rate(conn, service, cluster, at, rate)

    def list_rate_samples(
        self, service: str, cluster: str, *, since: float = 0.0
    ) -> list[tuple[float, float]]:
        """(step start, rate) of ``service`` on ``cluster`` from ``since`` on, oldest first."""
        with self._tx() as conn:
            return _rates.list_rates(conn, service, cluster, since)

    # --- capacity floors (in _floors.py) -----------------------------------------------

    def set_capacity_floor(
        self, service: str, cluster: str, floor: int, reason: str, *, epoch: int, fence: str
    ) -> None:
        """Set the floor under ``service``'s autoscaled count on ``cluster`` (0: none),
        only while lease ``fence`` is at ``epoch`` (``LeaseLost`` otherwise)."""
        with self._tx() as conn:
            self._fence(conn, fence, epoch)
            record = CapacityFloor(service, cluster, floor, reason, epoch, 0.0)
            _floors.set_floor(conn, self._now_sql(), record)

    def list_capacity_floors(self, service: str | None = None) -> list[CapacityFloor]:
        """Every floor set (of ``service``), by service and cluster."""
        with self._tx() as conn:
            return _floors.list_floors(conn, service)

    def capacity_floor(self, service: str, cluster: str) -> CapacityFloor | None:
        """The floor under ``service`` on ``cluster``, None if never set."""
        found = [f for f in self.list_capacity_floors(service) if f.cluster == cluster]
        return found[0] if found else None

    # --- credentials (in _credentials.py) ----------------------------------------------

    def mint_credential(self, scope: str, cluster: str, service: str) -> str:
        """A new credential of ``scope`` for (cluster, service); every other live one of
        that target is revoked in the same transaction. Returns the token: the only time
        its secret exists outside the caller's file (the store keeps its hash)."""
        token, token_id, digest = _credentials.new_token()
        now = self._now_sql()
        with self._tx() as conn:
            _credentials.add(conn, now, token_id, digest, scope, cluster, service)
            _credentials.revoke(conn, now, cluster=cluster, service=service, keep=token_id)
        return token

    def verify_credential(self, token: str) -> CredentialRecord | None:
        """The credential ``token`` proves (check ``revoked``), None if it proves none."""
        with self._tx() as conn:
            return _credentials.verify(conn, token)

    def revoke_credentials(self, cluster: str, service: str) -> int:
        """Revoke every live credential of (cluster, service); returns how many."""
        with self._tx() as conn:
            return _credentials.revoke(conn, self._now_sql(), cluster=cluster, service=service)

    def list_credentials(self, *, include_revoked: bool = False) -> list[CredentialRecord]:
        with self._tx() as conn:
            return _credentials.listed(conn, include_revoked=include_revoked)

    # --- retention (in _retention.py) -------------------------------------------------

    def prune(self, older_than_s: float, *, batch: int = 500) -> dict[str, int]:
        """Delete history older than ``older_than_s`` seconds, at most ``batch`` rows per
        table, each table in its own short transaction; returns the rows deleted per table.

        Only what nothing needs any more goes: finished operations but each service's
        latest that got anywhere (the leader keeps its AppMasters by it); instructions
        their AppMaster has consumed, but the latest per target (the leader decides by
        it); events; code packages that no service, operation, AppMaster state or
        instruction left names (a package put again counts as new); request-rate samples
        (the forecast's history: ``retention_s`` must cover its seasons)."""
        if older_than_s < 0 or batch < 1:
            raise ValueError("prune needs older_than_s >= 0 and batch >= 1")
        cutoff = self._now_sql() - older_than_s
        deleted = {}
        for table, prune in _retention.PRUNERS:
            with self._tx() as conn:
                deleted[table] = prune(conn, cutoff, batch)
        return deleted


@dataclass(frozen=True)
class Target:
    """What the leader reads of one (cluster, service) to decide an operation's step."""

    last_instruction: Instruction | None
    state: dict[str, Any] | None
    """The AppMaster's saved state; None if it never saved one."""
    state_version: int | None = None
    """That state row's version (compare-and-set counter); None with no state."""
    state_unchanged: bool = False
    """The state is at the version the reader said it knew (``read_targets(known=)``):
    ``state`` is None and was not read."""


def _target_in(chunk: Sequence[tuple[str, str]]) -> sa.ColumnElement[bool]:
    c = appmaster_state.c
    return sa.tuple_(c.cluster, c.service).in_(chunk)


def _appmaster_versions(
    conn: Connection, targets: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The state row's version of each target that has one."""
    c = appmaster_state.c
    out: dict[tuple[str, str], int] = {}
    for start in range(0, len(targets), _control.TARGETS_PER_STATEMENT):
        chunk = targets[start : start + _control.TARGETS_PER_STATEMENT]
        query = sa.select(c.cluster, c.service, c.version).where(_target_in(chunk))
        for r in conn.execute(query).all():
            out[(r.cluster, r.service)] = int(r.version)
    return out


def _appmaster_states(
    conn: Connection, targets: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
    """The state (decoded) and version of each target that has one."""
    c = appmaster_state.c
    out: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
    for start in range(0, len(targets), _control.TARGETS_PER_STATEMENT):
        chunk = targets[start : start + _control.TARGETS_PER_STATEMENT]
        query = sa.select(c.cluster, c.service, c.state, c.version).where(_target_in(chunk))
        for r in conn.execute(query).all():
            out[(r.cluster, r.service)] = (dict(r.state), int(r.version))
    return out


def _appmaster_state(
    conn: Connection, cluster: str, service: str
) -> tuple[dict[str, Any], int] | None:
    row = conn.execute(
        sa.select(appmaster_state.c.state, appmaster_state.c.version).where(
            appmaster_state.c.cluster == cluster,
            appmaster_state.c.service == service,
        )
    ).one_or_none()
    return None if row is None else (dict(row.state), int(row.version))

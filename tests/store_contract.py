"""The store's contract, written once and run against every backend.

``tests/unit`` runs it on SQLite files, ``tests/integration/test_store_mysql.py`` on a
fresh MySQL/MariaDB database. Each check takes a ``Backend`` (a URL of an empty DB plus
a way to open Stores on it) and is named after the claim it checks.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ha_serving._errors import (
    ConflictError,
    IllegalTransition,
    LeaseLost,
    OperationFinished,
    UnknownService,
)
from ha_serving._status import ACTIVE, OperationStatus
from ha_serving.store import (
    SCHEMA_VERSION,
    AlreadyExists,
    AppMasterBeat,
    ClusterRecord,
    Lease,
    OperationRecord,
    SchemaTooNew,
    Store,
    UnknownOperation,
    UnknownPackage,
)
from ha_serving.util.clock import FakeClock

T = TypeVar("T")


@dataclass
class Backend:
    """An empty database and the Stores a check opened on it (closed at teardown)."""

    url: str
    stores: list[Store] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self, clock: FakeClock | None = None) -> Store:
        store = Store.connect(self.url, clock=clock)
        with self._lock:
            self.stores.append(store)
        return store

    def execute(self, sql: str, **params: Any) -> None:
        """Run raw SQL behind the Store's back (to fake a newer schema, say)."""
        engine = sa.create_engine(self.url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql), params)
        finally:
            engine.dispose()

    def close(self) -> None:
        for store in self.stores:
            store.close()


def race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(0..n-1)`` in n threads released at once; re-raise the first failure."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as error:  # handed to the main thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


RACERS = 8

# --- schema and migrations ---------------------------------------------------------------


def fresh_db_is_migrated_to_schema_version(b: Backend) -> None:
    assert b.connect().schema_version() == SCHEMA_VERSION


def second_connect_migrates_nothing_and_keeps_data(b: Backend) -> None:
    b.connect().create_service("kept", {"replicas": 1})
    again = b.connect()
    assert again.schema_version() == SCHEMA_VERSION
    assert again.get_service("kept").spec == {"replicas": 1}


def concurrent_first_connects_all_succeed(b: Backend) -> None:
    stores = race(4, lambda _: b.connect())
    assert {s.schema_version() for s in stores} == {SCHEMA_VERSION}


def db_with_newer_schema_is_refused(b: Backend) -> None:
    b.connect()
    b.execute("UPDATE schema_version SET version = :v", v=SCHEMA_VERSION + 1)
    with pytest.raises(SchemaTooNew) as caught:
        b.connect()
    assert (caught.value.found, caught.value.known) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert "upgrade" in str(caught.value)


# --- services ----------------------------------------------------------------------------


def created_service_starts_at_version_1(b: Backend) -> None:
    store = b.connect()
    created = store.create_service("echo", {"replicas": 2, "env": {"A": "é"}})
    assert (created.version, created.spec_version) == (1, 1)
    assert store.get_service("echo") == created
    assert created.spec == {"replicas": 2, "env": {"A": "é"}}


def creating_an_existing_service_raises_already_exists(b: Backend) -> None:
    store = b.connect()
    store.create_service("echo", {"replicas": 1})
    with pytest.raises(AlreadyExists):
        store.create_service("echo", {"replicas": 9})
    assert store.get_service("echo").spec == {"replicas": 1}


def service_names_are_case_sensitive(b: Backend) -> None:
    store = b.connect()
    store.create_service("Echo", {"n": 1})
    store.create_service("echo", {"n": 2})
    assert [s.name for s in store.list_services()] == ["Echo", "echo"]


def unknown_service_raises_unknown_service(b: Backend) -> None:
    store = b.connect()
    with pytest.raises(UnknownService):
        store.get_service("nope")
    with pytest.raises(UnknownService):
        store.update_service("nope", {}, expected_version=1)


def update_service_bumps_version_and_spec_version(b: Backend) -> None:
    store = b.connect()
    store.create_service("echo", {"replicas": 1})
    updated = store.update_service("echo", {"replicas": 3}, expected_version=1)
    assert (updated.version, updated.spec_version, updated.spec) == (2, 2, {"replicas": 3})
    assert store.get_service("echo") == updated


def update_service_with_stale_version_raises_conflict(b: Backend) -> None:
    first, second = b.connect(), b.connect()
    first.create_service("echo", {"replicas": 1})
    first.update_service("echo", {"replicas": 2}, expected_version=1)
    with pytest.raises(ConflictError) as caught:
        second.update_service("echo", {"replicas": 5}, expected_version=1)
    assert (caught.value.table, caught.value.expected, caught.value.actual) == ("services", 1, 2)
    assert second.get_service("echo").spec == {"replicas": 2}


def concurrent_service_updates_exactly_one_wins(b: Backend) -> None:
    b.connect().create_service("echo", {"replicas": 1})
    stores = [b.connect() for _ in range(RACERS)]

    def update(i: int) -> bool:
        try:
            stores[i].update_service("echo", {"replicas": i}, expected_version=1)
        except ConflictError:
            return False
        return True

    assert sum(race(RACERS, update)) == 1
    assert stores[0].get_service("echo").version == 2


# --- operations --------------------------------------------------------------------------


def _op(op_id: str = "op-1", service: str = "echo", **kw: Any) -> OperationRecord:
    return OperationRecord(
        op_id=op_id, service=service, kind="update", plan={"steps": [1, 2]}, **kw
    )


def finish_operation(store: Store, op_id: str, status: str) -> OperationRecord:
    """Move a stored operation to ``status`` the way the leader does: a pending one runs
    first (an operation never finishes straight from pending, except as failed or
    superseded)."""
    op = store.get_operation(op_id)
    if op.status == "pending" and status not in ("running", "failed", "superseded"):
        op = store.advance_operation(op_id, expected_version=op.version, status="running")
    return store.advance_operation(op_id, expected_version=op.version, status=status)


def create_operation_is_idempotent_for_the_same_request(b: Backend) -> None:
    store = b.connect()
    created = store.create_operation(_op())
    assert (created.version, created.step, created.status) == (1, 0, "pending")
    progressed = store.advance_operation("op-1", expected_version=1, step=1, status="running")
    assert store.create_operation(_op()) == progressed
    assert len(store.list_operations()) == 1


def create_operation_with_a_different_request_under_the_same_id_is_refused(b: Backend) -> None:
    store = b.connect()
    store.create_operation(_op())
    with pytest.raises(AlreadyExists):
        store.create_operation(_op(service="other"))


def advance_operation_is_compare_and_set(b: Backend) -> None:
    store = b.connect()
    store.create_operation(_op())
    advanced = store.advance_operation("op-1", expected_version=1, step=1, epoch=7)
    assert (advanced.version, advanced.step, advanced.epoch, advanced.status) == (
        2,
        1,
        7,
        "pending",
    )
    with pytest.raises(ConflictError) as caught:
        store.advance_operation("op-1", expected_version=1, step=2)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert store.get_operation("op-1") == advanced


def recorded_operation_error_survives_later_status_changes(b: Backend) -> None:
    store = b.connect()
    store.create_operation(_op())
    store.advance_operation("op-1", expected_version=1, status="running", error="step 1: boom")
    done = store.advance_operation("op-1", expected_version=2, status="rolled_back")
    assert (done.status, done.error) == ("rolled_back", "step 1: boom")


def operation_status_moves_only_by_its_table(b: Backend) -> None:
    """A status its table (``ha_serving._status``) does not allow from the stored one is
    refused with ``IllegalTransition`` and writes nothing: a finished operation is never
    reopened, a pending one does not succeed without having run, and a status that is
    none is no move at all."""
    store = b.connect()
    store.create_operation(_op())
    for illegal in ("succeeded", "aborted", "rolled_back", "done"):
        with pytest.raises(IllegalTransition, match=f"operation op-1: .*pending -> {illegal}"):
            store.advance_operation("op-1", expected_version=1, status=illegal, step=3)
    assert store.get_operation("op-1").version == 1  # nothing written, not even the step
    ran = store.advance_operation("op-1", expected_version=1, status="running")
    again = store.advance_operation("op-1", expected_version=2, status="running", step=1)
    done = store.advance_operation("op-1", expected_version=again.version, status="succeeded")
    assert (ran.status, done.status) == (OperationStatus.RUNNING, OperationStatus.SUCCEEDED)
    for reopen in ("pending", "running", "failed", "superseded"):
        with pytest.raises(IllegalTransition, match=f"succeeded -> {reopen}"):
            store.advance_operation("op-1", expected_version=done.version, status=reopen)
    assert store.get_operation("op-1") == done


def unknown_operation_raises_unknown_operation(b: Backend) -> None:
    store = b.connect()
    with pytest.raises(UnknownOperation):
        store.get_operation("nope")
    with pytest.raises(UnknownOperation):
        store.advance_operation("nope", expected_version=1, step=1)


def list_operations_filters_by_service_and_status(b: Backend) -> None:
    store = b.connect()
    store.create_operation(_op("a", "echo"))
    store.create_operation(_op("b", "echo"))
    store.create_operation(_op("c", "other"))
    store.advance_operation("b", expected_version=1, status="running")
    assert [o.op_id for o in store.list_operations(service="echo")] == ["a", "b"]
    assert [o.op_id for o in store.list_operations(status="pending")] == ["a", "c"]
    assert [o.op_id for o in store.list_operations("echo", "running")] == ["b"]
    assert [o.op_id for o in store.list_operations(statuses=("pending", "running"))] == [
        "a",
        "b",
        "c",
    ]
    assert [o.op_id for o in store.list_operations(statuses=ACTIVE)] == ["a", "b", "c"]
    assert [o.op_id for o in store.list_operations(statuses={"running"})] == ["b"]
    assert store.list_operations(statuses=()) == []


def latest_operations_gives_each_services_newest_passing_over_a_status(b: Backend) -> None:
    """The leader's AppMaster targets: one row per service, the newest by creation (op_id
    breaks a tie), whatever the history's length; superseded ones passed over."""
    clock = FakeClock()
    store = b.connect(clock)
    for op_id in ("a1", "a2", "a3"):
        store.create_operation(_op(op_id, "echo"))
        clock.advance(1)
    store.create_operation(_op("b2", "other"))
    store.create_operation(_op("b1", "other"))  # same created_at: b2 wins by op_id
    store.advance_operation("a3", expected_version=1, status="superseded")
    latest = store.latest_operations(exclude_status="superseded")
    assert [(o.service, o.op_id) for o in latest] == [("echo", "a2"), ("other", "b2")]
    assert latest[0].plan == {"steps": [1, 2]}  # whole records, JSON decoded
    assert [o.op_id for o in store.latest_operations()] == ["a3", "b2"]


# --- appmaster state ---------------------------------------------------------------------


def appmaster_state_round_trips_with_versions(b: Backend) -> None:
    store = b.connect()
    assert store.load_appmaster_state("c1", "echo") is None
    assert store.save_appmaster_state("c1", "echo", {"step": 0}, expected_version=None) == 1
    assert store.save_appmaster_state("c1", "echo", {"step": 1}, expected_version=1) == 2
    assert store.load_appmaster_state("c1", "echo") == ({"step": 1}, 2)
    assert store.load_appmaster_state("c2", "echo") is None


def appmaster_state_create_when_present_raises_conflict(b: Backend) -> None:
    store = b.connect()
    store.save_appmaster_state("c1", "echo", {"step": 0}, expected_version=None)
    with pytest.raises(ConflictError) as caught:
        store.save_appmaster_state("c1", "echo", {"step": 9}, expected_version=None)
    assert (caught.value.expected, caught.value.actual) == (0, 1)


def appmaster_state_stale_or_missing_version_raises_conflict(b: Backend) -> None:
    store = b.connect()
    with pytest.raises(ConflictError) as missing:
        store.save_appmaster_state("c1", "echo", {"step": 0}, expected_version=1)
    assert missing.value.actual is None
    store.save_appmaster_state("c1", "echo", {"step": 0}, expected_version=None)
    store.save_appmaster_state("c1", "echo", {"step": 1}, expected_version=1)
    with pytest.raises(ConflictError) as stale:
        store.save_appmaster_state("c1", "echo", {"step": 7}, expected_version=1)
    assert (stale.value.expected, stale.value.actual) == (1, 2)
    assert store.load_appmaster_state("c1", "echo") == ({"step": 1}, 2)


# --- events and time ---------------------------------------------------------------------


def events_list_newest_last_limited_and_filtered(b: Backend) -> None:
    store = b.connect()
    ids = [
        store.append_event("deploy", service="echo" if i % 2 else "other", epoch=i)
        for i in range(6)
    ]
    assert ids == sorted(ids)
    store.append_event("note", cluster="c1", op_id="op-1", detail={"why": "test"})
    latest = store.list_events(limit=3)
    assert [e.kind for e in latest] == ["deploy", "deploy", "note"]
    assert latest[-1].detail == {"why": "test"}
    assert (latest[-1].cluster, latest[-1].op_id, latest[-1].epoch) == ("c1", "op-1", None)
    assert [e.epoch for e in store.list_events(service="echo")] == [1, 3, 5]


def injected_clock_stamps_rows(b: Backend) -> None:
    clock = FakeClock(start=5_000.0)
    store = b.connect(clock=clock)
    assert store.now() == 5_000.0
    store.create_service("echo", {})
    clock.advance(7.5)
    updated = store.update_service("echo", {"n": 1}, expected_version=1)
    assert (updated.created_at, updated.updated_at) == (5_000.0, 5_007.5)


def db_clock_reads_utc_epoch_seconds(b: Backend) -> None:
    """The DB's clock agrees with this machine's within seconds (no timezone offset)."""
    store = b.connect()
    assert abs(store.now() - time.time()) < 5.0
    assert store.ping()


STORE_CHECKS: list[Callable[[Backend], None]] = [
    fresh_db_is_migrated_to_schema_version,
    second_connect_migrates_nothing_and_keeps_data,
    concurrent_first_connects_all_succeed,
    db_with_newer_schema_is_refused,
    created_service_starts_at_version_1,
    creating_an_existing_service_raises_already_exists,
    service_names_are_case_sensitive,
    unknown_service_raises_unknown_service,
    update_service_bumps_version_and_spec_version,
    update_service_with_stale_version_raises_conflict,
    concurrent_service_updates_exactly_one_wins,
    create_operation_is_idempotent_for_the_same_request,
    create_operation_with_a_different_request_under_the_same_id_is_refused,
    advance_operation_is_compare_and_set,
    recorded_operation_error_survives_later_status_changes,
    operation_status_moves_only_by_its_table,
    unknown_operation_raises_unknown_operation,
    list_operations_filters_by_service_and_status,
    appmaster_state_round_trips_with_versions,
    appmaster_state_create_when_present_raises_conflict,
    appmaster_state_stale_or_missing_version_raises_conflict,
    events_list_newest_last_limited_and_filtered,
    injected_clock_stamps_rows,
    db_clock_reads_utc_epoch_seconds,
]


# --- leases ------------------------------------------------------------------------------

LEASE = "keeper-leader"


def first_acquire_creates_epoch_1(b: Backend) -> None:
    clock = FakeClock()
    store = b.connect(clock=clock)
    assert store.get_lease(LEASE) is None
    lease = store.acquire_lease(LEASE, "k1", 10.0)
    assert lease == Lease(LEASE, "k1", 1, clock.now() + 10.0)
    assert store.get_lease(LEASE) == lease


def held_lease_is_refused_to_another_holder(b: Backend) -> None:
    clock = FakeClock()
    store = b.connect(clock=clock)
    lease = store.acquire_lease(LEASE, "k1", 10.0)
    clock.advance(9.5)
    assert store.acquire_lease(LEASE, "k2", 10.0) is None
    assert store.get_lease(LEASE) == lease


def holder_reacquiring_gets_the_same_lease_without_epoch_bump(b: Backend) -> None:
    clock = FakeClock()
    store = b.connect(clock=clock)
    lease = store.acquire_lease(LEASE, "k1", 10.0)
    clock.advance(3.0)
    assert store.acquire_lease(LEASE, "k1", 10.0) == lease


def lease_expires_exactly_at_expires_at(b: Backend) -> None:
    """At now == expires_at the lease is expired: not renewable, takeable with epoch+1."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    lease = store.acquire_lease(LEASE, "k1", 10.0)
    assert lease is not None
    clock.advance(10.0)
    with pytest.raises(LeaseLost):
        store.renew_lease(lease, 10.0)
    taken = store.acquire_lease(LEASE, "k2", 10.0)
    assert taken == Lease(LEASE, "k2", 2, clock.now() + 10.0)


def expired_lease_reacquired_by_its_old_holder_gets_a_new_epoch(b: Backend) -> None:
    clock = FakeClock()
    store = b.connect(clock=clock)
    store.acquire_lease(LEASE, "k1", 1.0)
    clock.advance(1.5)
    again = store.acquire_lease(LEASE, "k1", 1.0)
    assert again is not None
    assert again.epoch == 2


def renew_extends_from_now_at_the_same_epoch(b: Backend) -> None:
    clock = FakeClock()
    store = b.connect(clock=clock)
    lease = store.acquire_lease(LEASE, "k1", 10.0)
    assert lease is not None
    clock.advance(4.0)
    renewed = store.renew_lease(lease, 20.0)
    assert renewed == Lease(LEASE, "k1", 1, clock.now() + 20.0)
    assert store.renew_lease(lease, 5.0).expires_at == clock.now() + 5.0  # epoch is the key


def stale_holder_cannot_renew_or_release_after_takeover(b: Backend) -> None:
    clock = FakeClock()
    store = b.connect(clock=clock)
    old = store.acquire_lease(LEASE, "k1", 1.0)
    assert old is not None
    clock.advance(2.0)
    new = store.acquire_lease(LEASE, "k2", 10.0)
    with pytest.raises(LeaseLost) as caught:
        store.renew_lease(old, 10.0)
    assert (caught.value.name, caught.value.holder, caught.value.epoch) == (LEASE, "k1", 1)
    assert store.release_lease(old) is False
    assert store.get_lease(LEASE) == new


def a_handle_from_an_older_epoch_of_the_same_holder_is_stale(b: Backend) -> None:
    """After k1's lease expired and k1 took it again, k1's old handle can neither renew
    nor release the new lease: the epoch, not the holder name, identifies a tenure."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    old = store.acquire_lease(LEASE, "k1", 1.0)
    assert old is not None
    clock.advance(1.0)
    new = store.acquire_lease(LEASE, "k1", 10.0)
    assert new is not None
    assert new.epoch == old.epoch + 1
    with pytest.raises(LeaseLost):
        store.renew_lease(old, 10.0)
    assert store.release_lease(old) is False
    assert store.get_lease(LEASE) == new


def release_frees_the_lease_and_the_next_acquire_bumps_the_epoch(b: Backend) -> None:
    clock = FakeClock()
    store = b.connect(clock=clock)
    lease = store.acquire_lease(LEASE, "k1", 10.0)
    assert lease is not None
    assert store.release_lease(lease) is True
    freed = store.get_lease(LEASE)
    assert freed is not None
    assert (freed.holder, freed.epoch, freed.held_at(clock.now())) == (None, 1, False)
    with pytest.raises(LeaseLost):
        store.renew_lease(lease, 10.0)
    assert store.release_lease(lease) is False
    again = store.acquire_lease(LEASE, "k1", 10.0)
    assert again is not None
    assert again.epoch == 2


def nonpositive_ttl_is_rejected(b: Backend) -> None:
    store = b.connect()
    for ttl in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            store.acquire_lease(LEASE, "k1", ttl)


def concurrent_acquirers_of_an_expired_lease_exactly_one_wins(b: Backend) -> None:
    """N Stores race for an expired lease: one wins, the epoch grows by exactly one."""
    clock = FakeClock()
    first = b.connect(clock=clock)
    old = first.acquire_lease(LEASE, "old", 1.0)
    assert old is not None
    clock.advance(5.0)
    stores = [b.connect(clock=clock) for _ in range(RACERS)]
    results = race(RACERS, lambda i: stores[i].acquire_lease(LEASE, f"k{i}", 10.0))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].epoch == old.epoch + 1
    assert first.get_lease(LEASE) == winners[0]


def concurrent_acquirers_of_a_new_lease_exactly_one_wins(b: Backend) -> None:
    """N Stores race to create a lease row (DB clock): one wins with epoch 1."""
    stores = [b.connect() for _ in range(RACERS)]
    results = race(RACERS, lambda i: stores[i].acquire_lease(LEASE, f"k{i}", 30.0))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].epoch == 1
    assert stores[0].get_lease(LEASE) == winners[0]


def db_clock_expiry_lets_the_next_holder_in(b: Backend) -> None:
    """Without an injected clock, a 1 s lease expires by the DB's clock; then another
    holder takes it at epoch+1 and the old holder can no longer renew."""
    store = b.connect()
    lease = store.acquire_lease(LEASE, "k1", 1.0)
    assert lease is not None
    assert store.acquire_lease(LEASE, "k2", 1.0) is None
    give_up = time.monotonic() + 10.0
    while store.now() <= lease.expires_at:
        assert time.monotonic() < give_up, "the DB clock did not pass expires_at"
        time.sleep(0.05)
    with pytest.raises(LeaseLost):
        store.renew_lease(lease, 1.0)
    taken = store.acquire_lease(LEASE, "k2", 1.0)
    assert taken is not None
    assert (taken.holder, taken.epoch) == ("k2", lease.epoch + 1)


LEASE_CHECKS: list[Callable[[Backend], None]] = [
    first_acquire_creates_epoch_1,
    held_lease_is_refused_to_another_holder,
    holder_reacquiring_gets_the_same_lease_without_epoch_bump,
    lease_expires_exactly_at_expires_at,
    expired_lease_reacquired_by_its_old_holder_gets_a_new_epoch,
    renew_extends_from_now_at_the_same_epoch,
    stale_holder_cannot_renew_or_release_after_takeover,
    a_handle_from_an_older_epoch_of_the_same_holder_is_stale,
    release_frees_the_lease_and_the_next_acquire_bumps_the_epoch,
    nonpositive_ttl_is_rejected,
    concurrent_acquirers_of_an_expired_lease_exactly_one_wins,
    concurrent_acquirers_of_a_new_lease_exactly_one_wins,
    db_clock_expiry_lets_the_next_holder_in,
]


# --- leases against a model, in fake time ------------------------------------------------


@dataclass
class LeaseModel:
    """What the lease row should be, by the transition table in ``_lease.py``."""

    holder: str | None = None
    epoch: int = 0  # 0: no row yet
    expires_at: float = 0.0

    def held_at(self, now: float) -> bool:
        return self.holder is not None and now < self.expires_at

    def acquire(self, holder: str, ttl: float, now: float) -> bool:
        if self.held_at(now):
            return self.holder == holder
        self.holder, self.epoch, self.expires_at = holder, self.epoch + 1, now + ttl
        return True

    def renew(self, holder: str, epoch: int, ttl: float, now: float) -> bool:
        if self.held_at(now) and (self.holder, self.epoch) == (holder, epoch):
            self.expires_at = now + ttl
            return True
        return False

    def release(self, holder: str, epoch: int, now: float) -> bool:
        if (self.holder, self.epoch) == (holder, epoch):
            self.holder, self.expires_at = None, now
            return True
        return False

    def as_lease(self, name: str) -> Lease | None:
        return None if self.epoch == 0 else Lease(name, self.holder, self.epoch, self.expires_at)


HOLDERS = st.sampled_from(["k1", "k2", "k3"])
TTLS = st.sampled_from([1.0, 2.0, 5.0])
TIME_STEPS = st.sampled_from([0.5, 1.0, 2.0, 5.0])  # exact binary fractions: ties do happen


def lease_model_machine(b: Backend) -> type[RuleBasedStateMachine]:
    """A state machine driving one lease in fake time and checking it against LeaseModel."""

    class LeaseModelMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock()
            self.store = b.connect(clock=self.clock)
            self.name = f"lease-{uuid.uuid4().hex[:12]}"
            self.model = LeaseModel()
            self.believed: dict[str, Lease] = {}  # each holder's latest lease
            self.handles: list[Lease] = []  # every lease ever returned, stale ones too
            self.holder_at_epoch: dict[int, str] = {}
            self.max_epoch = 0

        def _got(self, lease: Lease) -> None:
            assert lease.holder is not None
            self.believed[lease.holder] = lease
            self.handles.append(lease)
            assert self.holder_at_epoch.setdefault(lease.epoch, lease.holder) == lease.holder

        @rule(holder=HOLDERS, ttl=TTLS)
        def acquire(self, holder: str, ttl: float) -> None:
            expect_success = self.model.acquire(holder, ttl, self.clock.now())
            got = self.store.acquire_lease(self.name, holder, ttl)
            if not expect_success:
                assert got is None
                return
            assert got is not None
            assert got == self.model.as_lease(self.name)
            self._got(got)

        @precondition(lambda self: bool(self.handles))
        @rule(data=st.data(), ttl=TTLS)
        def renew(self, data: st.DataObject, ttl: float) -> None:
            lease = data.draw(st.sampled_from(self.handles))
            assert lease.holder is not None
            if self.model.renew(lease.holder, lease.epoch, ttl, self.clock.now()):
                renewed = self.store.renew_lease(lease, ttl)
                assert renewed == self.model.as_lease(self.name)
                self._got(renewed)
            else:
                with pytest.raises(LeaseLost):
                    self.store.renew_lease(lease, ttl)

        @precondition(lambda self: bool(self.handles))
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            lease = data.draw(st.sampled_from(self.handles))
            assert lease.holder is not None
            expected = self.model.release(lease.holder, lease.epoch, self.clock.now())
            assert self.store.release_lease(lease) is expected
            if expected:
                del self.believed[lease.holder]

        @rule(seconds=TIME_STEPS)
        def advance_time(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @invariant()
        def row_matches_model(self) -> None:
            assert self.store.get_lease(self.name) == self.model.as_lease(self.name)

        @invariant()
        def at_most_one_holder_believes_it_holds_the_lease(self) -> None:
            now = self.clock.now()
            assert sum(lease.held_at(now) for lease in self.believed.values()) <= 1

        @invariant()
        def epochs_only_grow(self) -> None:
            assert self.model.epoch >= self.max_epoch
            self.max_epoch = self.model.epoch

        def teardown(self) -> None:
            self.store.close()

    return LeaseModelMachine


def lease_matches_model_in_fake_time(b: Backend, *, max_examples: int, steps: int) -> None:
    """Random acquire/renew/release/advance sequences by 3 holders match LeaseModel; never
    two holders at one epoch, never two unexpired believers, epochs only grow."""
    run_state_machine_as_test(
        lease_model_machine(b),
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- code packages and endpoints ------------------------------------------------------


def packages_are_content_addressed(b: Backend) -> None:
    """A package is stored once per content and read back verified, by its SHA-256."""
    store = b.connect()
    data = b"PK\x03\x04 some zip bytes" * 1000
    digest = store.put_package(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put_package(data) == digest  # idempotent
    assert store.get_package(digest) == data
    with pytest.raises(UnknownPackage):
        store.get_package("0" * 64)


def endpoints_lapse_without_heartbeat(b: Backend) -> None:
    """An endpoint is listed until its TTL passes; a heartbeat extends it; removal is exact
    (of all but some addresses, or of one address)."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {"zone": "z1"}, ttl_s=10)
    store.upsert_endpoint("echo", "b", "127.0.2.2:5000", {"zone": "z2"}, ttl_s=10)
    assert [e.address for e in store.list_endpoints("echo")] == [
        "127.0.1.2:5000",
        "127.0.2.2:5000",
    ]
    clock.advance(6)
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {"zone": "z1"}, ttl_s=10)
    clock.advance(6)
    assert [e.cluster for e in store.list_endpoints("echo")] == ["a"]
    assert store.list_endpoints("echo")[0].labels == {"zone": "z1"}
    store.upsert_endpoint("echo", "a", "127.0.1.2:6000", {}, ttl_s=10)
    assert store.remove_endpoints("echo", "a", keep={"127.0.1.2:6000"}) == 1
    assert [e.address for e in store.list_endpoints("echo")] == ["127.0.1.2:6000"]
    store.upsert_endpoint("echo", "b", "127.0.2.2:5000", {}, ttl_s=10)
    assert store.remove_endpoint("echo", "a", "127.0.2.2:5000") is False  # other cluster's
    assert store.remove_endpoint("echo", "a", "127.0.1.2:6000") is True
    assert store.remove_endpoint("echo", "a", "127.0.1.2:6000") is False  # idempotent
    assert [e.address for e in store.list_endpoints("echo")] == ["127.0.2.2:5000"]


def batched_endpoint_reads_give_each_service_what_its_own_read_gives(b: Backend) -> None:
    """A Keeper's one read for all its Watch streams: per service, the unexpired
    endpoints by cluster then address, as ``list_endpoints`` gives them, and every
    service asked for is in the answer, with none (``[]``) if it has none or all lapsed."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    store.upsert_endpoint("echo", "b", "127.0.2.2:5000", {"zone": "z2"}, ttl_s=10)
    store.upsert_endpoint("echo", "a", "127.0.1.3:5000", {}, ttl_s=10)
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {"zone": "z1"}, ttl_s=10)
    store.upsert_endpoint("other", "a", "127.0.1.9:5000", {}, ttl_s=3)
    store.upsert_endpoint("gone", "a", "127.0.1.8:5000", {}, ttl_s=3)
    store.upsert_endpoint("unasked", "a", "127.0.1.7:5000", {}, ttl_s=10)
    clock.advance(2)
    store.upsert_endpoint("other", "a", "127.0.1.9:5000", {}, ttl_s=3)
    clock.advance(2)  # gone's lease lapsed; other's was renewed
    services = ["echo", "other", "gone", "none"]
    batched = store.list_endpoints_for(services)
    assert set(batched) == set(services)
    for service in services:
        assert batched[service] == store.list_endpoints(service), service
    assert [(e.cluster, e.address) for e in batched["echo"]] == [
        ("a", "127.0.1.2:5000"),
        ("a", "127.0.1.3:5000"),
        ("b", "127.0.2.2:5000"),
    ]
    assert [e.address for e in batched["other"]] == ["127.0.1.9:5000"]
    assert batched["gone"] == batched["none"] == []
    assert store.list_endpoints_for([]) == {}


STORE_CHECKS += [
    packages_are_content_addressed,
    endpoints_lapse_without_heartbeat,
    batched_endpoint_reads_give_each_service_what_its_own_read_gives,
]


def keeper_records_round_trip(b: Backend) -> None:
    """Clusters upsert by name; AppMaster heartbeats upsert; instructions stay in order."""
    store = b.connect()
    store.register_cluster(ClusterRecord("a", "127.0.1.1:12000", "http://x", "z1"))
    store.register_cluster(ClusterRecord("a", "127.0.1.1:12001", None, "z2"))
    assert store.list_clusters() == [ClusterRecord("a", "127.0.1.1:12001", None, "z2")]
    store.heartbeat_appmaster("a", "echo", "echo-appmaster", 3)
    store.heartbeat_appmaster("a", "echo", "echo-appmaster", 4)
    [am] = store.list_appmasters("echo")
    assert (am.cluster, am.epoch_seen) == ("a", 4)
    first = store.add_instruction("a", "echo", "op-1", 3, {"spec": {"n": 1}})
    second = store.add_instruction("a", "echo", "op-2", 4, {"spec": {"n": 2}})
    store.add_instruction("b", "echo", "op-3", 4, {})
    got = store.list_instructions("a", "echo")
    assert [(i.id, i.op_id, i.epoch) for i in got] == [(first, "op-1", 3), (second, "op-2", 4)]
    assert [i.op_id for i in store.list_instructions("a", "echo", after=first)] == ["op-2"]
    last = store.last_instruction("a", "echo")
    assert last is not None
    assert last.body == {"spec": {"n": 2}}


STORE_CHECKS.append(keeper_records_round_trip)


def batched_instruction_reads_give_each_target_what_its_own_read_gives(b: Backend) -> None:
    """A Keeper's one read for all its links: per (cluster, service), the instructions
    after that target's own id, oldest first, at most ``limit`` - as many single reads
    would give - and every target asked for is in the answer, even with none."""
    store = b.connect()
    ids: dict[tuple[str, str], list[int]] = {
        ("a", "echo"): [],
        ("b", "echo"): [],
        ("a", "other"): [],
    }
    for n in range(4):  # interleaved: each target's ids have gaps
        for target, made in ids.items():
            made.append(store.add_instruction(*target, f"op-{n}", 1, {"n": n}))
    after = {
        ("a", "echo"): 0,
        ("b", "echo"): ids[("b", "echo")][1],
        ("a", "other"): ids[("a", "other")][3],
        ("c", "echo"): 0,
    }
    batched = store.list_instructions_for(after)
    assert set(batched) == set(after)
    for target, since in after.items():
        assert batched[target] == store.list_instructions(*target, after=since), target
    assert [i.id for i in batched[("a", "echo")]] == ids[("a", "echo")]
    assert [i.id for i in batched[("b", "echo")]] == ids[("b", "echo")][2:]
    assert batched[("a", "other")] == batched[("c", "echo")] == []
    limited = store.list_instructions_for(after, limit=2)
    for target, since in after.items():
        assert limited[target] == store.list_instructions(*target, after=since, limit=2)
    assert [i.id for i in limited[("a", "echo")]] == ids[("a", "echo")][:2]
    assert store.list_instructions_for({}) == {}


def instruction_reads_past_a_cursor_give_every_targets_new_rows_in_id_order(
    b: Backend,
) -> None:
    """``read_instructions``: with no cursor, only the highest id (and the targets asked
    for); past a cursor, every target's rows above it, oldest first, at most
    ``new_limit`` (the cursor then the last one read); the targets asked for as
    ``list_instructions_for`` gives them, from the same transaction."""
    store = b.connect()
    empty = store.read_instructions(None, {})
    assert (empty.high, empty.new, empty.behind) == (0, (), {})
    first = store.add_instruction("a", "echo", "op-1", 1, {"n": 1})
    second = store.add_instruction("b", "echo", "op-2", 1, {"n": 2})
    start = store.read_instructions(None, {("a", "echo"): 0})
    assert (start.high, start.new) == (second, ())
    assert [i.id for i in start.behind[("a", "echo")]] == [first]
    third = store.add_instruction("a", "other", "op-3", 1, {"n": 3})
    fourth = store.add_instruction("a", "echo", "op-4", 2, {"n": 4})
    past = store.read_instructions(second, {("b", "echo"): 0})
    assert past.high == fourth
    assert [(i.id, i.cluster, i.service, i.op_id, i.epoch, i.body) for i in past.new] == [
        (third, "a", "other", "op-3", 1, {"n": 3}),
        (fourth, "a", "echo", "op-4", 2, {"n": 4}),
    ]
    assert past.behind == store.list_instructions_for({("b", "echo"): 0})
    some = store.read_instructions(first, {}, new_limit=2)
    assert ([i.id for i in some.new], some.high) == ([second, third], third)
    assert store.read_instructions(fourth, {}) == store.read_instructions(fourth, {})
    assert store.read_instructions(fourth, {}).new == ()


def batched_heartbeats_write_every_row_at_once_the_last_beat_of_a_target_winning(
    b: Backend,
) -> None:
    """A Keeper's heartbeat batch updates the AppMasters already registered, registers
    the new ones, stamps all with the store's now, and keeps the last of several beats of
    one target, as single heartbeats one after another would."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    store.heartbeat_appmaster("a", "echo", "echo-appmaster", 1)
    clock.advance(5)
    store.heartbeat_appmasters(
        [
            AppMasterBeat("a", "echo", "echo-appmaster", 2),
            AppMasterBeat("b", "echo", "echo-appmaster", 7),
            AppMasterBeat("a", "other", "other-appmaster", 0),
            AppMasterBeat("a", "echo", "echo-appmaster-2", 3),
        ]
    )
    rows = {(r.cluster, r.service): r for r in store.list_appmasters()}
    assert set(rows) == {("a", "echo"), ("b", "echo"), ("a", "other")}
    assert (rows[("a", "echo")].actor_name, rows[("a", "echo")].epoch_seen) == (
        "echo-appmaster-2",
        3,
    )
    assert rows[("b", "echo")].epoch_seen == 7
    assert {r.heartbeat_at for r in rows.values()} == {clock.now()}
    clock.advance(1)
    store.heartbeat_appmasters([])
    assert {r.heartbeat_at for r in store.list_appmasters()} == {clock.now() - 1}


STORE_CHECKS += [
    batched_instruction_reads_give_each_target_what_its_own_read_gives,
    instruction_reads_past_a_cursor_give_every_targets_new_rows_in_id_order,
    batched_heartbeats_write_every_row_at_once_the_last_beat_of_a_target_winning,
]


def clusters_keep_their_tier_and_can_be_removed(b: Backend) -> None:
    """A registered cluster's tier round-trips; removal is by name and idempotent, and
    leaves the other clusters registered."""
    store = b.connect()
    store.register_cluster(ClusterRecord("a", "127.0.1.1:12000", "http://x", "z1", "primary"))
    store.register_cluster(ClusterRecord("b", "127.0.2.1:12000", None, "z2"))
    assert [(c.name, c.tier) for c in store.list_clusters()] == [("a", "primary"), ("b", "")]
    assert store.remove_cluster("a") is True
    assert store.remove_cluster("a") is False
    assert [c.name for c in store.list_clusters()] == ["b"]


def a_version_4_db_gains_the_cluster_tier(b: Backend) -> None:
    """Migration 5 adds clusters.tier to a DB an earlier release made, keeping its rows
    (with tier '')."""
    store = b.connect()
    store.register_cluster(ClusterRecord("a", "127.0.1.1:12000", None, "z1", "gold"))
    b.execute("ALTER TABLE clusters DROP COLUMN tier")
    b.execute("UPDATE schema_version SET version = 4")
    again = b.connect()
    assert again.schema_version() == SCHEMA_VERSION
    assert again.list_clusters() == [ClusterRecord("a", "127.0.1.1:12000", None, "z1", "")]
    again.register_cluster(ClusterRecord("a", "127.0.1.1:12000", None, "z1", "gold"))
    assert again.list_clusters()[0].tier == "gold"


STORE_CHECKS += [clusters_keep_their_tier_and_can_be_removed, a_version_4_db_gains_the_cluster_tier]


def operation_progress_and_commands(b: Backend) -> None:
    """Progress is written compare-and-set by the leader; a command is left on an active
    operation without a version check (it never races the leader) and refused once the
    operation has finished."""
    store = b.connect()
    store.create_operation(_op())
    ran = store.advance_operation("op-1", expected_version=1, progress={"weight": 10})
    commanded = store.command_operation("op-1", "pause")
    assert (commanded.command, commanded.version) == ("pause", ran.version)
    later = store.advance_operation(
        "op-1", expected_version=ran.version, progress={"weight": 50, "checks": [1, 2]}
    )
    assert later.progress == {"weight": 50, "checks": [1, 2]}
    assert later.command == "pause"
    finish_operation(store, "op-1", "succeeded")
    with pytest.raises(OperationFinished, match="succeeded"):
        store.command_operation("op-1", "abort")
    with pytest.raises(UnknownOperation):
        store.command_operation("nope", "abort")


def a_version_3_db_gains_the_release_columns(b: Backend) -> None:
    """Migration 4 adds operations.progress/command to a DB an earlier release made,
    keeping its rows."""
    store = b.connect()
    store.create_operation(_op())
    b.execute("ALTER TABLE operations DROP COLUMN progress")
    b.execute("ALTER TABLE operations DROP COLUMN command")
    b.execute("UPDATE schema_version SET version = 3")
    again = b.connect()
    assert again.schema_version() == SCHEMA_VERSION
    op = again.get_operation("op-1")
    assert (op.progress, op.command) == (None, None)
    assert again.command_operation("op-1", "promote").command == "promote"


STORE_CHECKS += [operation_progress_and_commands, a_version_3_db_gains_the_release_columns]


def fenced_writes_need_the_lease_at_the_writers_epoch(b: Backend) -> None:
    """A leader paused between its last check and its write cannot write at its old
    epoch: the fence is checked in the write's own transaction."""
    store = b.connect()
    first = store.acquire_lease(LEASE, "k1", 10)
    assert first is not None
    store.create_operation(_op())
    store.add_instruction("a", "echo", "op-1@a", first.epoch, {}, fence=LEASE)
    store.advance_operation("op-1", expected_version=1, epoch=first.epoch, step=1, fence=LEASE)
    store.release_lease(first)
    second = store.acquire_lease(LEASE, "k2", 10)
    assert second is not None
    assert second.epoch > first.epoch
    with pytest.raises(LeaseLost):
        store.add_instruction("a", "echo", "op-1@a", first.epoch, {}, fence=LEASE)
    with pytest.raises(LeaseLost):
        store.advance_operation("op-1", expected_version=2, epoch=first.epoch, step=2, fence=LEASE)
    assert [i.epoch for i in store.list_instructions("a", "echo")] == [first.epoch]
    assert store.get_operation("op-1").step == 1


STORE_CHECKS.append(fenced_writes_need_the_lease_at_the_writers_epoch)


def deploy_writes_the_operation_and_the_service_together(b: Backend) -> None:
    """A new service and its first operation, then an update: each in one transaction."""
    store = b.connect()
    created, fresh = store.create_operation_with_service(
        _op("d-1"), {"n": 1}, expected_version=None
    )
    assert fresh
    assert (created.op_id, created.version, created.status) == ("d-1", 1, "pending")
    assert (store.get_service("echo").spec, store.get_service("echo").version) == ({"n": 1}, 1)
    store.create_operation_with_service(_op("d-2"), {"n": 2}, expected_version=1)
    service = store.get_service("echo")
    assert (service.spec, service.version, service.spec_version) == ({"n": 2}, 2, 2)
    assert [o.op_id for o in store.list_operations("echo")] == ["d-1", "d-2"]


def deploy_with_a_stale_service_version_writes_nothing(b: Backend) -> None:
    """A lost race on the service row leaves no operation behind (nothing acknowledged
    can be missing, nothing refused can be durable); likewise a "new" service that
    exists meanwhile."""
    store = b.connect()
    store.create_service("echo", {"n": 1})
    with pytest.raises(ConflictError) as stale:
        store.create_operation_with_service(_op("d-1"), {"n": 2}, expected_version=7)
    assert (stale.value.expected, stale.value.actual) == (7, 1)
    with pytest.raises(ConflictError) as taken:
        store.create_operation_with_service(_op("d-2"), {"n": 3}, expected_version=None)
    assert (taken.value.expected, taken.value.actual) == (0, 1)
    assert store.list_operations() == []
    assert store.get_service("echo").spec == {"n": 1}
    with pytest.raises(UnknownOperation):
        store.get_operation("d-1")


def deploy_repeated_under_its_op_id_is_idempotent(b: Backend) -> None:
    """The same request again returns the stored operation and leaves the service as
    the first one wrote it; another request under that op_id is refused."""
    store = b.connect()
    first, _ = store.create_operation_with_service(_op("d-1"), {"n": 1}, expected_version=None)
    again, fresh = store.create_operation_with_service(_op("d-1"), {"n": 1}, expected_version=None)
    assert not fresh
    assert again == first
    assert store.get_service("echo").version == 1
    with pytest.raises(AlreadyExists):
        store.create_operation_with_service(
            _op("d-1", service="other"), {"n": 9}, expected_version=None
        )
    with pytest.raises(UnknownService):
        store.get_service("other")
    assert len(store.list_operations()) == 1


STORE_CHECKS += [
    deploy_writes_the_operation_and_the_service_together,
    deploy_with_a_stale_service_version_writes_nothing,
    deploy_repeated_under_its_op_id_is_idempotent,
]


# --- paging and retention -------------------------------------------------------------


def operations_page_in_creation_order(b: Backend) -> None:
    """Pages of operations, oldest first, resume after an operation's (created_at, op_id)
    even among operations created in the same instant; one can be asked for by id."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    for name in ("c", "a", "b"):  # one instant: op_id orders them
        store.create_operation(_op(name))
    clock.advance(1)
    store.create_operation(_op("0-later"))
    store.create_operation(_op("x", service="other"))
    everything = [o.op_id for o in store.list_operations()]
    assert everything == ["a", "b", "c", "0-later", "x"]
    pages: list[list[str]] = []
    after = None
    while True:
        page = store.list_operations("echo", after=after, limit=2)
        if not page:
            break
        pages.append([o.op_id for o in page])
        after = (page[-1].created_at, page[-1].op_id)
    assert pages == [["a", "b"], ["c", "0-later"]]
    assert [o.op_id for o in store.list_operations(op_id="x")] == ["x"]
    assert store.list_operations("echo", op_id="x") == []


def pruning_deletes_old_history_but_nothing_still_needed(b: Backend) -> None:
    """Old finished operations, consumed instructions, events and unnamed packages go,
    a bounded batch at a time; active operations, each service's latest, the latest and
    the unconsumed instructions per target, and every package something names stay."""
    clock = FakeClock()
    store = b.connect(clock=clock)

    def package(name: str) -> str:
        return store.put_package(f"zip of {name}".encode())

    live, in_state, in_instruction = package("live"), package("state"), package("instr")
    only_pruned_op, unnamed, put_again = package("pruned op"), package("old"), package("again")
    store.create_service("echo", {"spec": {"name": "echo"}, "package": live})
    for op_id, status, digest in [
        ("e-1", "succeeded", only_pruned_op),
        ("e-2", "superseded", live),
        ("e-3", "failed", live),
        ("e-4", "running", live),  # active: kept however old
        ("o-1", "succeeded", live),  # "other"'s latest: kept however old
        ("o-2", "superseded", live),
    ]:
        service = "other" if op_id.startswith("o") else "echo"
        store.create_operation(OperationRecord(op_id, service, "deploy", {"package": digest}))
        finish_operation(store, op_id, status)
    a = [store.add_instruction("a", "echo", f"e-{i}", 1, {"package": live}) for i in (1, 2, 3)]
    b_ids = [
        store.add_instruction("b", "echo", "e-1", 1, {"package": in_instruction}),
        store.add_instruction("b", "echo", "e-2", 1, {}),
    ]
    store.save_appmaster_state(
        "a", "echo", {"last_instruction": a[1], "package": in_state}, expected_version=None
    )
    store.append_event("old")
    clock.advance(100)
    package("again")  # put again: as good as new
    fresh = package("fresh")
    store.create_operation(OperationRecord("e-5", "echo", "deploy", {"package": live}))
    finish_operation(store, "e-5", "succeeded")
    store.append_event("recent")

    first = store.prune(50, batch=1)
    assert first == {
        "operations": 1,
        "instructions": 1,
        "events": 1,
        "rate_samples": 0,
        "packages": 1,
    }
    while any(store.prune(50, batch=1).values()):
        pass

    ops = {o.op_id: o.status for o in store.list_operations()}
    assert ops == {"e-4": "running", "e-5": "succeeded", "o-1": "succeeded"}
    assert [i.id for i in store.list_instructions("a", "echo")] == [a[2]]  # consumed: a[:2]
    assert [i.id for i in store.list_instructions("b", "echo")] == b_ids  # none consumed
    assert [e.kind for e in store.list_events()] == ["recent"]
    for kept in (live, in_state, in_instruction, put_again, fresh):
        assert store.get_package(kept)
    for gone in (only_pruned_op, unnamed):
        with pytest.raises(UnknownPackage):
            store.get_package(gone)
    assert store.prune(50) == {
        "operations": 0,
        "instructions": 0,
        "events": 0,
        "rate_samples": 0,
        "packages": 0,
    }


def read_targets_reads_what_the_single_reads_read(b: Backend) -> None:
    """The leader's one-transaction read of many targets gives, per (cluster, service),
    its last instruction and AppMaster state, as the one-target reads do."""
    store = b.connect()
    store.add_instruction("c1", "echo", "op-1", 1, {"n": 1})
    store.add_instruction("c1", "echo", "op-2", 1, {"n": 2})
    store.save_appmaster_state("c1", "echo", {"step": 3}, expected_version=None)
    store.add_instruction("c2", "echo", "op-3", 1, {"n": 3})
    read = store.read_targets([("c1", "echo"), ("c2", "echo"), ("c3", "echo")])
    assert read[("c1", "echo")].last_instruction == store.last_instruction("c1", "echo")
    assert read[("c1", "echo")].state == {"step": 3}
    assert read[("c2", "echo")].last_instruction == store.last_instruction("c2", "echo")
    assert read[("c2", "echo")].state is None
    assert (read[("c3", "echo")].last_instruction, read[("c3", "echo")].state) == (None, None)
    assert store.read_targets([]) == {}
    # a state at the version the reader knows is not read again; a newer one is
    version = read[("c1", "echo")].state_version
    assert version is not None
    store.save_appmaster_state("c2", "echo", {"step": 1}, expected_version=None)
    store.add_instruction("c2", "other", "op-4", 1, {"n": 4})  # another target's, later
    again = store.read_targets(
        [("c1", "echo"), ("c2", "echo"), ("c1", "echo")], known={("c1", "echo"): version}
    )
    assert set(again) == {("c1", "echo"), ("c2", "echo")}
    c1, c2 = again[("c1", "echo")], again[("c2", "echo")]
    assert (c1.state, c1.state_version, c1.state_unchanged) == (None, version, True)
    assert c1.last_instruction == read[("c1", "echo")].last_instruction
    assert (c2.state, c2.state_unchanged) == ({"step": 1}, False)
    assert c2.last_instruction == store.last_instruction("c2", "echo")
    store.save_appmaster_state("c1", "echo", {"step": 4}, expected_version=version)
    moved = store.read_targets([("c1", "echo")], known={("c1", "echo"): version})
    assert (moved[("c1", "echo")].state, moved[("c1", "echo")].state_unchanged) == (
        {"step": 4},
        False,
    )


STORE_CHECKS += [
    read_targets_reads_what_the_single_reads_read,
    latest_operations_gives_each_services_newest_passing_over_a_status,
    operations_page_in_creation_order,
    pruning_deletes_old_history_but_nothing_still_needed,
]


def rate_samples_round_trip_per_step_and_are_pruned(b: Backend) -> None:
    """A service's rate history is per cluster, oldest first, from ``since``; a step
    written again is replaced, not duplicated; old steps are pruned in batches."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    now = clock.now()
    for k, rate in enumerate([1.0, 2.0, 3.0]):
        store.record_rate_sample("echo", "a", now - 300 + 60 * k, rate)
    store.record_rate_sample("echo", "a", now - 180, 9.5)  # the last step, again
    store.record_rate_sample("echo", "b", now - 300, 7.0)
    assert store.list_rate_samples("echo", "a") == [
        (now - 300, 1.0),
        (now - 240, 2.0),
        (now - 180, 9.5),
    ]
    assert store.list_rate_samples("echo", "a", since=now - 240) == [
        (now - 240, 2.0),
        (now - 180, 9.5),
    ]
    assert store.list_rate_samples("echo", "b") == [(now - 300, 7.0)]
    assert store.prune(200, batch=1)["rate_samples"] == 1
    assert store.prune(200)["rate_samples"] == 2  # the others older than 200 s
    assert store.list_rate_samples("echo", "a") == [(now - 180, 9.5)]
    assert store.list_rate_samples("echo", "b") == []


def a_version_5_db_gains_the_rate_samples_and_the_credentials(b: Backend) -> None:
    """Migrations 6 and 7 create the rate history and the credentials in a DB an
    earlier release made, keeping its rows."""
    store = b.connect()
    store.register_cluster(ClusterRecord("a", "127.0.1.1:12000", None, "z1"))
    b.execute("DROP TABLE rate_samples")
    b.execute("DROP TABLE credentials")
    b.execute("UPDATE schema_version SET version = 5")
    again = b.connect()
    assert again.schema_version() == SCHEMA_VERSION == 8
    assert [c.name for c in again.list_clusters()] == ["a"]
    again.record_rate_sample("echo", "a", 60.0, 1.5)
    assert again.list_rate_samples("echo", "a") == [(60.0, 1.5)]
    token = again.mint_credential("appmaster", "a", "echo")
    assert again.verify_credential(token) is not None


def a_version_6_db_gains_the_credentials(b: Backend) -> None:
    """Migration 7 creates the credentials table in a DB at version 6 (the rate
    history), keeping its rate samples."""
    store = b.connect()
    store.record_rate_sample("echo", "a", 60.0, 1.5)
    b.execute("DROP TABLE credentials")
    b.execute("UPDATE schema_version SET version = 6")
    again = b.connect()
    assert again.schema_version() == SCHEMA_VERSION == 8
    assert again.list_rate_samples("echo", "a") == [(60.0, 1.5)]
    token = again.mint_credential("appmaster", "a", "echo")
    found = again.verify_credential(token)
    assert found is not None
    assert (found.scope, found.cluster, found.service, found.revoked) == (
        "appmaster",
        "a",
        "echo",
        False,
    )


def a_version_6_db_with_credentials_but_no_rate_samples_gains_them(b: Backend) -> None:
    """The security branch was developed with credentials as its version 6: a DB it
    migrated says 6 without the rate history, and migration 7 adds it, keeping the
    credentials already minted."""
    store = b.connect()
    token = store.mint_credential("appmaster", "a", "echo")
    b.execute("DROP TABLE rate_samples")
    b.execute("UPDATE schema_version SET version = 6")
    again = b.connect()
    assert again.schema_version() == SCHEMA_VERSION
    assert again.verify_credential(token) is not None
    again.record_rate_sample("echo", "a", 60.0, 1.5)
    assert again.list_rate_samples("echo", "a") == [(60.0, 1.5)]


STORE_CHECKS += [
    rate_samples_round_trip_per_step_and_are_pruned,
    a_version_5_db_gains_the_rate_samples_and_the_credentials,
    a_version_6_db_gains_the_credentials,
    a_version_6_db_with_credentials_but_no_rate_samples_gains_them,
]


def a_lease_is_taken_only_from_the_holder_named(b: Backend) -> None:
    """``take_lease`` (an AppMaster's standby, whose peer Ray reported dead) moves an
    unexpired lease from the named holder, one epoch up; from anyone else, nothing."""
    clock = FakeClock()
    store = b.connect(clock=clock)
    held = store.acquire_lease("am", "a@1", 1000.0)
    assert held is not None
    assert store.take_lease("am", "b@2", "someone-else", 1000.0) is None
    taken = store.take_lease("am", "b@2", "a@1", 1000.0)
    assert taken == Lease("am", "b@2", held.epoch + 1, clock.now() + 1000.0)
    assert store.take_lease("am", "c@3", "a@1", 1000.0) is None  # a@1 no longer holds it
    assert store.get_lease("am") == taken
    assert store.take_lease("absent", "b@2", "a@1", 1000.0) is None


def concurrent_takers_of_a_dead_holders_lease_exactly_one_wins(b: Backend) -> None:
    """The standby and the restarted process race to take a dead holder's lease."""
    first = b.connect()
    held = first.acquire_lease("am", "dead@1", 1000.0)
    assert held is not None
    stores = [b.connect() for _ in range(RACERS)]
    results = race(RACERS, lambda i: stores[i].take_lease("am", f"t{i}", "dead@1", 1000.0))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].epoch == held.epoch + 1


def appmaster_state_writes_fenced_by_a_lease_stop_once_it_moved(b: Backend) -> None:
    """An AppMaster whose standby took the lease can no longer write its state."""
    store = b.connect()
    mine = store.acquire_lease("am", "a@1", 1000.0)
    assert mine is not None
    fence = ("am", mine.epoch)
    v1 = store.save_appmaster_state("c1", "echo", {"n": 1}, expected_version=None, fence=fence)
    v2 = store.save_appmaster_state("c1", "echo", {"n": 2}, expected_version=v1, fence=fence)
    assert store.take_lease("am", "b@2", "a@1", 1000.0) is not None
    with pytest.raises(LeaseLost):
        store.save_appmaster_state("c1", "echo", {"n": 3}, expected_version=v2, fence=fence)
    with pytest.raises(LeaseLost):
        store.save_appmaster_state("c2", "echo", {"n": 1}, expected_version=None, fence=fence)
    assert store.load_appmaster_state("c1", "echo") == ({"n": 2}, v2)
    assert store.load_appmaster_state("c2", "echo") is None


LEASE_CHECKS += [
    a_lease_is_taken_only_from_the_holder_named,
    concurrent_takers_of_a_dead_holders_lease_exactly_one_wins,
]
STORE_CHECKS.append(appmaster_state_writes_fenced_by_a_lease_stop_once_it_moved)


def capacity_floors_are_set_per_target_fenced_by_the_leaders_lease(b: Backend) -> None:
    """A floor is one row per (service, cluster), replaced when set again; only the
    lease's current epoch may set one; an unset target has none."""
    store = b.connect()
    lease = store.acquire_lease(LEASE, "k1", 1000.0)
    assert lease is not None
    assert store.capacity_floor("echo", "a") is None
    store.set_capacity_floor("echo", "a", 4, "b lost", epoch=lease.epoch, fence=LEASE)
    store.set_capacity_floor("echo", "b", 0, "", epoch=lease.epoch, fence=LEASE)
    store.set_capacity_floor("echo", "a", 5, "b lost, c full", epoch=lease.epoch, fence=LEASE)
    store.set_capacity_floor("other", "a", 2, "x", epoch=lease.epoch, fence=LEASE)
    floor = store.capacity_floor("echo", "a")
    assert floor is not None
    assert (floor.floor, floor.reason, floor.epoch) == (5, "b lost, c full", lease.epoch)
    assert [(f.cluster, f.floor) for f in store.list_capacity_floors("echo")] == [
        ("a", 5),
        ("b", 0),
    ]
    assert len(store.list_capacity_floors()) == 3
    assert store.take_lease(LEASE, "k2", "k1", 1000.0) is not None
    with pytest.raises(LeaseLost):
        store.set_capacity_floor("echo", "a", 9, "late", epoch=lease.epoch, fence=LEASE)
    assert store.capacity_floor("echo", "a") == floor


STORE_CHECKS.append(capacity_floors_are_set_per_target_fenced_by_the_leaders_lease)

"""The leader (re)submits serving jobs: a restarted cluster whose GCS answers before its
Job API does gets its job as soon as the Job API answers, not a resubmit interval later."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from ha_serving._errors import StoreUnavailable
from ha_serving._jobstate import JobState, Phase
from ha_serving._settings import KeeperSettings
from ha_serving._spec import Revision, ServiceSpec
from ha_serving.backend import make_package
from ha_serving.keeper._control_api import deploy
from ha_serving.store import ClusterRecord, Store
from ha_serving.util.clock import FakeClock
from tests.store_contract import finish_operation
from tests.unit.fixtures.control import FIXTURES, deploy_echo, leader, spec
from tests.unit.jobstates import job_state


class FlakyJobs:
    """A Job API that refuses the first ``refusals`` submissions (still starting)."""

    def __init__(self, refusals: int, clock: FakeClock) -> None:
        self.refusals = refusals
        self.clock = clock
        self.attempts: list[float] = []
        self.accepted: list[float] = []

    def submit(self, cluster: ClusterRecord, service: str) -> str:
        assert (cluster.name, service) == ("a", "echo")
        self.attempts.append(self.clock.monotonic())
        if len(self.attempts) <= self.refusals:
            raise ConnectionError("Failed to connect to Ray")
        self.accepted.append(self.clock.monotonic())
        return f"job-{len(self.accepted)}"


def _store(folder: Path, clock: FakeClock, *clusters: str) -> Store:
    """The test's store (on the fake clock), with ``clusters`` (default: a) registered,
    their Job APIs at an address nothing answers on."""
    store = Store.connect(f"sqlite:///{folder / 'state.db'}", clock=clock)
    for name in clusters or ("a",):
        store.register_cluster(ClusterRecord(name, "127.0.1.250:1", "http://127.0.1.250:1", "z1"))
    return store


def test_a_refused_submission_is_retried_after_submit_retry_s_and_an_accepted_one_waits(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    store = _store(tmp_path, clock)
    jobs = FlakyJobs(refusals=3, clock=clock)
    settings = KeeperSettings(resubmit_s=30.0, submit_retry_s=1.0)
    reconciler = leader(store, jobs, clock, settings=settings)
    deploy_echo(store)
    for _ in range(80):  # 40 s of rounds, 0.5 s apart; no AppMaster ever heartbeats
        reconciler._ensure_appmasters()
        clock.advance(0.5)
    refused = jobs.attempts[:3]
    # refused attempts 1 s apart, the accepted one right after, the next only 30 s later
    assert [b - a for a, b in itertools.pairwise(refused)] == [1.0, 1.0]
    assert jobs.accepted[0] - refused[-1] == 1.0
    assert [b - a for a, b in zip(jobs.accepted, jobs.accepted[1:], strict=False)] == [30.0]


def test_an_appmaster_that_linked_and_then_went_silent_gets_a_job_at_once(
    tmp_path: Path,
) -> None:
    """A cluster restarted faster than the leader could call it lost: its AppMaster had
    linked after the last submission and now is silent. The next job goes out as soon as
    the heartbeat is stale, not a resubmit interval after the last submission (measured:
    a soak round took 25 s instead of 18 s that way)."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    jobs = FlakyJobs(refusals=0, clock=clock)
    settings = KeeperSettings(resubmit_s=30.0)
    reconciler = leader(store, jobs, clock, settings=settings)
    deploy_echo(store)
    reconciler._ensure_appmasters()
    assert len(jobs.accepted) == 1
    for _ in range(10):  # the job's AppMaster links and heartbeats for 5 s
        clock.advance(0.5)
        store.heartbeat_appmaster("a", "echo", "echo-appmaster", 1)
        reconciler._ensure_appmasters()
    killed = clock.monotonic()
    while len(jobs.accepted) < 2:  # the cluster dies and is back: no more heartbeats
        clock.advance(0.5)
        reconciler._ensure_appmasters()
        assert clock.monotonic() - killed < 30, "resubmitted only after resubmit_s"
    assert jobs.accepted[1] - killed <= settings.heartbeat_stale_s + 0.5


def _store_down_for(reconciler: Any, store: Store, clock: FakeClock, seconds: float) -> None:
    """The DB is down for ``seconds``: the leadership's ticks (every 0.5 s) fail."""
    renew = store.renew_lease

    def down(*_: object, **__: object) -> Any:
        raise StoreUnavailable("db down")

    store.renew_lease = down  # type: ignore[method-assign]
    for _ in range(int(seconds / 0.5)):
        clock.advance(0.5)
        reconciler.leadership.tick()
    store.renew_lease = renew  # type: ignore[method-assign]


def test_after_a_store_outage_a_live_appmaster_is_heard_before_any_job_is_resubmitted(
    tmp_path: Path,
) -> None:
    """After 30 s without a DB every heartbeat is 30 s old: the first rounds must not
    take that for silence and submit the job of every AppMaster again (each a driver
    process on a head, for an AppMaster that lives: under CI load it held the pending
    operations of the db-down-30s drill up for 10-14 s). One still silent
    ``heartbeat_stale_s`` after the store came back does get its job."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    jobs = FlakyJobs(refusals=0, clock=clock)
    settings = KeeperSettings(resubmit_s=30.0)
    reconciler = leader(store, jobs, clock, settings=settings)
    deploy_echo(store)
    reconciler._ensure_appmasters()
    store.heartbeat_appmaster("a", "echo", "echo-appmaster", 1)
    reconciler._ensure_appmasters()  # its AppMaster linked
    assert len(jobs.accepted) == 1
    _store_down_for(reconciler, store, clock, 30)
    for n in range(10):  # the store is back; the AppMaster's first beat lands 1 s later
        reconciler._ensure_appmasters()
        clock.advance(0.5)
        if n >= 2:
            store.heartbeat_appmaster("a", "echo", "echo-appmaster", 1)
    assert len(jobs.accepted) == 1, "a live AppMaster's job was submitted again"
    _store_down_for(reconciler, store, clock, 30)
    back = clock.monotonic()
    while len(jobs.accepted) < 2:  # this time it stays silent (its cluster died meanwhile)
        reconciler._ensure_appmasters()
        clock.advance(0.5)
        assert clock.monotonic() - back < 30, "never resubmitted"
    assert settings.heartbeat_stale_s <= jobs.accepted[1] - back <= settings.heartbeat_stale_s + 0.5


def test_a_round_reads_the_active_operations_and_each_services_latest_not_the_history(
    tmp_path: Path,
) -> None:
    """A leader's round must not cost more as finished history grows (retention keeps a
    week of it): the DB hands it the active operations and each service's latest only.
    It used to read every operation twice per round (found by the scale simulation)."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    jobs = FlakyJobs(refusals=0, clock=clock)
    reconciler = leader(store, jobs, clock)
    term = reconciler.leadership.require()
    body = spec(instances=1).model_dump(mode="json")
    body["placement"] = {"clusters": [{"name": "a"}]}
    package = make_package(FIXTURES / "echo_v1").data
    for n in range(30):  # a finished history: each deploy succeeded
        body["config"] = {"n": n}
        op_id, _ = deploy(store, json.dumps(body), package, kind="deploy")
        finish_operation(store, op_id, "succeeded")
        clock.advance(1)
    body["config"] = {"n": "active"}
    active, _ = deploy(store, json.dumps(body), package, kind="deploy")
    read: list[str] = []
    for name in ("list_operations", "latest_operations"):
        original = getattr(store, name)

        def spy(*a: object, _original: Any = original, **kw: object) -> Any:
            found = _original(*a, **kw)
            read.extend(o.op_id for o in found)
            return found

        setattr(store, name, spy)
    reconciler.round(term)
    assert read == [active, active]  # the active one, then the latest per service
    assert store.get_operation(active).status == "running"  # and the round did its work
    assert len(jobs.accepted) == 1  # its AppMaster was started (it never heartbeated)


def test_a_round_reads_every_active_operations_targets_in_one_transaction(
    tmp_path: Path,
) -> None:
    """Per round, the last instruction and AppMaster state of every target of every
    active operation come from one ``read_targets`` (one transaction), not from two
    transactions per target: in a release wave those reads were most of a round."""
    clock = FakeClock()
    store = _store(tmp_path, clock, "a", "b")
    reconciler = leader(store, FlakyJobs(refusals=0, clock=clock), clock)
    for service in ("echo", "other"):
        deploy_echo(store, ("a", "b"), name=service)
    calls: list[list[tuple[str, str]]] = []
    read_targets = store.read_targets

    def spy(targets: Any, **kw: Any) -> Any:
        calls.append(list(targets))
        return read_targets(calls[-1], **kw)

    store.read_targets = spy  # type: ignore[method-assign]
    store.last_instruction = store.load_appmaster_state = None  # type: ignore[assignment]
    reconciler.round(reconciler.leadership.require())
    assert len(calls) == 1  # both ops were created at one instant: in op_id order
    assert sorted(calls[0]) == [("a", "echo"), ("a", "other"), ("b", "echo"), ("b", "other")]
    for service in ("echo", "other"):  # and the round acted on what it read
        assert any(store.list_instructions(c, service) for c in "ab")


def test_a_state_unchanged_since_the_last_round_is_neither_read_nor_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader keeps each target's parsed state by version: the next round asks the
    store only for the versions of states it holds, and parses a state again only once
    it changed (decoding every target's state every round was most of a leader's CPU
    in a release wave)."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    reconciler = leader(store, FlakyJobs(0, clock), clock)
    term = reconciler.leadership.require()
    op_id = deploy_echo(store)
    reconciler.round(term)  # instructs cluster a
    plan = store.get_operation(op_id).plan
    desired = Revision(
        version=plan["spec"]["version"],
        package=plan["package"],
        import_path=plan["spec"]["code"]["import_path"],
    )
    starting = job_state(ServiceSpec.model_validate(plan["spec"]), desired, phase=Phase.PENDING)
    version = store.save_appmaster_state("a", "echo", starting.to_record(), expected_version=None)
    served = job_state(ServiceSpec.model_validate(plan["spec"]), desired)
    parsed: list[dict[str, Any]] = []
    real = JobState.from_record

    def counting(record: dict[str, Any]) -> JobState:
        parsed.append(record)
        return real(record)

    monkeypatch.setattr(JobState, "from_record", counting)
    reconciler.round(term)
    assert len(parsed) == 1
    for _ in range(3):
        reconciler.round(term)
    assert len(parsed) == 1  # unchanged: not parsed again
    assert store.get_operation(op_id).status == "running"  # and still decided on
    store.save_appmaster_state("a", "echo", served.to_record(), expected_version=version)
    reconciler.round(term)
    assert len(parsed) == 2  # the new version
    assert store.get_operation(op_id).status == "succeeded"


def test_an_appmaster_state_that_does_not_parse_is_not_ready_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader reads AppMaster states as ``JobState``: a row that does not parse
    (corrupt, or saved by a newer version) holds the operation where it is, without
    failing the leader's round, and is logged once per saved version, not every round;
    once a state that parses shows the revision served, the operation carries on."""
    clock = FakeClock()
    store = _store(tmp_path, clock)
    reconciler = leader(store, FlakyJobs(0, clock), clock)
    term = reconciler.leadership.require()
    op_id = deploy_echo(store)
    body = store.get_operation(op_id).plan["spec"]
    reconciler._advance(store.get_operation(op_id), term)  # instructs cluster a
    corrupt = {"service": "echo", "cluster": "a", "spec": body, "desired": "not a revision"}
    version = store.save_appmaster_state("a", "echo", corrupt, expected_version=None)
    with caplog.at_level(logging.WARNING, logger="ha_serving.keeper.reconciler"):
        for _ in range(3):
            reconciler._advance(store.get_operation(op_id), term)
        store.save_appmaster_state("a", "echo", {**corrupt, "cluster": 7}, expected_version=version)
        reconciler._advance(store.get_operation(op_id), term)
    warnings = [r.getMessage() for r in caplog.records if "does not parse" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per saved version
    assert "version 1" in warnings[0]
    assert "version 2" in warnings[1]
    op = store.get_operation(op_id)
    assert (op.status, op.step) == ("running", 0)

    plan = op.plan
    desired = Revision(
        version=plan["spec"]["version"],
        package=plan["package"],
        import_path=plan["spec"]["code"]["import_path"],
    )
    served = job_state(ServiceSpec.model_validate(plan["spec"]), desired)
    store.save_appmaster_state("a", "echo", served.to_record(), expected_version=2)
    reconciler._advance(store.get_operation(op_id), term)
    assert store.get_operation(op_id).status == "succeeded"

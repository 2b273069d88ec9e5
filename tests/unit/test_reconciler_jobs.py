"""The leader (re)submits serving jobs: a restarted cluster whose GCS answers before its
Job API does gets its job as soon as the Job API answers, not a resubmit interval later."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest

from ha_serving._settings import KeeperSettings
from ha_serving._spec import Revision, ServiceSpec
from ha_serving.backend import make_package
from ha_serving.keeper import Leadership
from ha_serving.keeper._control_api import deploy
from ha_serving.keeper._reconciler import Reconciler
from ha_serving.store import ClusterRecord, Store
from ha_serving.util.clock import FakeClock
from tests.unit.jobstates import job_state
from tests.unit.test_appmaster import FIXTURES, spec


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


def test_a_refused_submission_is_retried_after_submit_retry_s_and_an_accepted_one_waits(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    store = Store.connect(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    store.register_cluster(ClusterRecord("a", "127.0.1.250:1", "http://127.0.1.250:1", "z1"))
    leadership = Leadership(store, "k1", ttl_s=1e6, clock=clock)
    leadership.tick()
    jobs = FlakyJobs(refusals=3, clock=clock)
    settings = KeeperSettings(resubmit_s=30.0, submit_retry_s=1.0)
    reconciler = Reconciler(store, leadership, jobs, settings=settings, clock=clock)
    body = spec(instances=1).model_dump(mode="json")
    body["placement"] = {"clusters": [{"name": "a"}]}
    deploy(store, json.dumps(body), make_package(FIXTURES / "echo_v1").data, kind="deploy")
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
    store = Store.connect(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    store.register_cluster(ClusterRecord("a", "127.0.1.250:1", "http://127.0.1.250:1", "z1"))
    leadership = Leadership(store, "k1", ttl_s=1e6, clock=clock)
    leadership.tick()
    jobs = FlakyJobs(refusals=0, clock=clock)
    settings = KeeperSettings(resubmit_s=30.0)
    reconciler = Reconciler(store, leadership, jobs, settings=settings, clock=clock)
    body = spec(instances=1).model_dump(mode="json")
    body["placement"] = {"clusters": [{"name": "a"}]}
    deploy(store, json.dumps(body), make_package(FIXTURES / "echo_v1").data, kind="deploy")
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


def test_an_appmaster_state_that_does_not_parse_is_not_ready_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader reads AppMaster states as ``JobState``: a row that does not parse
    (corrupt, or saved by a newer version) holds the operation where it is, without
    failing the leader's round, and is logged once per saved version, not every round;
    once a state that parses shows the revision served, the operation carries on."""
    clock = FakeClock()
    store = Store.connect(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    store.register_cluster(ClusterRecord("a", "127.0.1.250:1", "http://127.0.1.250:1", "z1"))
    leadership = Leadership(store, "k1", ttl_s=1e6, clock=clock)
    leadership.tick()
    term = leadership.term()
    assert term is not None
    reconciler = Reconciler(store, leadership, FlakyJobs(0, clock), clock=clock)
    body = spec(instances=1).model_dump(mode="json")
    body["placement"] = {"clusters": [{"name": "a"}]}
    op_id, _ = deploy(store, json.dumps(body), make_package(FIXTURES / "echo_v1").data)
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

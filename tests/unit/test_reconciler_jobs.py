"""The leader (re)submits serving jobs: a restarted cluster whose GCS answers before its
Job API does gets its job as soon as the Job API answers, not a resubmit interval later."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ha_serving.backend import make_package
from ha_serving.keeper import Leadership
from ha_serving.keeper._control_api import deploy
from ha_serving.keeper._reconciler import Reconciler
from ha_serving.store import ClusterRecord, Store
from ha_serving.util.clock import FakeClock
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
    reconciler = Reconciler(
        store,
        leadership,
        jobs,
        resubmit_s=30.0,
        submit_retry_s=1.0,
        monotonic=clock.monotonic,
    )
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

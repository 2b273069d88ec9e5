"""Canary, blue-green and drained rolling updates, end to end in one process and in fake
time: a real SQLite store, the real leader reconciler, and one real AppMaster core per
cluster (fake Ray runtime, real BackendWorkers); instructions go from the store to the
cores as the Keeper link would carry them. Also the analysis of proxy metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ha_serving._errors import InvalidSpec, OperationFinished
from ha_serving._jobstate import Release
from ha_serving._spec import Revision, parse_spec
from ha_serving._status import ReleaseMode
from ha_serving.backend import make_package
from ha_serving.keeper._analysis import AnalysisPolicy, GroupSample, Sample, analyze, parse
from ha_serving.keeper._control_api import command, deploy
from ha_serving.keeper._plan import Operation
from ha_serving.keeper._releases import Finish, Instruct, Progress, make_plan, plan_targets
from ha_serving.keeper._weighted import decide_weighted, release_plan
from ha_serving.proxy._metrics import ProxyMetrics
from ha_serving.store import ClusterRecord, Instruction, OperationRecord, Store
from ha_serving.testing import FakeProxy, FakeRuntime
from ha_serving.util.clock import FakeClock
from tests.unit.fixtures.control import FIXTURES, fake_core, leader, spec, sqlite_store
from tests.unit.jobstates import job_state

CLUSTERS = ("a", "b")


class NoJobs:
    def submit(self, cluster: ClusterRecord, service: str) -> str:
        raise AssertionError(f"no job should be submitted ({service} on {cluster.name})")


class ControlPlane:
    """The leader and two clusters' AppMasters; ``pump`` runs them until a condition."""

    def __init__(
        self, store: Store, clock: FakeClock, scraper: Callable[[list[str], str], Sample]
    ) -> None:
        self.store = store
        self.clock = clock  # the store's too: step clocks, heartbeats and leases
        for n, name in enumerate(CLUSTERS, start=1):
            # a GCS address nothing listens on: liveness comes from the heartbeats below
            store.register_cluster(ClusterRecord(name, f"127.0.{n}.250:1", None, f"z{n}"))
        self.reconciler = leader(store, NoJobs(), clock, scraper=scraper)
        self.leadership = self.reconciler.leadership
        self.runtimes = {c: FakeRuntime() for c in CLUSTERS}
        self.cores = {
            c: fake_core(store, runtime=self.runtimes[c], clock=clock, cluster=c) for c in CLUSTERS
        }
        self.weights: list[dict[str, int]] = []
        """Each cluster's endpoint weight label, per pump round."""

    def deploy(self, version: str, kind: str, **options: Any) -> str:
        fixture = f"echo_{version}" if version.startswith("v") else version
        body = spec(version=version, instances=4, instances_per_worker=2).model_dump(mode="json")
        body["placement"] = {"clusters": [{"name": c} for c in CLUSTERS]}
        package = make_package(FIXTURES / fixture).data
        op_id, _ = deploy(
            self.store, json.dumps(body), package, kind=kind, options_json=json.dumps(options)
        )
        return op_id

    def op(self, op_id: str) -> Any:
        return self.store.get_operation(op_id)

    async def pump(self, until: Callable[[], bool], rounds: int = 400) -> None:
        term = self.leadership.require()
        for _ in range(rounds):
            for cluster in CLUSTERS:  # what each AppMaster's open Keeper link does
                self.store.heartbeat_appmaster(cluster, "echo", "echo-appmaster", term.epoch)
            self.reconciler.round(term)
            for cluster, core in self.cores.items():
                after = core.state.last_instruction if core.state else 0
                for i in self.store.list_instructions(cluster, "echo", after=after):
                    await core.take_instruction(i.id, i.body, op_id=i.op_id, epoch=i.epoch)
                await core.round()
            labels = {e.cluster: int(e.labels["weight"]) for e in self.store.list_endpoints("echo")}
            self.weights.append(labels)
            self.clock.advance(1.0)
            if until():
                return
        raise AssertionError(f"not reached in {rounds} rounds: {self.store.list_operations()}")

    async def finish(self, op_id: str) -> Any:
        await self.pump(lambda: self.op(op_id).status not in ("pending", "running"))
        return self.op(op_id)

    def tables(self, cluster: str) -> list[Any]:
        proxy = next(a for a in self.runtimes[cluster].actors.values() if isinstance(a, FakeProxy))
        return proxy.tables

    def versions(self) -> dict[str, set[str]]:
        """Per cluster, the versions its instances run."""
        out: dict[str, set[str]] = {}
        for c, core in self.cores.items():
            assert core.state is not None
            out[c] = {i.running.version for i in core.state.instances.values() if i.running}
        return out


class Metrics:
    """A scraper whose candidate group fails ``failing`` of each 100 calls."""

    def __init__(self) -> None:
        self.failing = 0
        self.total = GroupSample()
        self.stable = GroupSample()

    def __call__(self, addresses: list[str], service: str) -> Sample:  # noqa: ARG002 - a scraper
        self.total.requests += 100
        self.total.failures += self.failing
        self.total.buckets = {0.01: self.total.requests, float("inf"): self.total.requests}
        self.stable.requests += 400
        return {"candidate": GroupSample(**vars(self.total)), "stable": self.stable}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def cp(tmp_path: Path, metrics: Metrics) -> Iterator[ControlPlane]:
    clock = FakeClock()
    with sqlite_store(tmp_path, clock=clock) as store:
        yield ControlPlane(store, clock, metrics)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _deployed(cp: ControlPlane) -> None:
    op = await cp.finish(cp.deploy("v1", "deploy"))
    assert op.status == "succeeded"


def test_canary_moves_traffic_in_steps_then_promotes_everywhere(cp: ControlPlane) -> None:
    async def scenario() -> None:
        await _deployed(cp)
        op_id = cp.deploy("v2", "canary", steps=[25, 100], pause_s=3, canary_instances=1)
        assert cp.store.get_service("echo").spec["spec"]["version"] == "v1"  # not yet
        op = await cp.finish(op_id)
        assert (op.status, op.error) == ("succeeded", None)
        for cluster in CLUSTERS:
            weights = [t.candidate_weight for t in cp.tables(cluster)]
            assert [w for i, w in enumerate(weights) if i == 0 or weights[i - 1] != w] == [
                0,
                25,
                100,
                0,
            ]  # 0 while the candidate loads, the steps, then one group again
            grouped = [t for t in cp.tables(cluster) if t.candidate_weight == 25]
            assert {e.version for e in grouped[-1].entries if e.group == "candidate"} == {"v2"}
        assert cp.versions() == {"a": {"v2"}, "b": {"v2"}}
        assert cp.store.get_service("echo").spec["spec"]["version"] == "v2"
        checks = op.progress["checks"]
        assert checks
        assert {c["verdict"] for c in checks} == {"pass"}

    run(scenario())


def test_failing_analysis_rolls_the_canary_back_automatically(
    cp: ControlPlane, metrics: Metrics
) -> None:
    async def scenario() -> None:
        await _deployed(cp)
        metrics.failing = 5  # 95% success < 99%
        op_id = cp.deploy("v2", "canary", steps=[10, 100], pause_s=1000)
        op = await cp.finish(op_id)
        assert op.status == "rolled_back"
        assert "analysis failed 2 checks" in op.error
        assert "success rate 0.95" in op.error
        assert op.progress["failed_checks"] == 2
        assert cp.versions() == {"a": {"v1"}, "b": {"v1"}}
        assert cp.store.get_service("echo").spec["spec"]["version"] == "v1"

    run(scenario())


def test_operator_pause_resume_promote_and_abort(cp: ControlPlane) -> None:
    async def scenario() -> None:
        await _deployed(cp)
        op_id = cp.deploy("v2", "canary", steps=[10, 50, 100], pause_s=0)
        command(cp.store, op_id, "pause")
        # the candidate comes up, but a paused release sends it no traffic
        await cp.pump(lambda: (cp.op(op_id).progress or {}).get("step") == 0)
        for _ in range(5):
            await cp.pump(lambda: True)
        assert cp.op(op_id).step == 0
        assert {t.candidate_weight for t in cp.tables("a")} == {0}
        command(cp.store, op_id, "resume")
        await cp.pump(lambda: cp.op(op_id).step == 2)
        command(cp.store, op_id, "promote")
        assert (await cp.finish(op_id)).status == "succeeded"
        with pytest.raises(OperationFinished):
            command(cp.store, op_id, "abort")

        op_id = cp.deploy("v1", "canary", steps=[50, 100], pause_s=1000)
        await cp.pump(lambda: cp.op(op_id).step == 1)
        command(cp.store, op_id, "abort")
        op = await cp.finish(op_id)
        assert (op.status, op.error) == ("aborted", "aborted by the operator")
        assert cp.versions() == {"a": {"v2"}, "b": {"v2"}}

    run(scenario())


def test_blue_green_switches_after_green_is_up_and_retires_blue(cp: ControlPlane) -> None:
    async def scenario() -> None:
        await _deployed(cp)
        op_id = cp.deploy("v2", "blue_green", pause_s=2)
        op = await cp.finish(op_id)
        assert op.status == "succeeded"
        for cluster in CLUSTERS:
            tables = cp.tables(cluster)
            switched = [t for t in tables if t.candidate_weight == 100]
            assert switched
            first = switched[0]  # the switch happened with green fully up and blue warm
            assert len(first.entries) == 8
            assert {e.version for e in first.entries if e.group == "candidate"} == {"v2"}
            assert len(tables[-1].entries) == 4
        assert cp.versions() == {"a": {"v2"}, "b": {"v2"}}

    run(scenario())


def test_a_step_takes_effect_only_once_every_proxy_holds_its_weight(cp: ControlPlane) -> None:
    """The leader starts a step's clock (``progress.step``) only when each cluster's
    proxies acknowledged the routing table with the step's weight, not when the
    AppMaster saved it: until then calls still go to the old version."""

    async def scenario() -> None:
        await _deployed(cp)
        proxy = next(a for a in cp.runtimes["b"].actors.values() if isinstance(a, FakeProxy))
        held = proxy.update_routes

        async def stuck(table: Any) -> int:  # a proxy that has not taken the switch yet
            return proxy.table.version if table.candidate_weight == 100 else await held(table)

        proxy.update_routes = stuck  # type: ignore[method-assign]
        op_id = cp.deploy("v2", "blue_green", pause_s=1000)
        core = cp.cores["b"]

        def saved_on_b() -> bool:
            return (
                core.state is not None
                and core.state.release is not None
                and (core.state.release.weight == 100)
            )

        await cp.pump(saved_on_b)
        for _ in range(5):  # a few more rounds: b's AppMaster saved 100, its proxy has not
            await cp.pump(lambda: True, rounds=1)
            assert cp.op(op_id).progress.get("step") != 1, cp.op(op_id).progress
        assert proxy.table.candidate_weight != 100
        proxy.update_routes = held  # type: ignore[method-assign]
        await cp.pump(lambda: cp.op(op_id).progress.get("step") == 1)
        for cluster in CLUSTERS:
            assert cp.tables(cluster)[-1].candidate_weight == 100

    run(scenario())


def test_blue_green_rollback_in_the_window_is_a_flip_back(cp: ControlPlane) -> None:
    async def scenario() -> None:
        await _deployed(cp)
        op_id = cp.deploy("v2", "blue_green", pause_s=1000)
        await cp.pump(lambda: cp.op(op_id).progress.get("step") == 1)
        command(cp.store, op_id, "abort")
        op = await cp.finish(op_id)
        assert op.status == "aborted"
        for cluster in CLUSTERS:
            after = [t for t in cp.tables(cluster) if t.candidate_weight == 100][-1]
            flip = cp.tables(cluster)[cp.tables(cluster).index(after) + 1]
            # the very next table sends nothing to green: a flip, not a redeploy
            assert flip.candidate_weight == 0
            assert {e.group for e in flip.entries if e.version == "v2"} <= {"retiring"}
        assert cp.versions() == {"a": {"v1"}, "b": {"v1"}}

    run(scenario())


def test_a_drained_rolling_update_takes_each_cluster_out_of_traffic_in_turn(
    cp: ControlPlane,
) -> None:
    async def scenario() -> None:
        await _deployed(cp)
        cp.weights.clear()
        op = await cp.finish(cp.deploy("v2", "code", drain=True))
        assert op.status == "succeeded"
        seen = [w for w in cp.weights if len(w) == 2]
        assert {"a": 0, "b": 100} in seen
        assert {"a": 100, "b": 0} in seen
        assert {"a": 0, "b": 0} not in seen  # never both at once
        assert seen[-1] == {"a": 100, "b": 100}
        assert cp.versions() == {"a": {"v2"}, "b": {"v2"}}

    run(scenario())


def test_bad_release_requests_are_refused_with_the_reason(cp: ControlPlane) -> None:
    with pytest.raises(InvalidSpec, match="not deployed"):
        cp.deploy("v2", "canary")
    run(_deployed(cp))
    with pytest.raises(InvalidSpec, match="end at 100"):
        cp.deploy("v2", "canary", steps=[10, 50])
    with pytest.raises(InvalidSpec, match=r"takes 1\.\.3"):
        cp.deploy("v2", "canary", canary_instances=4)
    with pytest.raises(InvalidSpec, match="pause_s"):
        cp.deploy("v2", "canary", pause_s=-1)
    rolling = cp.deploy("v2", "code")
    with pytest.raises(InvalidSpec, match="not a canary"):
        command(cp.store, rolling, "promote")
    canary = cp.deploy("v1", "canary")
    with pytest.raises(InvalidSpec, match="not one of"):
        command(cp.store, canary, "explode")


# --- analysis ------------------------------------------------------------------------


def _proxy_text(calls: list[tuple[str, str, float]]) -> str:
    m = ProxyMetrics("echo", inflight=dict, routed=lambda: 0)
    for group, code, seconds in calls:
        m.observe("echo", "echo", code, seconds, method_exists=True, group=group, version="v")
    return m.metrics_text()


def test_analysis_judges_the_interval_between_two_scrapes() -> None:
    policy = AnalysisPolicy(min_requests=10, min_success_rate=0.9, max_p99_ms=100)
    before = parse(_proxy_text([("candidate", "UNAVAILABLE", 0.001)] * 50), "echo")
    good = [("candidate", "OK", 0.004)] * 50 + [("candidate", "UNAVAILABLE", 0.001)] * 50
    after = parse(_proxy_text(good + [("stable", "OK", 0.002)] * 30), "echo")
    check = analyze(before, after, policy)  # only the 50 new calls: all good
    assert (check.verdict, check.requests, check.failures) == ("pass", 50, 0)
    assert check.p99_ms == 5.0  # the 5 ms bucket holds the 99th percentile
    assert check.stable_requests == 30
    failing = parse(_proxy_text(good + [("candidate", "DEADLINE_EXCEEDED", 0.2)] * 10), "echo")
    verdict = analyze(after, failing, policy)
    assert verdict.verdict == "fail"
    assert "success rate" in verdict.reason
    slow = parse(_proxy_text(good + [("candidate", "OK", 0.3)] * 20), "echo")
    assert "p99" in analyze(after, slow, policy).reason
    assert analyze(after, after, policy).verdict == "inconclusive"
    other = parse(_proxy_text(good).replace('service="echo"', 'service="x"'), "echo")
    assert other == {}


# --- instructions an AppMaster cannot carry out ---------------------------------------


def test_an_operation_it_cannot_carry_out_fails_and_later_ones_flow(
    cp: ControlPlane,
) -> None:
    """An operation the leader cannot carry out (here a "release" deploy, which an older
    Keeper recorded; the control API now refuses the kind, and the plan's kind does not
    parse) ends failed with the reason in one line, before any instruction is sent,
    instead of wedging; the next operation of the service is carried out."""

    async def scenario() -> None:
        await _deployed(cp)
        current = cp.store.get_service("echo")
        body = spec(version="v1", instances=4, instances_per_worker=2).model_dump(mode="json")
        body["placement"] = {"clusters": [{"name": c} for c in CLUSTERS]}
        plan = make_plan(parse_spec(body), current.spec["package"], 2, "deploy", list(CLUSTERS))
        old = {**plan.to_record(), "kind": "release"}  # as the older Keeper wrote it
        sent = {c: len(cp.store.list_instructions(c, "echo")) for c in CLUSTERS}
        cp.store.create_operation(
            OperationRecord(op_id="old-1", service="echo", kind="release", plan=old)
        )
        op = await cp.finish("old-1")
        assert op.status == "failed"
        assert op.error.startswith("the plan of old-1 does not parse: kind: "), op.error
        assert "'deploy', 'config', 'code', 'scale', 'canary' or 'blue_green'" in op.error
        assert "\n" not in op.error
        assert {c: len(cp.store.list_instructions(c, "echo")) for c in CLUSTERS} == sent
        after = await cp.finish(cp.deploy("v2", "code"))
        assert after.status == "succeeded"
        assert cp.versions() == {"a": {"v2"}, "b": {"v2"}}

    run(scenario())


def test_an_unreadable_operation_fails_alone_and_the_round_goes_on(cp: ControlPlane) -> None:
    """A plan or a progress that does not parse (corrupt, or not a plan at all) fails its
    operation in one line; the other services' operations in the same round are carried
    out, and the next round neither raises nor touches the failed ones again."""
    run(_deployed(cp))
    term = cp.leadership.require()
    cp.store.create_operation(
        OperationRecord(op_id="ghost-1", service="ghost", kind="code", plan={"steps": [1, 2]})
    )
    echo = cp.op(cp.deploy("v2", "canary"))  # a valid plan, for another service
    stored = cp.store.create_operation(
        OperationRecord(op_id="ghost-2", service="ghost2", kind="canary", plan=echo.plan)
    )
    cp.store.advance_operation(
        "ghost-2", expected_version=stored.version, progress={"checks": "lost"}
    )
    rolling = cp.deploy("v2", "code")  # echo's newest: the canary is superseded
    cp.store.heartbeat_appmaster("a", "echo", "echo-appmaster", term.epoch)
    cp.store.heartbeat_appmaster("b", "echo", "echo-appmaster", term.epoch)
    cp.reconciler.round(term)
    ghost, ghost2 = cp.op("ghost-1"), cp.op("ghost-2")
    assert (ghost.status, ghost2.status) == ("failed", "failed")
    missing = "clusters: Field required (and 5 more)"
    assert ghost.error == f"the plan of ghost-1 does not parse: {missing}"
    assert ghost2.error.startswith("the progress of ghost-2 does not parse: checks: ")
    assert "\n" not in ghost.error + ghost2.error
    assert cp.op(rolling).status == "running"
    assert [i.op_id for i in cp.store.list_instructions("a", "echo")][-1] == f"{rolling}@a"
    cp.reconciler.round(term)
    assert (cp.op("ghost-1").version, cp.op("ghost-2").version) == (ghost.version, ghost2.version)


def test_a_release_onto_a_cluster_the_service_does_not_run_on_fails_at_once(
    cp: ControlPlane,
) -> None:
    """Its AppMaster could only reject the release (nothing to run a candidate beside):
    the operation fails before anything is sent, instead of waiting forever."""

    async def scenario() -> None:
        body = spec(version="v1", instances=4, instances_per_worker=2).model_dump(mode="json")
        body["placement"] = {"clusters": [{"name": "a"}]}
        package = make_package(FIXTURES / "echo_v1").data
        first, _ = deploy(cp.store, json.dumps(body), package, kind="deploy")
        assert (await cp.finish(first)).status == "succeeded"
        body.update(version="v2", placement={"clusters": [{"name": c} for c in CLUSTERS]})
        package = make_package(FIXTURES / "echo_v2").data
        canary, _ = deploy(cp.store, json.dumps(body), package, kind="canary")
        op = await cp.finish(canary)
        assert (op.status, op.error) == (
            "failed",
            "echo does not run on cluster b yet: deploy it there before a canary",
        )
        assert cp.store.list_instructions("b", "echo") == []

    run(scenario())


def test_a_release_step_a_cluster_rejects_is_undone_then_fails() -> None:
    """A rejected step of a canary aborts it everywhere (the other cluster may already
    send the candidate traffic); once settled, the operation ends failed, not
    rolled_back, with the reason."""
    v1 = Revision(version="v1", package="p1", import_path="echo:Echo")
    v2 = v1.model_copy(update={"version": "v2", "package": "p2"})
    svc = spec(instances=4)
    candidate = spec(version="v2", instances=4).model_dump(mode="json")
    candidate["placement"] = {"clusters": [{"name": c} for c in CLUSTERS]}
    targets = plan_targets(parse_spec(candidate), list(CLUSTERS))
    release = release_plan(
        "canary", targets, steps=None, pause_s=0, canary_instances=1, analysis=AnalysisPolicy()
    )
    plan = make_plan(parse_spec(candidate), "p2", 2, "canary", list(CLUSTERS), release=release)
    record = OperationRecord(
        op_id="c-1",
        service="echo",
        kind="canary",
        plan=plan.to_record(),
        status="running",
        step=1,
        progress={"weight": 10, "step": 1, "step_at": 0.0},
    )
    op = Operation.parse(record)
    sent = {c: Instruction(1, c, "echo", f"c-1#1@{c}", 1, {}) for c in CLUSTERS}
    canary = Release(op_id="c-1", mode=ReleaseMode.CANARY, candidate=v2, spec=svc, instances=1)
    states = {
        "a": job_state(svc, v1, release=canary.model_copy(update={"weight": 10})),
        "b": job_state(svc, v1, rejected={"c-1#1@b": "invalid instruction: no"}),
    }
    [end] = decide_weighted(op, sent, states, now=1.0)
    assert isinstance(end, Progress)
    assert end.progress.ending == "abort"
    assert end.progress.reason == "cluster b rejected c-1#1@b: invalid instruction: no"
    op = Operation.parse(replace(record, progress=end.progress.to_record()))
    aborts = decide_weighted(op, sent, states, now=2.0)
    assert {d.cluster for d in aborts if isinstance(d, Instruct)} == set(CLUSTERS)
    sent = {c: Instruction(2, c, "echo", f"c-1#abort@{c}", 1, {}) for c in CLUSTERS}
    settled = job_state(svc, v1)  # the release ended: every instance serves v1, stable
    [done] = decide_weighted(op, sent, dict.fromkeys(CLUSTERS, settled), now=3.0)
    assert done == Finish("failed", "cluster b rejected c-1#1@b: invalid instruction: no")

"""The AppMaster's control loop on a fake runtime, a real SQLite store and real
BackendWorkers (in-process): deploy, rolling updates, rollback, recovery, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ha_serving._errors import StoreUnavailable
from ha_serving._instructions import EndReleaseBody, ReleaseBody, TrafficBody
from ha_serving._spec import Revision
from ha_serving._status import ReleaseMode
from ha_serving._wire import ControlResult
from ha_serving.appmaster import JobState, Phase, StaleInstruction, UnknownEpoch
from ha_serving.appmaster._actor import worker_spec
from ha_serving.appmaster._state import OUT_OF_SERVICE
from ha_serving.backend import BackendWorker
from ha_serving.runtime import ActorSpec
from tests.unit.fixtures.control import Harness, run, spec


def test_deploy_converges_with_every_instance_routed_on_every_proxy(h: Harness) -> None:
    """A first deploy starts 2 proxies, 3 packed workers, 6 serving instances, all routed."""

    async def scenario() -> None:
        ack = await h.deploy(spec(), "echo_v1", "op-1")
        assert ack["accepted"]
        await h.converge()
        assert sorted(n for n in h.runtime.actors if "-w" in n) == ["echo-w0", "echo-w1", "echo-w2"]
        for proxy in h.proxies():
            assert len(proxy.table.entries) == 6
        assert len(await h.call_all()) == 6
        assert len(h.store.list_endpoints("echo")) == 2
        assert h.core.describe()["history"][-1]["status"] == "succeeded"

    run(scenario())


def _check_rollout_invariants(h: Harness, max_unavailable: int) -> None:
    """Every persisted state respects max_unavailable; nothing is touched while routable."""
    for state in h.saved:
        out = [i for i in state.instances.values() if i.phase in OUT_OF_SERVICE]
        assert len(out) <= max_unavailable, [(i.id, i.phase) for i in out]
        for inst in state.instances.values():
            if inst.phase == Phase.UPDATING:
                # it left routing at drained_at_routes and every proxy acked that table
                assert state.routes_acked >= inst.drained_at_routes
    for proxy in h.proxies():
        for table in proxy.tables:
            versions = {i.id: i for s in h.saved for i in s.instances.values()}
            assert all(e.instance_id in versions for e in table.entries)


def test_config_update_rolls_in_place_at_most_max_unavailable_at_a_time(h: Harness) -> None:
    """reconfigure() runs on the same objects, 2 at a time, each drained and re-checked."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        before = {r.instance_id: r for r in await h.call_all()}
        objects = {k: v.payload for k, v in before.items()}
        h.saved.clear()
        await h.deploy(spec(config={"prefix": ">"}), "echo_v1", "op-2", kind="config")
        await h.converge()
        _check_rollout_invariants(h, 2)
        after = await h.call_all()

        for r in after:
            body = json.loads(r.payload)
            assert body["prefix"] == ">"
            assert body["obj"] == json.loads(objects[r.instance_id])["obj"]  # same object

    run(scenario())


def test_code_update_loads_new_version_in_place_without_new_actors(h: Harness) -> None:
    """A new code version is loaded into the existing workers; no actor is created."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        created = list(h.runtime.created)
        h.saved.clear()
        await h.deploy(spec(version="v2"), "echo_v2", "op-2", kind="code")
        await h.converge()
        _check_rollout_invariants(h, 2)
        assert h.runtime.created == created
        assert {r.version for r in await h.call_all()} == {"v2"}
        assert {i["version"] for i in h.core.describe()["instances"]} == {"v2"}

    run(scenario())


def test_failing_update_rolls_back_after_the_threshold(h: Harness) -> None:
    """A version whose health check fails is rolled back to v1 after 2 failures."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        await h.deploy(spec(version="sick"), "sick", "op-2", kind="code")
        await h.converge()
        _check_rollout_invariants(h, 2)
        assert {r.version for r in await h.call_all()} == {"v1"}
        last = h.core.describe()["history"][-1]
        assert last["status"] == "rolled_back"
        assert last["failures"] >= 2

    run(scenario())


def test_restarted_appmaster_resumes_a_rollout_and_reattaches_by_name(h: Harness) -> None:
    """A new AppMaster mid-rollout reloads the DB state, creates no actor, finishes it."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        created = list(h.runtime.created)
        await h.deploy(spec(version="v2"), "echo_v2", "op-2", kind="code")
        for _ in range(3):
            await h.core.round()
        mid = h.core.describe()["instances"]
        assert {i["version"] for i in mid} == {"v1", "v2"} or any(
            i["phase"] != "serving" for i in mid
        )
        h.core = h.new_core()  # the old one is gone (SIGKILL); Ray starts a new one
        assert await h.core.load() is not None
        await h.converge()
        assert h.runtime.created == created
        assert {r.version for r in await h.call_all()} == {"v2"}

    run(scenario())


def test_a_restarted_appmaster_is_not_converged_until_it_has_looked(h: Harness) -> None:
    """The job's actors all died with the AppMaster: the new one loads a persisted state
    that calls them serving, and must not report ``converged`` from it (a caller
    waiting for it would route to dead proxies) until a round has seen and rebuilt."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        for name in list(h.runtime.actors):
            await h.runtime.kill(name)
        h.core = h.new_core()
        assert await h.core.load() is not None
        assert not h.core.converged()
        assert h.core.describe()["converged"] is False
        await h.converge()
        assert len(await h.call_all()) == 6

    run(scenario())


async def _die_during(h: Harness, method: str, change: Any, phase: Phase) -> None:
    """Run rounds with every worker's ``method`` hanging, until an instance is saved in
    ``phase``; then the AppMaster dies there (its task cancelled, as SIGKILL would) and
    a new one is started, as Ray restarts it."""
    hung = asyncio.Event()
    patched = {}
    for name, actor in h.runtime.actors.items():
        if "-w" in name:
            patched[name] = getattr(actor, method)

            async def hang(*_: Any, **__: Any) -> Any:
                hung.set()
                await asyncio.Event().wait()  # never answers: the AppMaster dies meanwhile

            setattr(actor, method, hang)
    await change()

    async def rounds() -> None:
        for _ in range(50):
            await h.core.round()
            h.clock.advance(1.0)

    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor()  # the dying AppMaster's: drained before the new one
    loop.set_default_executor(threads)
    task = asyncio.create_task(rounds())
    await asyncio.wait_for(hung.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # A killed process writes nothing more; here the round's other actions may still be
    # saving in threads (cancelling a task does not stop its thread): let them end first.
    threads.shutdown(wait=True)
    loop.set_default_executor(ThreadPoolExecutor())
    saved = h.store.load_appmaster_state("a", "echo")
    assert saved is not None
    assert any(i["phase"] == phase.value for i in saved[0]["instances"].values())
    for name, original in patched.items():
        setattr(h.runtime.actors[name], method, original)
    h.core = h.new_core()
    assert await h.core.load() is not None


def test_an_appmaster_killed_mid_update_finishes_the_update_after_restart(h: Harness) -> None:
    """Killed after it saved an instance as updating, before the worker answered: the
    new AppMaster updates that instance again (no one else will) and the rollout ends."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()

        async def change() -> None:
            await h.deploy(spec(config={"prefix": "after"}), "echo_v1", "op-2", kind="config")

        await _die_during(h, "reconfigure", change, Phase.UPDATING)
        await h.converge(max_rounds=60)
        assert {json.loads(r.payload)["prefix"] for r in await h.call_all()} == {"after"}
        assert h.core.describe()["history"][-1]["status"] == "succeeded"

    run(scenario())


def test_an_appmaster_killed_mid_removal_finishes_it_after_restart(h: Harness) -> None:
    """Killed after it saved an instance as removing: the new AppMaster removes it."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()

        async def change() -> None:
            await h.deploy(spec(instances=3), "echo_v1", "op-2", kind="scale")

        await _die_during(h, "remove_instance", change, Phase.REMOVING)
        await h.converge(max_rounds=60)
        assert sorted(r.instance_id for r in await h.call_all()) == ["echo-0", "echo-1", "echo-2"]
        assert len(h.core.describe()["instances"]) == 3

    run(scenario())


def test_crashed_worker_comes_back_empty_and_its_instances_are_reloaded(h: Harness) -> None:
    """Ray restarts a dead worker empty; its instances are re-loaded at the desired revision."""

    async def scenario() -> None:
        await h.deploy(spec(config={"prefix": "p"}), "echo_v1", "op-1")
        await h.converge()
        h.runtime.crash("echo-w1")
        await h.converge()
        results = await h.call_all()
        assert len(results) == 6
        assert all(b'"prefix": "p"' in r.payload for r in results)

    run(scenario())


def test_routes_carry_each_workers_direct_address_across_restarts(h: Harness) -> None:
    """Each routing entry names its worker's direct server, as the worker reported it; a
    new AppMaster asks the live workers again (the same servers: the same addresses),
    and a worker Ray restarted (a new process: a new port) is routed at its new one."""
    h.worker_actor = worker_spec(direct_host="127.0.0.1")
    h.core = h.new_core()
    crashed: list[BackendWorker] = []

    def workers() -> dict[str, BackendWorker]:
        return {n: a for n, a in h.runtime.actors.items() if isinstance(a, BackendWorker)}

    async def routed() -> dict[str, set[str]]:
        """Worker -> the addresses its entries carry, on every proxy."""
        out: dict[str, set[str]] = {}
        for proxy in h.proxies():
            for e in proxy.table.entries:
                out.setdefault(e.worker, set()).add(e.address)
        return out

    async def reported() -> dict[str, set[str]]:
        return {n: {await w.start_direct()} for n, w in workers().items()}

    async def scenario() -> None:
        try:
            await h.deploy(spec(), "echo_v1", "op-1")
            await h.converge()
            first = await reported()
            assert all(a != {""} for a in first.values())
            assert await routed() == first
            h.core = h.new_core()  # the AppMaster restarted: it knows no address
            await h.core.load()
            asked = len([c for c in h.runtime.calls if c[1] == "start_direct"])
            await h.deploy(spec(instances=8), "echo_v1", "op-2", epoch=1)  # a new table
            await h.converge()
            assert len([c for c in h.runtime.calls if c[1] == "start_direct"]) > asked
            assert await routed() == await reported()
            assert {n: first[n] for n in first} == {n: (await reported())[n] for n in first}
            crashed.append(workers()["echo-w1"])
            h.runtime.crash("echo-w1")
            await h.converge()
            after = await routed()
            assert after == await reported()
            assert after["echo-w1"] != first["echo-w1"]
        finally:
            for worker in [*workers().values(), *crashed]:
                await worker.shutdown(grace_s=0)

    run(scenario())


def test_workers_enforce_max_concurrency_told_with_each_add_and_each_change(h: Harness) -> None:
    """Each worker holds its instances to the spec's ``max_concurrency`` (the proxies to
    their shares of it): given with the instance, changed in place with the spec, a
    raised cap before the proxies' tables, a lowered one after they acknowledged
    theirs; an instance with none (added by an AppMaster that predates the cap) gets
    it, and a worker Ray restarted gets it with its reloaded instances."""

    def workers() -> dict[str, BackendWorker]:
        return {n: a for n, a in h.runtime.actors.items() if isinstance(a, BackendWorker)}

    async def caps() -> dict[str, int | None]:
        return {
            i: s["max_concurrency"]
            for w in workers().values()
            for i, s in (await w.stats()).items()
        }

    def shares() -> set[int]:
        return {e.max_concurrency for p in h.proxies() for e in p.table.entries}

    def since(mark: int) -> list[str]:
        """The control calls made since ``mark``: caps told and tables pushed."""
        told = {"set_max_concurrency", "update_routes"}
        return [m for _, m in h.runtime.calls[mark:] if m in told]

    async def scenario() -> None:
        await h.deploy(spec(max_concurrency=32), "echo_v1", "op-1")
        await h.converge()
        assert set((await caps()).values()) == {32}  # given with add_instance
        assert shares() == {16}
        assert "set_max_concurrency" not in since(0)

        mark = len(h.runtime.calls)
        await h.deploy(spec(max_concurrency=8), "echo_v1", "op-2")
        await h.converge()
        assert set((await caps()).values()) == {8}
        assert shares() == {4}
        told = since(mark)
        assert told.index("set_max_concurrency") > max(
            i for i, m in enumerate(told) if m == "update_routes"
        )  # lowered once every proxy held a table within it

        mark = len(h.runtime.calls)
        await h.deploy(spec(max_concurrency=64), "echo_v1", "op-3")
        await h.converge()
        assert set((await caps()).values()) == {64}
        assert shares() == {32}
        told = since(mark)
        assert told.index("update_routes") > max(
            i for i, m in enumerate(told) if m == "set_max_concurrency"
        )  # raised before any proxy held a table with the larger share

        h.core = h.new_core()  # a new AppMaster, and an instance it finds uncapped
        await h.core.load()
        some = next(iter(await workers()["echo-w0"].stats()))
        assert (await workers()["echo-w0"].set_max_concurrency(some, None)).ok
        assert None in (await caps()).values()
        await h.converge()
        assert set((await caps()).values()) == {64}

        h.runtime.crash("echo-w1")
        await h.converge()
        assert set((await caps()).values()) == {64}
        assert len(await caps()) == 6

    run(scenario())


class _PreCapWorker(BackendWorker):
    """A worker of the code before the cap: ``add_instance`` takes no ``max_concurrency``
    and ``stats`` reports none."""

    async def add_instance(  # type: ignore[override]
        self,
        instance_id: str,
        *,
        package: bytes,
        digest: str,
        import_path: str,
        version: str,
        config: dict[str, Any] | None = None,
    ) -> ControlResult:
        return await super().add_instance(
            instance_id,
            package=package,
            digest=digest,
            import_path=import_path,
            version=version,
            config=config,
        )

    async def stats(self) -> dict[str, Any]:  # type: ignore[override]
        stats = await super().stats()
        return {i: {k: v for k, v in s.items() if k != "max_concurrency"} for i, s in stats.items()}


def test_workers_of_code_before_the_cap_still_get_their_instances(h: Harness) -> None:
    """A new AppMaster loads instances on a worker that cannot take a cap (without one:
    it enforces none, as before) and tells it none."""
    h.worker_actor = lambda name, _state: ActorSpec(name=name, cls=_PreCapWorker, args=(name,))
    h.core = h.new_core()

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        assert len(await h.call_all()) == 6
        assert not [c for c in h.runtime.calls if c[1] == "set_max_concurrency"]

    run(scenario())


def test_job_gone_is_rebuilt_from_the_persisted_revision_not_defaults(h: Harness) -> None:
    """All actors lost after an update to v2: a fresh AppMaster rebuilds v2 from the DB."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        await h.deploy(spec(version="v2", config={"prefix": "x"}), "echo_v2", "op-2")
        await h.converge()
        h.runtime.actors.clear()
        h.core = h.new_core()
        await h.core.load()
        await h.converge()
        results = await h.call_all()
        assert {r.version for r in results} == {"v2"}
        assert len(results) == 6

    run(scenario())


def test_scale_up_and_down_packs_workers_and_stops_empty_ones(h: Harness) -> None:
    """6 -> 9 adds a worker's worth; 9 -> 3 drains the highest and stops empty workers."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        await h.deploy(spec(instances=9), "echo_v1", "op-2", kind="scale")
        await h.converge()
        assert len(await h.call_all()) == 9
        await h.deploy(spec(instances=3), "echo_v1", "op-3", kind="scale")
        await h.converge()
        assert sorted(r.instance_id for r in await h.call_all()) == ["echo-0", "echo-1", "echo-2"]
        assert sorted(n for n in h.runtime.actors if "-w" in n) == ["echo-w0", "echo-w1"]
        # back up: the stopped workers' names are never used again (proxies may still
        # hold handles to the dead actors under those names)
        await h.deploy(spec(instances=9), "echo_v1", "op-4", kind="scale")
        await h.converge()
        assert len(await h.call_all()) == 9
        live = sorted(n for n in h.runtime.actors if "-w" in n)
        assert live == ["echo-w0", "echo-w1", "echo-w2-r1", "echo-w3-r1", "echo-w4-r1"]

    run(scenario())


def test_stale_epoch_is_refused_and_repeated_op_id_ignored(h: Harness) -> None:
    """Fencing: epoch 4 after epoch 5 is refused; the same op_id twice is applied once."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1", epoch=5)
        again = await h.deploy(spec(instances=2), "echo_v1", "op-1", epoch=5)
        assert again["duplicate"]
        assert h.core.state is not None
        assert h.core.state.spec.instances == 6
        with pytest.raises(StaleInstruction):
            await h.deploy(spec(instances=2), "echo_v1", "op-2", epoch=4)

    run(scenario())


def test_control_plane_down_leaves_proxies_their_last_table(h: Harness) -> None:
    """With the store failing, rounds fail, but proxies keep routing every instance."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        package = h.package("echo_v2")

        def db_down(*_: Any, **__: Any) -> Any:
            raise StoreUnavailable("db down")

        h.store.save_appmaster_state = db_down  # type: ignore[method-assign]
        h.store.load_appmaster_state = db_down  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            await h.core.apply(spec(version="v2"), package, op_id="op-2")
        h.runtime.crash("echo-w1")  # something needs doing, but nothing can be persisted
        with pytest.raises(StoreUnavailable):
            await h.core.round()
        assert all(len(p.table.entries) == 6 for p in h.proxies())
        assert h.core.state is not None
        assert h.core.state.desired.version == "v1"

    run(scenario())


def test_resource_change_replaces_workers_one_at_a_time(h: Harness) -> None:
    """New resources cannot be applied in place: each worker is drained, killed and
    created again (one worker out at a time); config-only changes never do that."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        first = {n for n in h.runtime.actors if "-w" in n}
        h.saved.clear()
        await h.deploy(spec(resources={"num_cpus": 0.5}), "echo_v1", "op-2", kind="deploy")
        await h.converge()
        for state in h.saved:
            out = [i for i in state.instances.values() if i.phase != Phase.SERVING]
            assert len({i.worker for i in out}) <= 1, [(i.id, i.phase) for i in out]
        workers = sorted(n for n in h.runtime.actors if "-w" in n)
        assert workers == ["echo-w0-r1", "echo-w1-r1", "echo-w2-r1"]
        assert not set(first) & set(workers)
        assert all(h.runtime.specs[w].num_cpus == 0.5 for w in workers)
        assert len(await h.call_all()) == 6

    run(scenario())


def test_state_saved_by_an_earlier_version_is_still_read() -> None:
    """A JobState whose ``workers`` is a list (before placement keys) loads, each worker
    keyed with its spec's resources, so an upgrade replaces no worker."""
    state = JobState(
        service="echo",
        cluster="a",
        spec=spec(),
        desired=Revision(version="1", package="p", import_path="echo:Echo"),
    )
    record = state.to_record()
    record["workers"] = ["echo-w0", "echo-w1"]
    loaded = JobState.from_record(record)
    assert loaded.workers == dict.fromkeys(["echo-w0", "echo-w1"], loaded.placement_key)


# --- version groups: canary and blue-green ------------------------------------------


def _release(  # noqa: PLR0917 - a test's shorthand
    h: Harness, fixture: str, op: str, mode: str, n: int, weight: int
) -> ReleaseBody:
    return ReleaseBody(
        op=op,
        mode=ReleaseMode(mode),
        spec=spec(version=fixture.replace("echo_", "")),
        package=h.package(fixture),
        instances=n,
        weight=weight,
    )


def _groups(h: Harness) -> dict[str, set[str]]:
    """Group -> versions of the instances routed on the first proxy."""
    out: dict[str, set[str]] = {}
    for e in h.proxies()[0].table.entries:
        out.setdefault(e.group, set()).add(e.version)
    return out


def test_canary_takes_instances_in_place_and_weights_then_promotes(h: Harness) -> None:
    """A canary updates 2 of 6 instances in place to v2 and gives them the weight asked
    for, whatever their count; promote rolls the other 4 in place, no new actor."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        created = list(h.runtime.created)
        h.saved.clear()
        body = _release(h, "echo_v2", "canary-1", "canary", 2, 10)
        assert await h.core.release(body, op_id="canary-1#0@a", epoch=1) == "applied"
        await h.converge()
        _check_rollout_invariants(h, 2)
        table = h.proxies()[0].table
        assert table.candidate_weight == 10
        assert _groups(h) == {"stable": {"v1"}, "candidate": {"v2"}}
        assert sum(e.group == "candidate" for e in table.entries) == 2
        assert len(table.entries) == 6
        step = body.model_copy(update={"weight": 50})
        await h.core.release(step, op_id="canary-1#1@a", epoch=1)
        await h.converge()
        assert h.proxies()[0].table.candidate_weight == 50
        promote = EndReleaseBody(kind="promote", op="canary-1")
        await h.core.release(promote, op_id="canary-1#promote@a", epoch=1)
        await h.converge()
        _check_rollout_invariants(h, 2)
        assert _groups(h) == {"stable": {"v2"}}
        assert h.proxies()[0].table.candidate_weight == 0
        assert h.runtime.created == created
        state = h.core.state
        assert state is not None
        assert state.release is None
        assert state.desired.version == "v2"

    run(scenario())


def test_aborted_canary_loses_its_traffic_at_once_and_rolls_back_in_place(h: Harness) -> None:
    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        await h.core.release(
            _release(h, "echo_v2", "canary-1", "canary", 2, 50), op_id="c#0@a", epoch=1
        )
        await h.converge()
        abort = EndReleaseBody(kind="abort", op="canary-1")
        await h.core.release(abort, op_id="c#abort@a", epoch=1)
        # the very next table gives the candidate nothing, before any instance is touched
        await h.core.round()
        assert h.proxies()[0].table.candidate_weight == 0
        await h.converge()
        assert _groups(h) == {"stable": {"v1"}}
        assert len(h.proxies()[0].table.entries) == 6

    run(scenario())


def test_failing_canary_aborts_itself_after_the_threshold(h: Harness) -> None:
    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        body = _release(h, "sick", "canary-1", "canary", 2, 20)
        body = body.model_copy(update={"spec": spec(version="sick")})
        await h.core.release(body, op_id="c#0@a", epoch=1)
        await h.converge()
        state = h.core.state
        assert state is not None
        assert state.release is None
        assert state.history[-1].op_id == "c#0@a"
        assert state.history[-1].status == "rolled_back"
        assert _groups(h) == {"stable": {"v1"}}

    run(scenario())


def test_blue_green_adds_a_full_green_set_switches_and_retires_blue(h: Harness) -> None:
    """Green is 6 extra instances on new workers; weight 100 switches all traffic to it
    while blue stays warm; promote retires blue and stops its workers."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        blue_workers = {n for n in h.runtime.actors if "-w" in n}
        body = _release(h, "echo_v2", "bg-1", "blue_green", 6, 0)
        await h.core.release(body, op_id="bg-1#0@a", epoch=1)
        await h.converge()
        table = h.proxies()[0].table
        assert len(table.entries) == 12
        assert table.candidate_weight == 0
        assert _groups(h) == {"stable": {"v1"}, "candidate": {"v2"}}
        green_workers = {n for n in h.runtime.actors if "-w" in n} - blue_workers
        assert len(green_workers) == 3
        await h.core.release(body.model_copy(update={"weight": 100}), op_id="bg-1#1@a", epoch=1)
        await h.converge()
        assert h.proxies()[0].table.candidate_weight == 100
        promote = EndReleaseBody(kind="promote", op="bg-1")
        await h.core.release(promote, op_id="bg-1#p@a", epoch=1)
        await h.converge()
        assert _groups(h) == {"stable": {"v2"}}
        assert len(h.proxies()[0].table.entries) == 6
        assert {n for n in h.runtime.actors if "-w" in n} == green_workers

    run(scenario())


def test_blue_green_rollback_is_a_traffic_flip_and_green_retires(h: Harness) -> None:
    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        body = _release(h, "echo_v2", "bg-1", "blue_green", 6, 100)
        await h.core.release(body, op_id="bg-1#0@a", epoch=1)
        await h.converge()
        abort = EndReleaseBody(kind="abort", op="bg-1")
        await h.core.release(abort, op_id="bg-1#a@a", epoch=1)
        await h.core.round()
        table = h.proxies()[0].table
        assert table.candidate_weight == 0
        assert {e.group for e in table.entries if e.version == "v2"} <= {"retiring"}
        await h.converge()
        assert _groups(h) == {"stable": {"v1"}}
        assert len(h.proxies()[0].table.entries) == 6

    run(scenario())


def test_release_instructions_are_fenced_and_idempotent(h: Harness) -> None:
    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1", epoch=5)
        await h.converge()
        body = _release(h, "echo_v2", "canary-1", "canary", 1, 10)
        with pytest.raises(StaleInstruction):
            await h.core.release(body, op_id="c#0@a", epoch=4)
        assert await h.core.release(body, op_id="c#0@a", epoch=5) == "applied"
        assert await h.core.release(body, op_id="c#0@a", epoch=5) == "duplicate"
        await h.core.release(TrafficBody(weight=0), op_id="t#1@a", epoch=6)
        await h.converge()
        state = h.core.state
        assert state is not None
        assert state.cluster_weight == 0
        labels = {e.labels["weight"] for e in h.store.list_endpoints("echo")}
        assert labels == {0}

    run(scenario())


def test_ending_a_release_that_is_not_running_is_rejected_with_the_reason(h: Harness) -> None:
    """A promote or abort aimed at a release that does not run here changes nothing and is
    rejected with a one-line reason (the leader fails the operation with it), never
    recorded as applied: a promote of one never started, of one other than the running
    one, or of one aborted already."""

    async def scenario() -> None:
        take = h.core.take_instruction
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        before = h.core.state
        promote9 = {"kind": "promote", "op": "canary-9"}
        assert await take(1, promote9, op_id="canary-9#promote@a", epoch=1) == "rejected"
        assert h.core.state is not None
        consumed = {"rejected": {}, "last_instruction": 0, "highest_epoch": 0}
        assert h.core.state.model_copy(update=consumed) == before  # nothing else changed
        body = _release(h, "echo_v2", "canary-1", "canary", 2, 10)
        assert await take(2, body.to_record(), op_id="canary-1#0@a", epoch=1) == "applied"
        await h.converge()
        promote2 = {"kind": "promote", "op": "canary-2"}
        assert await take(3, promote2, op_id="canary-2#promote@a", epoch=1) == "rejected"
        abort1 = {"kind": "abort", "op": "canary-1"}
        assert await take(4, abort1, op_id="canary-1#abort@a", epoch=1) == "applied"
        promote1 = {"kind": "promote", "op": "canary-1"}
        assert await take(5, promote1, op_id="canary-1#promote@a", epoch=1) == "rejected"
        await h.converge()
        state = h.core.state
        assert state is not None
        assert state.rejected == {
            "canary-9#promote@a": "invalid instruction: cannot promote release canary-9: it never "
            "ran here, no release runs",
            "canary-2#promote@a": "invalid instruction: cannot promote release canary-2: it never "
            "ran here, release canary-1 runs",
            "canary-1#promote@a": "invalid instruction: cannot promote release canary-1: it was "
            "aborted here, no release runs",
        }
        assert not set(state.rejected) & set(state.applied_ops)
        assert state.desired.version == "v1"
        assert _groups(h) == {"stable": {"v1"}}

    run(scenario())


def test_an_abort_of_a_release_it_aborted_itself_is_in_effect_not_rejected(
    h: Harness,
) -> None:
    """A failing canary is aborted by the AppMaster itself; the leader's abort that
    follows finds it in effect (said so in the audit trail), so the operation ends as
    rolled back, not as failed by a rejection."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        body = _release(h, "sick", "canary-1", "canary", 2, 20)
        body = body.model_copy(update={"spec": spec(version="sick")})
        await h.core.take_instruction(1, body.to_record(), op_id="canary-1#0@a", epoch=1)
        await h.converge()
        abort = {"kind": "abort", "op": "canary-1"}
        outcome = await h.core.take_instruction(2, abort, op_id="canary-1#abort@a", epoch=1)
        assert outcome == "duplicate"
        state = h.core.state
        assert state is not None
        assert state.rejected == {}
        assert state.history[-1].status == "rolled_back"
        assert state.ended_releases == {"canary-1": "aborted"}
        events = [e for e in h.store.list_events(service="echo") if e.kind == "abort"]
        assert [e.detail for e in events] == [
            {"kind": "abort", "op": "canary-1", "in_effect": True}
        ]

    run(scenario())


def test_an_action_the_bookkeeper_does_not_know_raises_instead_of_being_dropped(
    h: Harness,
) -> None:
    """``Actions.book`` handles each state-only action; anything else reaching it is a bug and
    raises (the round crashes loudly) rather than falling through unchanged."""
    from ha_serving.appmaster._planner import StartProxy

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        before = h.core.state
        with pytest.raises(AssertionError):
            await h.core.actions.book(StartProxy("echo-p9"))  # type: ignore[arg-type]
        assert h.core.state == before

    run(scenario())


def _body(h: Harness, kind: str, **spec_changes: Any) -> dict[str, Any]:
    """An instruction body as the leader builds it (``cluster_body``)."""
    return {
        "spec": spec(**spec_changes).model_dump(mode="json"),
        "package": h.package("echo_v1"),
        "kind": kind,
        "generation": 2,
    }


def test_an_instruction_it_cannot_carry_out_is_rejected_and_the_next_one_flows(
    h: Harness,
) -> None:
    """A Deploy of kind "release" made a body without the release's fields, and a newer
    Keeper may send a kind this AppMaster does not know: each is consumed as rejected
    (recorded in the state with a one-line reason, for the leader to fail the operation),
    not raised, so the link does not reconnect from it forever; the next one applies."""

    async def scenario() -> None:
        take = h.core.take_instruction
        assert await take(1, _body(h, "deploy"), op_id="op-1@a", epoch=1) == "applied"
        assert await take(2, _body(h, "release"), op_id="op-2@a", epoch=1) == "rejected"
        assert await take(3, _body(h, "resize"), op_id="op-3@a", epoch=1) == "rejected"
        promote = {"kind": "promote", "op": 7}
        assert await take(4, promote, op_id="op-4@a", epoch=1) == "rejected"
        changed = _body(h, "config", config={"prefix": "next"})
        assert await take(5, changed, op_id="op-5@a", epoch=2) == "applied"
        # as the link carries it: JSON text, parsed by the core (not JSON: rejected)
        assert await take(6, '{"kind": "scale", ', op_id="op-6@a", epoch=2) == "rejected"
        surge = {**_body(h, "scale"), "surge": 2}  # a field it does not know: not ignored
        assert await take(7, json.dumps(surge), op_id="op-7@a", epoch=2) == "rejected"
        state = h.core.state
        assert state is not None
        assert state.last_instruction == 7
        assert state.desired.config == {"prefix": "next"}
        assert set(state.rejected) == {"op-2@a", "op-3@a", "op-4@a", "op-6@a", "op-7@a"}
        assert "needs op, mode, instances, weight" in state.rejected["op-2@a"]
        assert "unknown kind 'resize'" in state.rejected["op-3@a"]
        assert "op: Input should be a valid string" in state.rejected["op-4@a"]
        assert state.rejected["op-6@a"].startswith("invalid instruction: not JSON: ")
        assert "a scale instruction has no field surge" in state.rejected["op-7@a"]
        assert all("\n" not in why for why in state.rejected.values())
        saved = h.store.load_appmaster_state("a", "echo")
        assert saved is not None
        assert JobState.from_record(saved[0]).rejected == state.rejected
        kinds = [(e.kind, e.op_id) for e in h.store.list_events(service="echo")]
        assert ("rejected", "op-2@a") in kinds

    run(scenario())


def test_an_epoch_no_keeper_was_granted_is_refused(h: Harness) -> None:
    """A caller of ``apply`` (or a forged instruction) cannot pass an epoch above the
    Keepers' lease: it would fence the real leader out. It is refused, and the leader's
    next instruction still applies."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1", epoch=5)
        with pytest.raises(UnknownEpoch, match="lease epoch 6"):
            await h.deploy(spec(instances=2), "echo_v1", "op-2", epoch=1_000_000)
        with pytest.raises(StaleInstruction):  # the same refusal, for callers of old
            await h.core.release(TrafficBody(weight=0), op_id="t@a", epoch=7)
        forged = await h.core.take_instruction(
            1, _body(h, "scale", instances=1), op_id="op-3@a", epoch=99
        )
        assert forged == "refused"
        state = h.core.state
        assert state is not None
        assert (state.highest_epoch, state.spec.instances, state.last_instruction) == (5, 6, 1)
        ok = await h.core.take_instruction(
            2, _body(h, "scale", instances=2), op_id="op-4@a", epoch=6
        )
        assert ok == "applied"
        assert h.core.state is not None
        assert h.core.state.spec.instances == 2

    run(scenario())

"""The scale simulation's harness (sim/, issue #16): the timed fake runtime and fake
worker, the figures, the instruments, and one tiny steady run end to end against a
private MariaDB with two real Keeper processes."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ha_serving._settings import AppMasterSettings
from ha_serving.runtime import ActorSpec, ActorUnavailable
from ha_serving.testing import ActorTimings, FakeRuntime, FakeWorker
from ha_serving.util.clock import FakeClock
from sim._figures import (
    EndpointChange,
    Propagation,
    Summary,
    cpu_seconds_from_stat,
    loglog_slope,
    percentile,
    rate,
)
from sim._probe import ProbedStore, QueryCounter, statement_kind
from sim._report import goal_rows
from sim._scenarios import ScenarioResult, Sim, SimConfig, scaled

TIMINGS = ActorTimings(start_s=2.0, load_s=3.0, reconfigure_s=0.5, drain_s=1.0, stop_s=0.25)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_actor_start_and_load_take_their_time_in_fake_time() -> None:
    """A created actor exists at once but answers only after start_s; add_instance takes
    load_s; other calls are immediate."""

    async def scenario() -> None:
        clock = FakeClock()
        rt = FakeRuntime(TIMINGS, sleep=clock.sleep)
        spec = ActorSpec(name="w", cls=FakeWorker, args=("w",))
        create = asyncio.create_task(rt.create(spec))
        await _settle()
        assert await rt.exists("w")  # as in Ray: a starting actor exists
        ping = asyncio.create_task(rt.call("w", "ping"))
        clock.advance(1.5)  # binary-exact steps: the waits end exactly at 2.0 and 3.0
        await _settle()
        assert not create.done()
        assert not ping.done()  # a call waits for the constructor
        clock.advance(0.5)
        await _settle()
        assert create.done()
        assert await ping == "w"
        load = asyncio.create_task(
            rt.call(
                "w", "add_instance", "i1", package=b"", digest="", import_path="m:C", version="v1"
            )
        )
        await _settle()  # the load's sleep is registered before time moves
        clock.advance(2.5)
        await _settle()
        assert not load.done()
        clock.advance(0.5)
        await _settle()
        assert (await load).ok
        assert await rt.call("w", "stats") == {
            "i1": {"inflight": 0, "version": "v1", "healthy": True, "max_concurrency": None}
        }

    asyncio.run(scenario())


def test_an_actor_killed_during_a_timed_call_fails_it() -> None:
    """A drain (wait_idle) that outlives its actor raises ActorUnavailable, as a Ray call
    to a dead actor does, instead of answering from a ghost."""

    async def scenario() -> None:
        clock = FakeClock()
        rt = FakeRuntime(TIMINGS, sleep=clock.sleep)
        await asyncio.gather(
            rt.create(ActorSpec(name="w", cls=FakeWorker, args=("w",))),
            _advance_soon(clock, TIMINGS.start_s),
        )
        drain = asyncio.create_task(rt.call("w", "wait_idle", "i1", 5.0))
        await _settle()
        await rt.kill("w")
        clock.advance(TIMINGS.drain_s)
        with pytest.raises(ActorUnavailable):
            await drain

    asyncio.run(scenario())


async def _advance_soon(clock: FakeClock, seconds: float) -> None:
    await _settle()
    clock.advance(seconds)


def test_timings_refuse_negative_values_and_scale() -> None:
    with pytest.raises(ValueError, match="load_s"):
        ActorTimings(load_s=-1)
    assert scaled(TIMINGS, 0.5).load_s == 1.5
    assert TIMINGS.of("reconfigure") == 0.5
    assert TIMINGS.of("shutdown") == 0.25
    assert TIMINGS.of("stats") == 0.0


def test_fake_worker_follows_backend_worker_control_semantics() -> None:
    async def scenario() -> None:
        w = FakeWorker("w")
        missing = await w.reconfigure("nope", {})
        assert (missing.ok, missing.code) == (False, "NOT_FOUND")
        assert not (
            await w.load_code("nope", package=b"", digest="", import_path="m:C", version="v2")
        ).ok
        await w.add_instance("a", package=b"", digest="", import_path="m:C", version="v1")
        assert (await w.load_code("a", package=b"", digest="", import_path="m:C", version="v2")).ok
        assert (await w.stats())["a"]["version"] == "v2"
        assert await w.check_health_all() == {"a": True}
        await w.remove_instance("a")
        assert not await w.check_health("a")

    asyncio.run(scenario())


# --- figures ------------------------------------------------------------------------


def test_percentiles_interpolate_between_order_statistics() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(map(float, range(101))), 99) == 99.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)
    assert Summary.of([]).to_json() == {"count": 0, "p50": None, "p99": None, "max": None}


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_a_percentile_lies_within_the_values(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert min(values) - 1e-6 <= p <= max(values) + 1e-6


def test_cpu_seconds_read_past_a_command_name_with_spaces_and_parens() -> None:
    # pid (comm) state ppid ... utime(14) stime(15)
    fields = ["S", *["0"] * 10, "250", "150", *["0"] * 30]
    line = "4242 (maria db) (x)) " + " ".join(fields)
    assert cpu_seconds_from_stat(line, 100) == 4.0


def test_rates_and_growth_exponents() -> None:
    assert rate({"a": 10}, {"a": 30, "b": 5}, 2.0) == {"a": 10.0, "b": 2.5}
    with pytest.raises(ValueError, match="longer than 0"):
        rate({}, {}, 0)
    xs = [1.0, 2.0, 4.0, 8.0]
    assert loglog_slope(xs, [x**2 for x in xs]) == pytest.approx(2.0)
    assert loglog_slope(xs, [7.0] * 4) == pytest.approx(0.0)
    assert math.isnan(loglog_slope([1.0], [1.0]))


def test_propagation_awaits_only_the_newest_state_of_each_address() -> None:
    p = Propagation()
    p.change(EndpointChange("s", "a:1", 100, at=10.0))
    p.change(EndpointChange("s", "a:1", 0, at=11.0))  # supersedes the first
    p.change(EndpointChange("s", "b:1", None, at=10.5))
    assert p.seen("s", [("a:1", 100), ("b:1", 100)], at=12.0) == []
    assert p.seen("other", [("a:1", 0)], at=12.0) == []
    assert p.seen("s", [("a:1", 0), ("b:1", 100)], at=12.5) == [1.5]
    assert p.pending == 1
    assert p.seen("s", [("a:1", 0)], at=13.0) == [2.5]
    assert p.delays == [1.5, 2.5]
    assert p.pending == 0
    # a change stamped before a watcher's report, recorded after it: counted at once
    p.change(EndpointChange("s", "c:1", 100, at=12.9))
    assert p.pending == 1  # the last list (at 13.0) does not show c:1
    p.seen("s", [("a:1", 0), ("c:1", 100)], at=13.2)
    p.change(EndpointChange("s", "d:1", None, at=13.1))
    assert p.pending == 0
    assert p.delays == [1.5, 2.5, pytest.approx(0.3), pytest.approx(0.1)]


# --- instruments ----------------------------------------------------------------------


def test_query_counter_and_probed_store_see_what_discovery_will_show(tmp_path: Path) -> None:
    probe = Propagation()
    store = ProbedStore.open(f"sqlite:///{tmp_path / 's.db'}", probe)
    counter = QueryCounter.attach(store)
    try:
        store.upsert_endpoint("s", "c0", "a:1", {"weight": 100}, 10)
        store.upsert_endpoint("s", "c0", "a:1", {"weight": 100}, 10)  # a heartbeat: no change
        store.upsert_endpoint("s", "c0", "b:1", {"weight": 100}, 10)
        store.remove_endpoints("s", "c0", keep={"b:1"})
        counts = counter.snapshot("x")
        assert counts["x.writes"] >= 4
        assert counts["x.queries"] >= counts["x.writes"]
        assert 4 <= counts["x.transactions"] <= counts["x.queries"]
        assert len(probe.seen("s", [("b:1", 100)], at=1e12)) == 2  # a:1 went, b:1 came
        assert probe.pending == 0
        assert store.forget_cluster("c0") == [("s", "b:1")]
        store.upsert_endpoint("s", "c0", "b:1", {"weight": 100}, 10)  # a dying AppMaster's
        assert probe.pending == 0
    finally:
        store.close()


def test_writes_are_counted_by_verb_and_table() -> None:
    assert statement_kind("UPDATE endpoints SET x=1") == "UPDATE endpoints"
    assert statement_kind("INSERT INTO `appmasters` (a) VALUES (1)") == "INSERT appmasters"
    assert statement_kind("DELETE FROM endpoints WHERE 1") == "DELETE endpoints"
    assert statement_kind("") == "? ?"


def _wave(round_p99: float, wave_s: float, one_s: float, lost: int, scenario: str) -> Any:
    action: dict[str, Any] = {"wave_services": 100, "span_s": wave_s, "ops": 100}
    if scenario == "release-wave":
        action |= {"one_service": {"span_s": one_s}, "wave_vs_one": round(wave_s / one_s, 2)}
    else:
        action |= {
            "acknowledged_ops_lost": [f"op-{n}" for n in range(lost)],
            "acknowledged_ops_not_succeeded": lost,
        }
    figures = {
        "round_s": {"count": 9, "p50": 0.1, "p99": round_p99, "max": round_p99},
        "propagation_s": {"count": 9, "p50": 0.3, "p99": 0.9, "max": 1.0},
        "action": action,
    }
    config = {"services": 1000, "clusters": 3, "instances": 100}
    return ScenarioResult(scenario, config, figures)


def test_the_goal_table_says_met_only_when_a_figure_is_within_its_goal() -> None:
    """The report's verdicts against issue #16's goals; each planted miss is caught."""
    good = goal_rows(
        [_wave(0.4, 30, 20, 0, "release-wave"), _wave(0.4, 30, 20, 0, "leader-failover")]
    )
    assert not any("NOT met" in row for row in good)
    assert sum(row.endswith("| met |") for row in good) == 6  # round x2, discovery x2, wave, lost
    slow = goal_rows([_wave(0.6, 30, 20, 0, "release-wave")])
    assert [r for r in slow if "NOT met" in r] == [
        "| release-wave: reconcile round p99 <= 500 ms | 600 ms | NOT met |"
    ]
    long_wave = goal_rows([_wave(0.4, 41, 20, 0, "release-wave")])
    assert any("wave within 2x" in r and "2.05x | NOT met" in r for r in long_wave)
    lossy = goal_rows([_wave(0.4, 30, 20, 1, "leader-failover")])
    assert any("no acknowledged op lost | 1 lost of 100 | NOT met" in r for r in lossy)


# --- end to end -----------------------------------------------------------------------


@pytest.mark.mysql
def test_a_tiny_steady_run_end_to_end(mysql_server: str, tmp_path: Path) -> None:
    """2 services x 2 clusters x 2 instances: both deploys succeed through the real
    Keeper processes, every proxy endpoint reaches its watcher, the leader's rounds are
    timed and the DB statements counted; the report is written."""
    from sim._report import write_runs

    cfg = SimConfig(
        services=2,
        clusters=2,
        instances=2,
        # long enough for every AppMaster to renew its endpoints once (2 s used to do,
        # when they were written every round)
        hold_s=AppMasterSettings().endpoint_refresh_s + 2.0,
        timeout_s=120,
        timings=scaled(TIMINGS, 0.05),
    )
    seen: list[tuple[str, int, int]] = []
    sim = Sim(
        cfg,
        mysql_server,
        None,
        tmp_path,
        lambda what, done, total: seen.append((what, done, total)),
        net="127.0.121",
    )
    result = asyncio.run(sim.run("steady"))
    f: dict[str, Any] = result.figures
    assert f["deploy"]["statuses"] == {"succeeded": 2}
    assert f["deploy"]["propagation_s"]["count"] == 2 * 2 * 2  # S x C x proxies
    assert f["propagation_pending"] == 0
    assert f["instances"] == 2 * 2 * 2
    assert f["round_s"]["count"] >= 2
    assert f["reconciler_transactions_per_round"] >= 1
    assert f["db_per_s"]["keeper.reconciler.queries"] > 0
    assert f["db_per_s"]["appmasters.writes"] > 0  # endpoint renewals
    assert f["db_cpu_cores"] is None  # no pid given
    assert ("deploying", 2, 2) in seen
    assert not any(sim.keepers[k].pid and _alive(sim.keepers[k].pid) for k in sim.keepers)
    out = write_runs(tmp_path / "report", [result], None)
    assert {"report.md", "report.json", "rounds.png"} <= {p.name for p in out.iterdir()}


@pytest.mark.mysql
def test_a_tiny_release_wave_is_measured_against_one_services_update(
    mysql_server: str, tmp_path: Path
) -> None:
    """2 x 2 x 2, a wave of one service: the wave's ops succeed, then one other
    service's update alone is the yardstick; the report states each goal's verdict."""
    from sim._report import write_runs

    cfg = SimConfig(
        services=2,
        clusters=2,
        instances=2,
        wave_fraction=0.5,
        hold_s=1.0,
        timeout_s=120,
        timings=scaled(TIMINGS, 0.05),
    )
    sim = Sim(cfg, mysql_server, None, tmp_path, lambda *_: None, net="127.0.121")
    result = asyncio.run(sim.run("release-wave"))
    action: dict[str, Any] = result.figures["action"]
    assert action["wave_services"] == 1
    assert action["statuses"] == {"succeeded": 1}
    assert action["one_service"]["statuses"] == {"succeeded": 1}
    assert action["span_s"] > 0
    assert action["one_service"]["span_s"] > 0
    assert action["wave_vs_one"] == round(action["span_s"] / action["one_service"]["span_s"], 2)
    report = (write_runs(tmp_path / "report", [result], None) / "report.md").read_text()
    assert "a 1-service wave within 2x one service's update" in report


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

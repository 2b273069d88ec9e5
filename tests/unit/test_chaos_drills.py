"""The drill catalogue is valid data: every experiment in chaos/drills parses, names only
functions of chaos.actions / chaos.probes with arguments they take, ends its rollbacks
with heal, states its duration, and covers the faults of issue 10 (processes, nodes,
clusters, Keepers, the DB, the network, the clock, the CPU, Redis); a drill that faults
the load's links says so, one that faults the Keepers' DB link routes them through it
first; a broken drill is refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chaos.catalogue import DRILLS_DIR, InvalidDrill, load_catalogue, load_drill, select

SLICE = {
    "control",
    "kill-keeper-leader",
    "kill-keeper-follower",
    "sigstop-keeper-leader",
    "kill-backend-worker",
    "kill-proxy",
    "kill-appmaster",
    "kill-worker-node",
    "kill-head",
    "kill-cluster",
    "kill-keeper-leader-and-cluster",
    "db-down-30s",
    "keeper-db-latency",
    "keeper-db-blackhole",
    "client-proxy-latency",
    "client-proxy-resets",
    "cpu-starvation",
    "redis-kill-restart",
    "clock-jump-keepers",
    # issue 13: the autoscaler's own faults (tests/unit/test_chaos_scaling.py)
    "autoscale-kill-appmaster",
    "autoscale-kill-keeper-leader",
    "autoscale-lose-cluster",
}


def test_every_drill_file_loads_and_the_catalogue_covers_this_slice() -> None:
    drills = load_catalogue()
    assert {d.name for d in drills} == SLICE
    assert len(list(DRILLS_DIR.glob("*.json"))) == len(drills)
    assert drills[0].meta.control
    assert not any(d.meta.control for d in drills[1:])
    orders = [d.meta.order for d in drills]
    assert orders == sorted(orders)


@pytest.mark.parametrize("path", sorted(DRILLS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_chaos_toolkit_accepts_each_drill(path: Path) -> None:
    """chaoslib's own validation: it imports each function and binds its arguments."""
    experiment = pytest.importorskip("chaoslib.experiment")
    experiment.ensure_experiment_is_valid(json.loads(path.read_text()))


def test_recovery_clocks_and_thresholds_are_where_the_issue_puts_them() -> None:
    drills = {d.name: d for d in load_catalogue()}
    assert drills["kill-keeper-leader"].thresholds.max_recovery_s == 5
    assert drills["kill-appmaster"].thresholds.max_recovery_s == 2
    assert drills["kill-cluster"].thresholds.max_recovery_s == 30
    assert drills["kill-cluster"].thresholds.max_failure_streak_s == 2
    assert drills["db-down-30s"].thresholds.recovery_from_edge == "end"
    assert all(d.thresholds.min_availability >= 0.999 for d in drills.values())


def test_the_network_clock_cpu_and_redis_drills_have_the_issues_thresholds() -> None:
    drills = {d.name: d for d in load_catalogue()}
    blackhole = drills["keeper-db-blackhole"].thresholds
    assert (blackhole.max_recovery_s, blackhole.recovery_until) == (10, "new-leader-elected")
    assert blackhole.recovery_from == "heal-partition"
    assert drills["keeper-db-blackhole"].experiment["configuration"]["hold_s"] == 20
    assert drills["keeper-db-latency"].thresholds.max_recovery_s == 30
    assert drills["client-proxy-latency"].thresholds.max_p99_ms == 1000
    assert drills["client-proxy-resets"].thresholds.max_failure_streak_s == 1
    assert drills["redis-kill-restart"].thresholds.recovery_until == "every-gcs-whole"
    assert drills["clock-jump-keepers"].thresholds.max_recovery_s == 10
    assert drills["cpu-starvation"].experiment["configuration"]["workers"] == 2
    assert {n for n, d in drills.items() if d.meta.client_links} == {
        "client-proxy-latency",
        "client-proxy-resets",
    }
    assert not any(d.meta.smoke for n, d in drills.items() if n in NEW)
    assert all(0 < d.meta.duration_s <= 60 for d in drills.values())


NEW = {
    "keeper-db-latency",
    "keeper-db-blackhole",
    "client-proxy-latency",
    "client-proxy-resets",
    "cpu-starvation",
    "redis-kill-restart",
    "clock-jump-keepers",
}


def _method_funcs(name: str) -> list[str]:
    experiment = json.loads((DRILLS_DIR / f"{name}.json").read_text())
    return [a["provider"]["func"] for a in experiment["method"]]


def test_the_new_drills_inject_what_their_names_say_and_undo_it_in_the_method() -> None:
    assert _method_funcs("keeper-db-blackhole")[:3] == [
        "route_keepers_db",
        "wait_one_leader",
        "net_fault",
    ]
    assert "net_heal" in _method_funcs("keeper-db-latency")
    assert _method_funcs("cpu-starvation") == ["starve_cpu", "stop_cpu_starvation"]
    assert _method_funcs("redis-kill-restart")[:2] == ["kill_redis", "restart_redis"]
    clock = _method_funcs("clock-jump-keepers")
    assert clock.count("fake_keeper_clock") == 2
    assert clock.count("jump_keeper_clock") == 4
    assert clock[-2:] == ["restore_keeper_clocks", "wait_one_leader"]
    for name in ("client-proxy-latency", "client-proxy-resets"):
        funcs = _method_funcs(name)
        assert funcs[0] == "wait_link_traffic"  # the load really goes through the links
        assert "net_heal" in funcs


def _drill(tmp_path: Path, **changes: Any) -> Path:
    experiment = json.loads((DRILLS_DIR / "kill-proxy.json").read_text())
    for key, value in changes.items():
        experiment[key] = value(experiment) if callable(value) else value
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(experiment))
    return path


def _with_method_provider(e: dict[str, Any], **provider: Any) -> list[Any]:
    method = e["method"]
    method[0] = {**method[0], "provider": {**method[0]["provider"], **provider}}
    return list(method)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"method": lambda e: _with_method_provider(e, func="kill_everything")}, "no function"),
        ({"method": lambda e: _with_method_provider(e, module="os")}, "is not one of"),
        (
            {"method": lambda e: _with_method_provider(e, arguments={"clster": "a"})},
            "arguments do not fit",
        ),
        ({"rollbacks": []}, "rollbacks must end with chaos.actions.heal"),
        (
            {"configuration": lambda e: {**e["configuration"], "recovery_until": "nope"}},
            "not in the method",
        ),
        (
            {"configuration": lambda e: {**e["configuration"], "min_availability": 2}},
            "thresholds",
        ),
        ({"extensions": []}, "extensions"),
        ({"method": []}, "no method"),
    ],
)
def test_a_broken_drill_is_refused_with_its_reason(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidDrill, match=reason):
        load_drill(_drill(tmp_path, **changes))


def test_a_drill_that_faults_the_loads_links_must_say_so(tmp_path: Path) -> None:
    experiment = json.loads((DRILLS_DIR / "client-proxy-latency.json").read_text())
    experiment["extensions"][0]["client_links"] = False
    (tmp_path / "x.json").write_text(json.dumps(experiment))
    with pytest.raises(InvalidDrill, match="needs client_links"):
        load_drill(tmp_path / "x.json")


def test_a_drill_must_route_the_keepers_before_faulting_their_db_link(tmp_path: Path) -> None:
    experiment = json.loads((DRILLS_DIR / "keeper-db-blackhole.json").read_text())
    experiment["method"] = experiment["method"][1:]  # no route-keepers-through-link
    (tmp_path / "x.json").write_text(json.dumps(experiment))
    with pytest.raises(InvalidDrill, match="before route_keepers_db"):
        load_drill(tmp_path / "x.json")


def test_adding_a_drill_needs_only_a_file(tmp_path: Path) -> None:
    """A new drill from existing faults: a copy aimed at another cluster loads as is."""
    experiment = json.loads((DRILLS_DIR / "kill-proxy.json").read_text())
    experiment["configuration"]["cluster"] = "b"
    experiment["extensions"][0]["order"] = 55
    (tmp_path / "kill-proxy-b.json").write_text(json.dumps(experiment))
    (tmp_path / "control.json").write_text((DRILLS_DIR / "control.json").read_text())
    assert [d.name for d in load_catalogue(tmp_path)] == ["control", "kill-proxy-b"]


def test_select_runs_the_control_first_then_the_named_drills() -> None:
    catalogue = load_catalogue()
    names = [d.name for d in select(catalogue, ["kill-cluster", "kill-proxy"], control=True)]
    assert names == ["control", "kill-proxy", "kill-cluster"]
    assert [d.name for d in select(catalogue, ["kill-proxy"], control=False)] == ["kill-proxy"]
    assert len(select(catalogue, [], control=True)) == len(catalogue)
    with pytest.raises(ValueError, match="unknown drills"):
        select(catalogue, ["kill-everything"], control=True)


def test_every_listed_activity_is_a_function_of_its_module() -> None:
    from chaos import actions, probes

    for module in (actions, probes):
        for name in module.ACTIVITIES:
            assert callable(getattr(module, name)), f"{module.__name__}.{name}"


def test_the_smoke_set_is_the_control_run_and_the_drills_marked_smoke() -> None:
    catalogue = load_catalogue()
    chosen = select(catalogue, [], control=True, smoke=True)
    assert chosen[0].meta.control
    assert [d.name for d in chosen[1:]] == [d.name for d in catalogue if d.meta.smoke]
    assert 0 < len(chosen) - 1 < len(catalogue) - 1  # a real subset
    assert select(catalogue, ["kill-cluster"], control=False, smoke=True)[0].name == "kill-cluster"

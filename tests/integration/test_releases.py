"""Canary and blue-green releases on real clusters, through the Keepers and the CLI, with
client load running throughout: traffic moves by weight, a bad candidate is rolled back
by the analysis of the proxies' metrics, blue-green switches and flips back."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import infra
from ha_serving._errors import CallError
from ha_serving._spec import load_spec
from ha_serving.backend import make_package
from ha_serving.cli import app
from ha_serving.client import discovered_client
from ha_serving.keeper import KeeperClient

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"
SERVICE = "rel"
FAST_ANALYSIS = {"interval_s": 1.0, "min_requests": 5, "max_failed_checks": 2}


@pytest.fixture(scope="module")
def keeper(stack: infra.Topology) -> KeeperClient:
    k = KeeperClient(
        [k.address for k in stack.keepers], token=stack.keeper_token(), tls=stack.client_tls()
    )
    spec = _spec(prefix="blue")
    op_id = k.deploy(json.dumps(spec), make_package(ECHO / "code").data, kind="deploy")
    assert _wait_op(k, op_id)["status"] == "succeeded"
    return k


def _spec(**config: Any) -> dict[str, Any]:
    spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
    spec.update(
        name=SERVICE,
        instances=4,
        instances_per_worker=2,
        resources={"num_cpus": 0.25},
        config=config,
        placement={"clusters": [{"name": "a"}, {"name": "b"}]},
    )
    return spec


def _wait_op(keeper: KeeperClient, op_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        op = _op(keeper, op_id)
        if op["status"] not in ("pending", "running"):
            return op
        time.sleep(0.2)
    raise TimeoutError(f"{op_id} not finished: {_op(keeper, op_id)}")


def _op(keeper: KeeperClient, op_id: str) -> dict[str, Any]:
    return next(o for o in keeper.operations(SERVICE) if o["op_id"] == op_id)


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 120) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)
    return time.monotonic() - start


class Load:
    """Client threads over every proxy of the service, recording (time, prefix or code)."""

    def __init__(self, topo: infra.Topology, threads: int = 4) -> None:
        self.client, self.discovery = discovered_client(
            SERVICE,
            [k.address for k in topo.keepers],
            token=topo.keeper_token(),
            tls=topo.client_tls(),
        )
        self.stop = threading.Event()
        self.results: list[tuple[float, str]] = []
        self.clusters: list[str] = []
        """The cluster that answered each call of ``results`` ("" for a failure)."""
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            cluster = ""
            try:
                reply = self.client.call_raw(SERVICE, "echo", b'"x"', timeout=5.0)
                outcome, cluster = str(json.loads(reply.payload)["prefix"]), reply.cluster
            except CallError as exc:
                outcome = exc.code
            with self.lock:
                self.results.append((time.monotonic(), outcome))
                self.clusters.append(cluster)

    def since(self, t: float) -> list[str]:
        with self.lock:
            return [o for at, o in self.results if at >= t]

    def __enter__(self) -> Load:
        _wait("discovery", lambda: len(self.discovery.endpoints) >= 4, 30)
        for t in self.threads:
            t.start()
        _wait("load", lambda: len(self.since(0)) >= 100, 30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        self.discovery.stop()
        self.client.close()


def _share(outcomes: list[str], value: str) -> float:
    return outcomes.count(value) / max(len(outcomes), 1)


def test_canary_moves_traffic_by_weight_and_promotes_under_load(
    stack: infra.Topology, keeper: KeeperClient
) -> None:
    """1 of 4 instances per cluster runs the candidate, yet at the 50% step about half
    the calls reach it; after the last step it is promoted everywhere; no call fails."""
    options = {"steps": [50, 100], "pause_s": 6, "canary_instances": 1, "analysis": FAST_ANALYSIS}
    with Load(stack) as load:
        started = time.monotonic()
        op_id = keeper.deploy(
            json.dumps(_spec(prefix="canary")), b"", kind="canary", options=options
        )
        _wait("step 1", lambda: (_op(keeper, op_id)["progress"] or {}).get("step") == 1)
        at_half = time.monotonic()
        _wait("3 s at 50%", lambda: time.monotonic() - at_half > 3)
        half = [o for t, o in load.results if at_half <= t <= at_half + 3]
        op = _wait_op(keeper, op_id)
        done = time.monotonic()
        everything = load.since(started)
    assert op["status"] == "succeeded", op
    at_50 = _share(half, "canary")
    print(
        f"\ncanary: {len(everything)} calls in {done - started:.1f}s, "
        f"{everything.count('canary')} to the candidate; at the 50% step "
        f"{100 * at_50:.0f}% reached it (1 of 4 instances); "
        f"{len(op['progress']['checks'])} analysis checks, failures: "
        f"{sum(o not in ('blue', 'canary') for o in everything)}"
    )
    assert 0.35 < at_50 < 0.65
    assert all(o in ("blue", "canary") for o in everything)
    assert {c["verdict"] for c in op["progress"]["checks"]} <= {"pass", "inconclusive"}
    assert keeper.get_service(SERVICE)["spec"]["config"]["prefix"] == "canary"
    with Load(stack) as after:
        _wait("calls after", lambda: len(after.since(0)) >= 200)
        assert set(after.since(0)) == {"canary"}


def test_a_bad_canary_is_rolled_back_by_the_analysis(
    stack: infra.Topology, keeper: KeeperClient
) -> None:
    """A candidate failing half its calls gets 20% of traffic; two failed checks later it
    is rolled back on both clusters without anyone's command, and the failures stop."""
    options = {
        "steps": [20, 100],
        "pause_s": 600,
        "canary_instances": 1,
        "analysis": FAST_ANALYSIS,
    }
    bad = _spec(prefix="bad", fail_ratio=0.5)
    current = _current_prefix(keeper)
    with Load(stack) as load:
        started = time.monotonic()
        op_id = keeper.deploy(json.dumps(bad), b"", kind="canary", options=options)
        op = _wait_op(keeper, op_id, timeout_s=120)
        ended = time.monotonic()
        _wait("calls after the rollback", lambda: len(load.since(ended + 1.0)) >= 300)
        during, after = load.since(started), load.since(ended + 1.0)
    assert op["status"] == "rolled_back", op
    assert "analysis failed 2 checks" in op["error"]
    failed = [o for o in during if o not in (current, "bad")]
    print(
        f"\nbad canary rolled back after {ended - started:.1f}s: {len(failed)} of "
        f"{len(during)} calls failed meanwhile ({100 * len(failed) / len(during):.2f}%), "
        f"all from the candidate; {len(after)} calls after it, "
        f"{sum(o != current for o in after)} failed; reason: {op['error']}"
    )
    assert set(failed) <= {"UNKNOWN"}  # the candidate's own exceptions, nothing else
    assert set(after) == {current}
    assert _current_prefix(keeper) == current


def _current_prefix(keeper: KeeperClient) -> str:
    return str(keeper.get_service(SERVICE)["spec"]["config"]["prefix"])


def _spec_file(tmp_path: Path, **config: Any) -> Path:
    spec = _spec(**config)
    # a spec's code lies in its own folder (an absolute code.dir is refused)
    shutil.copytree(ECHO / "code", tmp_path / "code", dirs_exist_ok=True)
    spec["code"]["dir"] = "code"
    path = tmp_path / "rel.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_blue_green_from_the_cli_switches_then_flips_back_and_forward(
    stack: infra.Topology, keeper: KeeperClient, tmp_path: Path
) -> None:
    """`ha-serving bluegreen` brings green up beside blue, switches all traffic once it
    is healthy; `release rollback` flips back to blue at once; a second blue-green with
    a short window completes and retires blue. No call fails throughout."""
    cli = CliRunner()
    run_dir = ["--run-dir", str(stack.run_dir)]
    blue = _current_prefix(keeper)
    with Load(stack) as load:
        started = time.monotonic()
        result = cli.invoke(
            app,
            ["bluegreen", str(_spec_file(tmp_path, prefix="green")), "--window", "600",
             "--interval", "1", "--no-wait", *run_dir],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        op_id = result.output.split("accepted: ")[1].split()[0]
        _wait("the switch", lambda: (_op(keeper, op_id)["progress"] or {}).get("step") == 1)
        switched = time.monotonic()
        _wait("calls after the switch", lambda: len(load.since(switched + 0.5)) >= 200)
        on_green = load.since(switched + 0.5)
        status = cli.invoke(app, ["release", "status", SERVICE, "--json", *run_dir])
        shown = next(o for o in json.loads(status.output) if o["op_id"] == op_id)
        assert shown["progress"]["weight"] == 100, shown
        flip = time.monotonic()
        result = cli.invoke(app, ["release", "rollback", op_id, *run_dir])
        assert result.exit_code == 0, result.output
        op = _wait_op(keeper, op_id)  # ends once green has retired everywhere
        settled = time.monotonic()
        flipped = load.since(flip)
        with load.lock:
            rows = list(zip(load.results, load.clusters, strict=True))
        # each cluster flips when its AppMaster takes the abort: judge each on its own
        back = {
            c: next(t for (t, o), at in rows if t >= flip and at == c and o == blue)
            for c in ("a", "b")
        }
        late = [
            (at, round(t - back[at], 2))
            for (t, o), at in rows
            if at in back and t > back[at] + 1.0 and o == "green"
        ]
        after_settled = [o for (t, o), _ in rows if t > settled]

        second = cli.invoke(
            app,
            ["bluegreen", str(_spec_file(tmp_path, prefix="green2")), "--window", "2",
             "--interval", "1", *run_dir],
        )  # fmt: skip
        done = time.monotonic()
        _wait("calls after", lambda: len(load.since(done + 0.5)) >= 200)
        final = load.since(done + 0.5)
        everything = load.since(started)
    assert op["status"] == "aborted", op
    assert set(on_green) == {"green"}
    assert late == [], late  # green answered > 1 s after its cluster flipped back
    assert "green" not in after_settled
    assert second.exit_code == 0, second.output
    assert set(final) == {"green2"}
    failures = [o for o in everything if o not in (blue, "green", "green2")]
    print(
        f"\nblue-green: switched after {switched - started:.1f}s; rollback flipped traffic "
        f"back on a {back['a'] - flip:.2f}s and b {back['b'] - flip:.2f}s after the command; "
        f"second release done in "
        f"{done - flip:.1f}s; {len(everything)} calls, {len(failures)} failed "
        f"({len(flipped)} after the flip)"
    )
    when = [f"{o} at {t - started:.1f}s" for t, o in load.results if o in failures]
    assert failures == [], when[:20]


def test_a_drained_rolling_update_moves_traffic_off_each_cluster_in_turn(
    stack: infra.Topology, keeper: KeeperClient, tmp_path: Path
) -> None:
    """`update --drain`: cluster a's traffic weight goes to 0 before it is rolled (the
    clients answer from b alone), then back; then b's. No call fails."""
    cli = CliRunner()
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"prefix": "drained", "reconfigure_delay_s": 0.5}))
    before = _current_prefix(keeper)
    with Load(stack) as load:
        started = len(load.results)
        result = cli.invoke(
            app,
            ["update", SERVICE, "--config", str(config), "--drain", "--run-dir",
             str(stack.run_dir)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        done = time.monotonic()
        _wait("calls after", lambda: len(load.since(done + 0.5)) >= 200)
        with load.lock:
            outcomes = [o for _, o in load.results[started:]]
            clusters = load.clusters[started:]
    failures = [o for o in outcomes if o not in (before, "drained")]
    # the longest run of consecutive answers from one cluster alone, per cluster
    runs = {"a": 0, "b": 0}
    current, length = "", 0
    for c in clusters:
        length = length + 1 if c == current else 1
        current = c
        if c in runs:
            runs[c] = max(runs[c], length)
    print(
        f"\ndrained update: {len(outcomes)} calls, {len(failures)} failed; longest run of "
        f"answers from one cluster alone: a {runs['a']}, b {runs['b']} (4 threads, no "
        f"cluster preference: without a drain such runs stay short)"
    )
    assert failures == []
    assert min(runs.values()) >= 100  # each cluster carried the traffic alone a while
    assert load.since(done + 0.5)
    assert set(load.since(done + 0.5)) == {"drained"}

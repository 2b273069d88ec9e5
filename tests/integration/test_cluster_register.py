"""A Ray cluster made outside `up` joins the Keepers with `ha-serving cluster register`:
the Keepers place a service on it (its serving job through its Job Submission API),
and its proxies answer calls. The test starts that cluster itself, as a platform would
(a head and a worker, `ray start --block`, each in its own process group), and stops
exactly what it started, by process group: never `ray stop`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import infra
from ha_serving._spec import load_spec
from ha_serving.backend import make_package
from ha_serving.cli import app
from ha_serving.client import Client
from ha_serving.keeper import KeeperClient
from ha_serving.store import Store
from infra import procs
from infra.ports import ensure_free, node_address, node_ports
from infra.ray_nodes import alive_since, node_argv, node_env
from infra.topology import Proc
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"
INDEX = 3
"""Cluster index of the outside cluster: addresses 127.0.3.x and port block 3 of the
test's slot (the module's stack uses 1 and 2)."""
NAME = "outside"
SERVICE = "joined"


@dataclass
class OutsideCluster:
    gcs_address: str
    dashboard_url: str
    procs: list[Proc]


def _wait_alive(gcs: str, addresses: set[str], started: list[Proc], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in started:
            if not procs.alive(proc):
                pytest.fail(f"{proc.argv[1:3]} exited at start: {procs.log_tail(proc.log, 20)}")
        seen = alive_since(gcs) or {}
        if addresses <= set(seen):
            return
        time.sleep(0.5)
    tails = "; ".join(procs.log_tail(p.log, 10) for p in started)
    pytest.fail(f"nodes {sorted(addresses)} not registered with {gcs} in {timeout_s}s: {tails}")


@pytest.fixture(scope="module")
def outside(
    stack: infra.Topology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OutsideCluster]:
    """A head (num-cpus 0, dashboard on) and one worker, started here, not by `up`."""
    s = stack_settings(stack.run_dir).stack
    work = tmp_path_factory.mktemp("outside")
    # Ray's unix socket paths must stay short: under /tmp, as `up`'s; named after this
    # run's port slot, which no other run holds meanwhile
    temp_root = Path("/tmp") / f"hasrv-outside-{s.port_base}"  # noqa: S108
    head_ports = node_ports(s.port_base, INDEX, 0)
    gcs = f"{node_address(INDEX, 0)}:{head_ports.gcs}"
    started: list[Proc] = []
    try:
        for n in (0, 1):
            role = "head" if n == 0 else "worker"
            address = node_address(INDEX, n)
            ports = node_ports(s.port_base, INDEX, n)
            ensure_free(address, ports.fixed(), what=f"outside {role}")
            argv = node_argv(
                s,
                role=role,
                address=address,
                ports=ports,
                temp_dir=temp_root / role,
                gcs_address=gcs,
            )
            env = node_env(s, role=role, redis=None, namespace=None)
            started.append(procs.spawn(argv, env=env, log=work / f"{role}.log"))
            if n == 0:
                _wait_alive(gcs, {address}, started, timeout_s=120)
        _wait_alive(gcs, {node_address(INDEX, 0), node_address(INDEX, 1)}, started, 120)
        dashboard = f"http://{node_address(INDEX, 0)}:{head_ports.dashboard}"
        yield OutsideCluster(gcs, dashboard, started)
    finally:
        for proc in reversed(started):  # exactly what this fixture started
            procs.kill(proc)
        shutil.rmtree(temp_root, ignore_errors=True)


def _cli(*args: str, run_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, [*args, "--run-dir", str(run_dir)], env={"HA_SERVING_DB_URL": ""}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 2, str(result.exception)
    return result.exit_code, result.output


def _wait_op(keeper: KeeperClient, op_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for op in keeper.operations(SERVICE):
            if op["op_id"] == op_id and op["status"] not in ("pending", "running"):
                return op
        time.sleep(0.25)
    raise TimeoutError(f"{op_id} not finished: {keeper.operations(SERVICE)}")


def test_a_registered_outside_cluster_serves_through_the_keepers(
    stack: infra.Topology, outside: OutsideCluster
) -> None:
    run_dir = stack.run_dir
    code, out = _cli(
        "cluster", "register", NAME, "--gcs", outside.gcs_address, "--dashboard",
        outside.dashboard_url, "--tier", "secondary", "--zone", "zone-outside",
        run_dir=run_dir,
    )  # fmt: skip
    assert code == 0, out
    assert f"registered cluster {NAME}" in out
    code, out = _cli("cluster", "list", "--json", run_dir=run_dir)
    listed = {c["name"]: c for c in json.loads(out)}
    assert set(listed) == {"a", "b", NAME}
    assert listed[NAME] == {
        "name": NAME,
        "gcs_address": outside.gcs_address,
        "dashboard_url": outside.dashboard_url,
        "tier": "secondary",
        "zone": "zone-outside",
    }

    keeper = KeeperClient(
        [k.address for k in stack.keepers], token=stack.keeper_token(), tls=stack.client_tls()
    )
    spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
    spec.update(name=SERVICE, instances=2, placement={"clusters": [{"name": NAME}]})
    op_id = keeper.deploy(json.dumps(spec), make_package(ECHO / "code").data, kind="deploy")
    op = _wait_op(keeper, op_id)
    assert op["status"] == "succeeded", op

    with Store.connect(stack.db.ref()) as store:
        deadline = time.monotonic() + 30
        endpoints = []
        while time.monotonic() < deadline and not endpoints:
            endpoints = [e for e in store.list_endpoints(SERVICE) if e.cluster == NAME]
            time.sleep(0.2)
    assert endpoints, "no proxy of the service registered on the outside cluster"
    assert {e.address.rpartition(":")[0] for e in endpoints} <= {
        node_address(INDEX, 0),
        node_address(INDEX, 1),
    }
    with Client([e.address for e in endpoints], tls=stack.client_tls()) as client:
        assert client.call(SERVICE, "echo", "hi") == {"echo": "hi", "prefix": ">", "version": "1"}

    # still serving: removal is refused and says what is there; --force takes it out
    code, out = _cli("cluster", "remove", NAME, run_dir=run_dir)
    assert code == 2
    assert f"cluster {NAME} still serves: services {SERVICE}" in out
    code, out = _cli("cluster", "remove", NAME, "--force", run_dir=run_dir)
    assert code == 0, out
    code, out = _cli("cluster", "list", "--json", run_dir=run_dir)
    assert {c["name"] for c in json.loads(out)} == {"a", "b"}

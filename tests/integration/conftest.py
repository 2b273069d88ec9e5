"""Integration fixtures: a real local stack (private MariaDB, Redis, Ray clusters).

Every test stack speaks TLS, as ``up`` does by default (``stack.tls``);
``HA_SERVING_TEST_TLS=0`` brings them up in plaintext instead: the same tests, without
TLS.

Its addresses and ports differ from `make up`'s defaults, so the tests can run while a
developer's own stack is up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import infra
from ha_serving._settings import Settings
from ha_serving.cli._services import ServiceOps
from ha_serving.store import Store
from tests.conftest import SLOT

TEST_PORT_BASE = SLOT.base


def stack_settings(run_dir: Path, **stack: object) -> Settings:
    """The test stack: other ports than `make up`'s (and a Keeper port of its own)."""
    base = Settings.from_env()
    return Settings.build(
        stack={
            **base.stack.model_dump(),
            "run_dir": run_dir,
            "clusters": 2,
            "workers_per_cluster": 1,
            "worker_cpus": 4,
            "port_base": TEST_PORT_BASE,
            "db_address": "127.0.101.2",
            "db_port": SLOT.db_port,
            "redis_address": "127.0.101.3",
            "redis_port": SLOT.redis_port,
            "gcs_reconnect_timeout_s": 60,
            "tls": os.environ.get("HA_SERVING_TEST_TLS", "1") != "0",
            **stack,
        },
        store={},
        keeper={"port": SLOT.keeper_port, "token": None, "token_file": None},
    )


SHARED_STACKS = ("stack", "mstack", "kstack")
"""Module-scoped stack fixtures that several tests share (and inject faults into)."""


@pytest.fixture(autouse=True)
def whole_stack_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on a shared stack, bring back whatever its faults left down (also
    when the test failed mid-fault) and check the stack is whole, so a failure in one
    test never becomes the next test's failure."""
    yield
    for name in SHARED_STACKS:
        if name in request.fixturenames:
            topo: infra.Topology = request.getfixturevalue(name)
            if infra.load(topo.run_dir) is None:
                continue  # the test took the stack down on purpose (`down`'s own test)
            healed = infra.heal(topo.run_dir)
            if healed:
                print(f"\n[{request.node.name}] restored after the test: {', '.join(healed)}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Topology]:
    """A 2-cluster stack (1 head + 1 worker each) for one test module."""
    settings = stack_settings(tmp_path_factory.mktemp("stack"))
    result = infra.up(settings)
    try:
        yield result.topology
    finally:
        infra.down(settings.stack.run_dir)


@pytest.fixture(scope="module")
def ops(stack: infra.Topology) -> Iterator[ServiceOps]:
    """Service operations on cluster a of this module's test stack, as the CLI does them."""
    a = stack.cluster("a")
    store = Store.connect(stack.db.ref())
    o = ServiceOps(
        store, stack.db.ref(), "a", a.gcs_address, a.head.address, proxy_tls=stack.proxy_tls()
    )
    try:
        yield o
    finally:
        o.close()
        store.close()

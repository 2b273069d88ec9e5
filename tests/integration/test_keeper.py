"""Keeper replicas on a real stack: leadership moves on a crash and on a pause, the
resumed old leader knows it is not leading, and the control API wants its token."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

import infra
from ha_serving.keeper import keeper_status
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Topology]:
    """One cluster (the Keepers are what is under test) and three Keeper replicas."""
    settings = stack_settings(tmp_path_factory.mktemp("kstack"), clusters=1)
    topo = infra.up(settings).topology
    try:
        yield topo
    finally:
        infra.down(settings.stack.run_dir)


def _views(topo: infra.Topology) -> dict[str, dict[str, object]]:
    token = topo.keeper_token()
    tls = topo.client_tls()
    return {
        k.id: keeper_status(k.address, token=token, timeout_s=0.5, tls=tls) for k in topo.keepers
    }


def _leader(topo: infra.Topology, *, exclude: str = "") -> tuple[str, int] | None:
    for kid, v in _views(topo).items():
        if v["alive"] and v["leader"] and kid != exclude:
            return kid, int(v["epoch"])  # type: ignore[call-overload]
    return None


def _wait_leader(topo: infra.Topology, exclude: str, timeout_s: float = 30) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _leader(topo, exclude=exclude)
        if found is not None:
            return found
        time.sleep(0.05)
    raise TimeoutError(f"no leader other than {exclude} within {timeout_s}s: {_views(topo)}")


def test_status_lists_three_keepers_one_leader(kstack: infra.Topology) -> None:
    """`status --json` lists 3 alive Keepers, exactly one leading, all at one epoch."""
    _wait_leader(kstack, exclude="")
    report = infra.status(kstack.run_dir)
    assert report is not None
    keepers = report["keepers"]
    assert [k["id"] for k in keepers] == ["k1", "k2", "k3"]  # type: ignore[attr-defined]
    assert all(k["alive"] for k in keepers)  # type: ignore[attr-defined]
    assert sum(bool(k["leader"]) for k in keepers) == 1  # type: ignore[attr-defined]
    assert all(k["address"].startswith("127.0.200.") for k in keepers)  # type: ignore[attr-defined]


def test_control_api_refuses_a_missing_or_wrong_token(kstack: infra.Topology) -> None:
    """No token or a wrong one: UNAUTHENTICATED, and the secret is not logged."""
    keeper = kstack.keepers[0]
    tls = kstack.client_tls()
    assert keeper_status(keeper.address, token=None, tls=tls)["error"] == "UNAUTHENTICATED"
    wrong = "not-the-token"
    assert keeper_status(keeper.address, token=wrong, tls=tls)["error"] == "UNAUTHENTICATED"
    assert keeper_status(keeper.address, token=kstack.keeper_token(), tls=tls)["alive"]
    token = kstack.keeper_token()
    assert token
    assert token not in keeper.proc.log.read_text()
    assert "refused /ha_serving.v1.Keeper/Status" in keeper.proc.log.read_text()


def test_killed_leader_is_replaced_with_a_higher_epoch(kstack: infra.Topology) -> None:
    """SIGKILL of the leader: another replica leads at a higher epoch within the lease
    TTL plus one tick. Prints the measured failover time."""
    old, epoch = _wait_leader(kstack, exclude="")
    started = time.monotonic()
    infra.signal_keeper(kstack.run_dir, old, signal.SIGKILL)
    new, new_epoch = _wait_leader(kstack, exclude=old)
    failover = time.monotonic() - started
    print(f"\nKeeper leader failover after SIGKILL: {failover:.2f}s ({old} -> {new})")
    assert new_epoch > epoch
    assert failover < 10  # the lease is 3 s; the target is 5 s
    infra.restart_keeper(kstack.run_dir, old)


def test_paused_leader_is_superseded_and_knows_it_after_sigcont(kstack: infra.Topology) -> None:
    """SIGSTOP the leader past its lease: another takes over at a higher epoch; after
    SIGCONT the old one reports itself a follower at the new epoch."""
    topo = infra.load(kstack.run_dir)
    assert topo is not None
    old, epoch = _wait_leader(topo, exclude="")
    infra.signal_keeper(topo.run_dir, old, signal.SIGSTOP)
    try:
        new, new_epoch = _wait_leader(topo, exclude=old)
        assert new_epoch > epoch
    finally:
        infra.signal_keeper(topo.run_dir, old, signal.SIGCONT)
    deadline = time.monotonic() + 10
    view = _views(topo)[old]
    while time.monotonic() < deadline and not view["alive"]:
        time.sleep(0.05)
        view = _views(topo)[old]
    assert view["alive"]
    assert not view["leader"]
    assert view["epoch"] == new_epoch
    assert _leader(topo) == (new, new_epoch)
    assert os.getpgid(topo.keeper(old).proc.pid) == topo.keeper(old).proc.pgid

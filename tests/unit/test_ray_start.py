"""infra.ray_start: Ray's registration wait, stretched without changing anything else."""

from __future__ import annotations

import inspect

import pytest

from infra.ray_start import WAIT_LOOP_MARK, patient


def test_rays_wait_loop_is_still_the_one_the_launcher_stretches() -> None:
    from ray._private import node

    source = inspect.getsource(node.Node.__init__)
    assert WAIT_LOOP_MARK in source
    assert "ray._private.services.get_node(" in source


def test_a_node_registered_late_is_found_within_the_wait() -> None:
    asks: list[int] = []

    def get_node(gcs: str, node_id: str) -> dict[str, str]:
        asks.append(1)
        if len(asks) < 4:
            raise RuntimeError("GCS cannot find the node")
        return {"node_id": node_id, "gcs": gcs}

    found = patient(get_node, wait_s=5.0, poll_s=0.01)("127.0.0.1:1", "n1")
    assert found == {"node_id": "n1", "gcs": "127.0.0.1:1"}
    assert len(asks) == 4


def test_a_node_never_registered_still_fails_after_the_wait() -> None:
    def get_node(gcs: str, node_id: str) -> dict[str, str]:
        raise RuntimeError("GCS cannot find the node")

    with pytest.raises(RuntimeError, match="cannot find"):
        patient(get_node, wait_s=0.05, poll_s=0.01)("127.0.0.1:1", "n1")


def test_other_errors_are_not_retried() -> None:
    asks: list[int] = []

    def get_node(gcs: str, node_id: str) -> dict[str, str]:
        asks.append(1)
        raise ValueError("bad address")

    with pytest.raises(ValueError, match="bad address"):
        patient(get_node, wait_s=5.0, poll_s=0.01)("x", "n1")
    assert len(asks) == 1


def test_the_wait_must_fit_inside_the_clusters_own_waits() -> None:
    from ha_serving._settings import StackSettings

    with pytest.raises(ValueError, match="gcs_reconnect_timeout_s"):
        StackSettings(ray_register_wait_s=60, gcs_reconnect_timeout_s=60)
    with pytest.raises(ValueError, match="node_start_timeout_s"):
        StackSettings(ray_register_wait_s=50, node_start_timeout_s=40)

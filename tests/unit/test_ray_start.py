"""infra.ray_start: Ray's registration wait, stretched without changing anything else."""

from __future__ import annotations

import inspect
from pathlib import Path

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


def test_rays_raylet_start_still_takes_what_the_launcher_announces() -> None:
    """The names ``announced`` relies on, in the installed Ray: a Ray upgrade that
    renames them fails here, not in a drill."""
    from ray import _raylet
    from ray._private import node, services

    from infra.ray_start import LISTEN_PORT_NAME

    assert _raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME == LISTEN_PORT_NAME
    params = inspect.signature(services.start_raylet).parameters
    assert {"node_id", "session_dir", "dashboard_agent_listen_port"} <= set(params)
    assert "ray._private.services.start_raylet(" in inspect.getsource(node.Node.start_raylet)


def test_the_agents_fixed_listen_port_is_written_before_the_raylet_starts(tmp_path: Path) -> None:
    """The raylet crashes if that file is missing 15 s after it starts (a slow agent on
    a loaded machine): with a fixed port the launcher writes it first, with Ray's own
    ``persist_port``, and then starts the raylet with the same arguments."""
    from ray._raylet import persist_port

    from infra.ray_start import LISTEN_PORT_NAME, announced

    node_id = "ab" * 28
    seen: list[tuple[object, ...]] = []

    def start_raylet(
        redis_address: str,
        node_id: str,
        session_dir: str,
        dashboard_agent_listen_port: int | None = None,
    ) -> str:
        written = list(tmp_path.glob(f"{LISTEN_PORT_NAME}_*"))
        seen.append((redis_address, node_id, session_dir, dashboard_agent_listen_port, written))
        return "started"

    start = announced(start_raylet, persist_port)
    assert start("r", node_id, str(tmp_path), dashboard_agent_listen_port=13005) == "started"
    (_, _, _, port, written) = seen[0]
    assert port == 13005
    assert [p.name for p in written] == [f"{LISTEN_PORT_NAME}_{node_id}"]
    assert written[0].read_text().strip() == "13005"

    other = tmp_path / "dynamic"
    other.mkdir()
    for dynamic in (0, None):  # the agent picks the port: only it can write the file
        announced(start_raylet, persist_port)("r", node_id, str(other), dynamic)
        assert not list(other.iterdir())

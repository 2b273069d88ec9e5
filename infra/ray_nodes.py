"""Ray nodes of the local clusters: how to start them and how to ask their GCS about them.

A node is ``ray start --block`` in its own process group; ``--block`` keeps the command
in the foreground as the parent of gcs_server/raylet/agents, so its group is the node.
GCS fault tolerance: the head gets ``RAY_REDIS_ADDRESS`` and a per-cluster
``RAY_external_storage_namespace``; workers and raylets wait up to
``gcs_reconnect_timeout_s`` for a restarted head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ha_serving._settings import StackSettings
from infra.topology import NodePorts, Role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcsNode:
    """One node as the cluster's GCS sees it."""

    address: str
    alive: bool
    is_head: bool
    start_time_s: float
    """When the node registered; tells a restarted node from its dead predecessor."""


def node_argv(
    s: StackSettings,
    *,
    role: Role,
    address: str,
    ports: NodePorts,
    temp_dir: Path,
    gcs_address: str,
) -> list[str]:
    argv = [
        # Ray's own CLI, with its 30 s registration wait stretched (see infra.ray_start)
        str(Path(s.ray_bin).with_name("python")),
        "-m",
        "infra.ray_start",
        f"--register-wait-s={s.ray_register_wait_s:g}",
        "start",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={address}",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={s.object_store_mb * 1024 * 1024}",
        f"--node-manager-port={ports.node_manager}",
        f"--object-manager-port={ports.object_manager}",
        f"--metrics-export-port={ports.metrics_export}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--min-worker-port={ports.min_worker}",
        f"--max-worker-port={ports.max_worker}",
        # No log monitor: it streams worker logs to drivers, and our only drivers (serving
        # jobs' entrypoints) exit at once. One Python process less per node to start,
        # which on a loaded 2-core machine is ~1-2 s less before a node registers.
        "--include-log-monitor=false",
    ]
    if role == "head":
        argv += [
            "--head",
            f"--port={ports.gcs}",
            "--num-cpus=0",  # the head runs control processes only, never user work
            "--no-monitor",  # the autoscaler's monitor: these clusters have fixed nodes
            f"--ray-client-server-port={ports.ray_client_server}",
            f"--include-dashboard={'true' if s.dashboard else 'false'}",
            # even without the full dashboard a minimal one binds 127.0.0.1:8265 by default
            f"--dashboard-host={address}",
            f"--dashboard-port={ports.dashboard}",
        ]
    else:
        argv += [f"--address={gcs_address}", f"--num-cpus={s.worker_cpus}"]
    return argv


def node_env(
    s: StackSettings, *, role: Role, redis: str | None, namespace: str | None
) -> dict[str, str]:
    # Ray's own settings for this machine, all here (they reach every process of the node)
    env = {
        "RAY_gcs_rpc_server_reconnect_timeout_s": str(s.gcs_reconnect_timeout_s),
        "RAY_USAGE_STATS_ENABLED": "0",
        # A call to an actor whose connection broke waits this long for the GCS to say
        # why before failing (Ray's default 1000 ms). Proxies eject a dead backend worker
        # at its first failed call; until then, calls still routed to the dead process
        # fail too, so the sooner the first failure, the fewer calls a kill costs.
        "RAY_timeout_ms_task_wait_for_death_info": str(s.death_info_wait_ms),
    }
    if role == "worker":
        # a worker started together with its (re)starting head waits this many 1 s tries
        # for the GCS instead of Ray's default 20, so the two starts can overlap
        env["RAY_NUM_REDIS_GET_RETRIES"] = str(s.gcs_reconnect_timeout_s)
    if role == "head" and redis and namespace:
        env["RAY_REDIS_ADDRESS"] = redis
        env["RAY_external_storage_namespace"] = namespace
    return env


def gcs_nodes(gcs_address: str, timeout_s: float = 2.0) -> list[GcsNode] | None:
    """Nodes registered with the GCS at ``gcs_address``; None when the GCS does not answer.

    Uses Ray's GCS client directly: it needs neither a driver nor the dashboard.
    """
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # heavy import (~1 s); only callers that need it pay

    try:
        client = GcsClient(address=gcs_address)
        info = client.get_all_node_info(timeout=timeout_s)
    except Exception as exc:
        log.debug("GCS %s did not answer: %s", gcs_address, exc)
        return None
    nodes = []
    for n in info.values():
        alive = n.state == 0  # GcsNodeInfo.ALIVE
        nodes.append(
            GcsNode(
                address=n.node_manager_address,
                alive=alive,
                is_head=bool(n.is_head_node),
                start_time_s=n.start_time_ms / 1000.0,
            )
        )
    return nodes


def alive_since(gcs_address: str) -> dict[str, float] | None:
    """For each address with an ALIVE node, when that node registered; None: GCS silent.

    A node restarted at the same address registers anew, so callers compare the time
    with the restart to avoid mistaking the predecessor's not-yet-expired entry for it.
    Both may be listed ALIVE at once (a GCS restarted from Redis keeps the predecessor's
    entry, and its health checks reach the successor at the same address and port): the
    latest registration is the address's.
    """
    nodes = gcs_nodes(gcs_address)
    if nodes is None:
        return None
    since: dict[str, float] = {}
    for n in nodes:
        if n.alive:
            since[n.address] = max(n.start_time_s, since.get(n.address, n.start_time_s))
    return since

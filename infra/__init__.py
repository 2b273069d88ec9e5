"""The local multi-cluster stack: bring it up and down, inspect it, inject faults.

Each node, the DB and Redis run in their own process group; the topology file in the
run directory records them, and everything here acts by process group from that file,
never by process name.
"""

from infra.faults import (
    heal,
    kill_cluster,
    kill_db,
    kill_node,
    kill_redis,
    restart_cluster,
    restart_db,
    restart_keeper,
    restart_node,
    restart_redis,
    signal_keeper,
)
from infra.stack import DownResult, UpResult, down, stack_for_run, status, up
from infra.topology import Topology, load

__all__ = [
    "DownResult",
    "Topology",
    "UpResult",
    "down",
    "heal",
    "kill_cluster",
    "kill_db",
    "kill_node",
    "kill_redis",
    "load",
    "restart_cluster",
    "restart_db",
    "restart_keeper",
    "restart_node",
    "restart_redis",
    "signal_keeper",
    "stack_for_run",
    "status",
    "up",
]

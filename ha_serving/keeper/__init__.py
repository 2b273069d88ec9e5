"""The Serving Keeper: the replicated control plane (so far: replicas, leadership, the
authenticated control API's Status)."""

from ha_serving.keeper._client import keeper_status
from ha_serving.keeper._leadership import LEASE_NAME, Leadership, NotLeader, Role, Term
from ha_serving.keeper._server import KeeperServer

__all__ = [
    "LEASE_NAME",
    "KeeperServer",
    "Leadership",
    "NotLeader",
    "Role",
    "Term",
    "keeper_status",
]

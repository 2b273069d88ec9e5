"""The Serving Keeper: the replicated control plane (so far: replicas, leadership, the
authenticated control API's Status)."""

from ha_serving.keeper._auth import ALLOWED, AppMasterCredentials, Authenticator, Caller
from ha_serving.keeper._client import KeeperClient, KeeperError, KeeperRefused, keeper_status
from ha_serving.keeper._jobs import RayJobSubmitter
from ha_serving.keeper._leadership import LEASE_NAME, Leadership, NotLeader, Role, Term
from ha_serving.keeper._server import KeeperServer

__all__ = [
    "ALLOWED",
    "LEASE_NAME",
    "AppMasterCredentials",
    "Authenticator",
    "Caller",
    "KeeperClient",
    "KeeperError",
    "KeeperRefused",
    "KeeperServer",
    "Leadership",
    "NotLeader",
    "RayJobSubmitter",
    "Role",
    "Term",
    "keeper_status",
]

"""What the two callers of backend workers share: a proxy and a client in direct mode.

``Router`` chooses an instance (version-group weights, per-instance caps, ejected
workers skipped); ``WorkerLinks`` calls a worker's own gRPC server and says, for every
failure, whether the call may have reached user code (``failure``, ``NEVER_RAN_CODES``).
One implementation of each rule, so the direct client keeps the proxy's promises.
"""

from ha_serving.dataplane._direct import (
    CHANNEL_OPTIONS,
    FAILED_STATES,
    NEVER_CONNECTED,
    NEVER_RAN_CODES,
    READY,
    WorkerLinks,
    failure,
    never_connected,
    not_connected,
    result_of,
)
from ha_serving.dataplane._router import Router

__all__ = [
    "CHANNEL_OPTIONS",
    "FAILED_STATES",
    "NEVER_CONNECTED",
    "NEVER_RAN_CODES",
    "READY",
    "Router",
    "WorkerLinks",
    "failure",
    "never_connected",
    "not_connected",
    "result_of",
]

"""Backend: hosts instances of users' classes and runs their calls.

``make_package``/``load_class`` move code as content-addressed zips and import it into a
fresh namespace per load; ``InstanceHost`` is the pure-asyncio core; ``DirectServer``
is a worker's own gRPC server (the direct path from proxies); ``BackendWorker`` is the
Ray actor body the AppMaster creates (with ``backend_actor_options``).
"""

from ha_serving._settings import MAX_PACKAGE_BYTES
from ha_serving.backend._actor import BackendWorker, backend_actor_options
from ha_serving.backend._direct import DirectServer
from ha_serving.backend._host import RESERVED_METHODS, InstanceHost, InstanceStats
from ha_serving.backend._package import (
    Package,
    load_class,
    make_package,
    namespace_of,
    unload_namespace,
)

__all__ = [
    "MAX_PACKAGE_BYTES",
    "RESERVED_METHODS",
    "BackendWorker",
    "DirectServer",
    "InstanceHost",
    "InstanceStats",
    "Package",
    "backend_actor_options",
    "load_class",
    "make_package",
    "namespace_of",
    "unload_namespace",
]

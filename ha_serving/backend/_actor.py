"""BackendWorker: the body of a backend Ray actor, a thin async shell over InstanceHost.

The AppMaster makes it an actor with
``ray.remote(BackendWorker).options(**backend_actor_options(name, namespace=ns))`` and
drives it by method calls. Packages arrive as bytes (read from the DB by the AppMaster),
never as a path on the caller's machine. Control methods return a ``ControlResult``
instead of raising, so errors cross Ray as plain values.

Calls arrive two ways, both counted by the same ``InstanceHost``: ``call`` (a Ray actor
call: the fallback path) and the worker's own gRPC server (``DirectServer``, the direct
path), which ``start_direct`` starts on this node's address and the AppMaster puts in
the routing table. Either way the host enforces each instance's ``max_concurrency``, which
the AppMaster gives ``add_instance`` and changes with ``set_max_concurrency``. No Ray
import at module level: the class is plain Python and
unit-testable; only ``start_direct`` asks Ray for the node's address, and only when it
was given none.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ha_serving._errors import HAServingError
from ha_serving._wire import CallResult, ControlResult
from ha_serving.backend._direct import DirectServer
from ha_serving.backend._host import Config, InstanceHost, InstanceStats
from ha_serving.backend._package import Package
from ha_serving.util.tls import TlsFiles

log = logging.getLogger(__name__)


def backend_actor_options(
    name: str,
    *,
    namespace: str,
    num_cpus: float = 1.0,
    max_concurrency: int = 1000,
    max_restarts: int = 0,
    detached: bool = True,
    runtime_env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Options for ``ray.remote(BackendWorker).options(...)``.

    * named, so proxies find the worker by ``RouteEntry.worker`` with ``ray.get_actor``;
    * detached by default, so the worker outlives an AppMaster restart and the new
      AppMaster re-attaches by name (the AppMaster kills it explicitly on teardown);
    * ``num_cpus=1`` by default keeps workers off heads started with ``--num-cpus=0``;
    * ``max_task_retries=0``: Ray must never re-run a user call on its own; the proxy
      decides what is safe to retry;
    * ``max_restarts=0`` by default: a restarted worker comes back empty, so the
      AppMaster, not Ray, should decide how to replace it.
    """
    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "num_cpus": num_cpus,
        "max_concurrency": max_concurrency,
        "max_restarts": max_restarts,
        "max_task_retries": 0,
    }
    if detached:
        options["lifetime"] = "detached"
    if runtime_env is not None:
        options["runtime_env"] = runtime_env
    return options


class BackendWorker:
    """Hosts ``instances_per_worker`` instances of user classes in one actor process."""

    def __init__(
        self,
        name: str,
        *,
        call_threads: int = 64,
        health_timeout_s: float = 5.0,
        direct_host: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """``direct_host``: the address the direct server binds (default: this node's,
        as Ray registered it); ``tls``: the proxies' certificate, with which the direct
        server speaks mutual TLS (None: plaintext)."""
        self._name = name
        self._host = InstanceHost(call_threads=call_threads, health_timeout_s=health_timeout_s)
        self._direct_host = direct_host
        self._tls = tls
        self._direct: DirectServer | None = None
        self._direct_lock = asyncio.Lock()

    async def ping(self) -> str:
        """The worker's name; a cheap liveness probe."""
        return self._name

    async def start_direct(self) -> str:
        """Start the direct gRPC server once, on this node's address and a free port, and
        return its ``host:port``; idempotent, so the AppMaster asks again after its own
        restart. "" where it cannot be set up (outside Ray without a ``direct_host``, or
        the bind failed): proxies then call this worker through Ray."""
        async with self._direct_lock:
            if self._direct is None:
                host = self._direct_host or _ray_node_ip()
                if host is None:
                    return ""
                server = DirectServer(self._name, self._host, tls=self._tls)
                try:
                    await server.start(host)
                except Exception as exc:  # the Ray path still works: degrade, do not fail
                    log.warning("worker %s: no direct server on %s: %s", self._name, host, exc)
                    return ""
                self._direct = server
            return self._direct.address

    async def add_instance(
        self,
        instance_id: str,
        *,
        package: bytes,
        digest: str,
        import_path: str,
        version: str,
        config: Config | None = None,
        max_concurrency: int | None = None,
    ) -> ControlResult:
        """Load ``import_path`` from the package bytes (checked against ``digest``) and
        construct a new instance, which refuses calls beyond ``max_concurrency`` in
        flight (None, what callers that predate the cap send: no cap). Repeating an
        identical add only sets the cap."""

        async def add() -> None:
            pkg = Package.from_bytes(package, expected_digest=digest)
            await self._host.add_instance(
                instance_id, pkg, import_path, version, config, max_concurrency=max_concurrency
            )

        return await _control(add())

    async def load_code(
        self,
        instance_id: str,
        *,
        package: bytes,
        digest: str,
        import_path: str,
        version: str,
        config: Config | None = None,
    ) -> ControlResult:
        """In-place code update in a fresh namespace; on failure the old code serves on."""

        async def load() -> None:
            pkg = Package.from_bytes(package, expected_digest=digest)
            await self._host.load_code(instance_id, pkg, import_path, version, config)

        return await _control(load())

    async def reconfigure(self, instance_id: str, config: Config) -> ControlResult:
        """In-place config change on the same object (``reconfigure(config)``)."""
        return await _control(self._host.reconfigure(instance_id, config))

    async def set_max_concurrency(
        self, instance_id: str, max_concurrency: int | None
    ) -> ControlResult:
        """Change the instance's cap (None: none) for calls that start from now."""

        async def change() -> None:
            self._host.set_max_concurrency(instance_id, max_concurrency)

        return await _control(change())

    async def remove_instance(self, instance_id: str) -> ControlResult:
        """Forget the instance; drain it first (``wait_idle``). Unknown ids are a no-op."""
        return await _control(self._host.remove_instance(instance_id))

    async def call(self, instance_id: str, method: str, payload: bytes) -> CallResult:
        """The data path: one user call, every outcome a CallResult."""
        return await self._host.call(instance_id, method, payload)

    async def check_health(self, instance_id: str) -> bool:
        return await self._host.check_health(instance_id)

    async def check_health_all(self) -> dict[str, bool]:
        """Health of every hosted instance in one round trip (packed workers)."""
        ids = list(self._host.stats())
        answers = await asyncio.gather(*(self._host.check_health(i) for i in ids))
        return dict(zip(ids, answers, strict=True))

    async def wait_idle(self, instance_id: str, timeout_s: float) -> bool:
        """True once no call of the instance is in flight; False after ``timeout_s``."""
        return await self._host.wait_idle(instance_id, timeout_s)

    async def stats(self) -> dict[str, InstanceStats]:
        """Per instance: in-flight calls, code version, last health answer, cap."""
        return self._host.stats()

    async def shutdown(self, grace_s: float = 5.0) -> bool:
        """Before the AppMaster kills the actor: let running calls finish (up to
        ``grace_s``), release the thread pools and stop the direct server; True if all
        finished."""
        finished = await self._host.close(grace_s)
        if self._direct is not None:
            await self._direct.stop(0)
            self._direct = None
        return finished


def _ray_node_ip() -> str | None:
    """This node's IP as Ray registered it; None outside a Ray worker process (where
    Ray is not even imported, it is not imported for this either)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    import ray.util

    # Ray leaves it unannotated; it returns the IP this node registered with.
    return cast("Callable[[], str]", ray.util.get_node_ip_address)()


async def _control(op: Awaitable[None]) -> ControlResult:
    try:
        await op
    except HAServingError as exc:
        return ControlResult.failed(exc.grpc_status, str(exc))
    except Exception as exc:  # a bug of ours must still reach the AppMaster as a value
        return ControlResult.failed("INTERNAL", f"{type(exc).__name__}: {exc}")
    return ControlResult(ok=True)

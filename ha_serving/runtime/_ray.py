"""``RayRuntime``: the only place the control plane touches Ray's actor API."""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from ha_serving.runtime._protocol import ActorSpec, ActorUnavailable

_UNREACHABLE = (ActorDiedError, ActorUnavailableError, RayActorError)


class RayRuntime:
    """Named, detached actors in one Ray namespace of the connected cluster.

    Detached, because actors created by an actor are otherwise owned by it and would die
    with the AppMaster; the AppMaster must be able to die and re-attach.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._handles: dict[str, Any] = {}

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                raise ActorUnavailable(name, "no such actor") from None
            self._handles[name] = handle
        return handle

    async def create(self, spec: ActorSpec) -> None:
        options: dict[str, Any] = {
            "name": spec.name,
            "namespace": self.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "num_cpus": spec.num_cpus,
            "max_concurrency": spec.max_concurrency,
            "max_restarts": spec.max_restarts,
            # Ray must never re-run a call by itself: a user call is not known idempotent
            "max_task_retries": 0,
        }
        if spec.memory_mb:
            options["memory"] = spec.memory_mb * 1024 * 1024
        if spec.runtime_env:
            options["runtime_env"] = spec.runtime_env
        if spec.resources:
            options["resources"] = spec.resources
        actor_cls: Any = ray.remote(spec.cls)
        self._handles[spec.name] = actor_cls.options(**options).remote(*spec.args, **spec.kwargs)

    async def exists(self, name: str) -> bool:
        try:
            self._handle(name)
        except ActorUnavailable:
            return False
        return True

    async def call(
        self, name: str, method: str, *args: Any, timeout_s: float = 30.0, **kwargs: Any
    ) -> Any:
        handle = self._handle(name)
        try:
            ref = getattr(handle, method).remote(*args, **kwargs)
            return await asyncio.wait_for(ref, timeout=timeout_s)
        except _UNREACHABLE as exc:
            self._handles.pop(name, None)  # a restarted actor is found again by name
            raise ActorUnavailable(name, type(exc).__name__) from None
        except (TimeoutError, GetTimeoutError):
            raise ActorUnavailable(name, f"no answer within {timeout_s:.1f}s") from None

    async def kill(self, name: str, *, restart: bool = False) -> None:
        try:
            handle = self._handle(name)
        except ActorUnavailable:
            return
        ray.kill(handle, no_restart=not restart)
        self._handles.pop(name, None)


def connect(gcs_address: str, *, node_ip: str, namespace: str) -> None:
    """Join the cluster at ``gcs_address`` as a driver (through the node at ``node_ip``).

    One process can be a driver of one cluster at a time; ``disconnect`` first to switch.
    """
    import logging

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address=gcs_address,
        namespace=namespace,
        _node_ip_address=node_ip,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()

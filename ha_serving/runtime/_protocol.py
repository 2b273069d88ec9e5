"""The runtime interface: named actors, created, found, called and killed by name.

Names are the durable handles: the AppMaster persists names, not Ray handles, so after
its own restart it re-attaches with ``get`` and after a cluster restart it sees the names
missing and re-creates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ha_serving._errors import TransientError


class ActorUnavailable(TransientError):
    """The named actor is dead, restarting or unreachable; the call may not have run."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"actor {name} unavailable: {reason}", retry_after=0.5)


@dataclass(frozen=True)
class ActorSpec:
    """How to create one named actor: its class and Ray options, in Ray's own terms."""

    name: str
    cls: type
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 0.0
    memory_mb: int | None = None
    runtime_env: dict[str, Any] | None = None
    max_concurrency: int = 1000
    """Concurrent calls the (async) actor accepts: proxies and backends are async."""
    max_restarts: int = -1
    """Ray restarts a crashed actor in place (same name): -1 = forever. A restarted
    worker comes back empty and the AppMaster reloads its instances."""
    resources: dict[str, float] = field(default_factory=dict)


class Runtime(Protocol):
    async def create(self, spec: ActorSpec) -> None:
        """Create the actor if no live actor has that name (idempotent)."""
        ...

    async def exists(self, name: str) -> bool:
        """Whether a live (or restarting) actor has this name."""
        ...

    async def call(
        self, name: str, method: str, *args: Any, timeout_s: float = 30.0, **kwargs: Any
    ) -> Any:
        """Call ``method`` on the named actor; ActorUnavailable if it cannot be reached."""
        ...

    async def kill(self, name: str, *, restart: bool = False) -> None:
        """Kill the named actor (no-op if absent); ``restart`` lets Ray restart it."""
        ...

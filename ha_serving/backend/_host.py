"""InstanceHost: several instances of user classes in one process, pure asyncio.

Theory of operation. An *instance* is one replica: an id, a code version, one object of
the user's class, a health flag, an in-flight count and a cap on it. The host keeps, per
instance, the *generation* now serving (object + version + the namespace its code was
loaded into).
A call takes the current generation and holds on to it until it returns, so

* ``load_code`` builds the new generation fully (import in a fresh namespace, construct,
  apply config) before swapping it in; calls already running finish on the old object,
  new calls go to the new one, and nothing fails in between. If building fails, the old
  generation keeps serving and the error is raised to the caller;
* ``reconfigure`` changes the serving object in place (same object);
* a retired generation's modules are unloaded only once its last call returned.

The user class contract: constructed with no arguments (in a thread, so a slow model load
does not stall other instances); ``reconfigure(config)`` (sync or async) receives the
config, also right after construction when the config is non-empty; an optional
``check_health()`` returning anything but ``False`` means healthy; every other public
method takes one JSON value and returns one. Sync methods run in the host's own thread
pool (the loop's default pool has only cores+4 threads, far below a service's concurrency
cap), coroutine methods run on the loop, and so do sync methods marked
``ha_serving.cheap`` (no thread hop: for methods that never block).

Each instance may have a cap, ``max_concurrency`` (the service spec's, across every
caller: proxies, direct clients and the Ray path alike; None: no cap). A call that finds
the instance holding that many calls is refused before it runs, with
RESOURCE_EXHAUSTED and ``reached_user_code=False``, so its caller may try another
instance. ``add_instance`` sets the cap and ``set_max_concurrency`` changes it; a change
applies to calls that start after it (calls in flight are never cut short).

Control operations on one instance are serialised by a per-instance lock; calls are not.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypedDict

from ha_serving._errors import InvalidSpec, UnknownInstance, UserCodeError
from ha_serving._marks import is_cheap
from ha_serving._wire import CallResult
from ha_serving.backend._package import Package, load_class, namespace_of, unload_namespace

RESERVED_METHODS = frozenset({"reconfigure", "check_health"})
"""Methods of the user class that the platform calls and clients may not."""

Config = Mapping[str, Any]


class InstanceStats(TypedDict):
    inflight: int
    version: str
    healthy: bool
    max_concurrency: int | None
    """The cap the host enforces (None: none)."""


@dataclass(eq=False)
class _Generation:
    """One user object of one code version; in-flight calls keep a reference to it."""

    obj: Any
    version: str
    spec: tuple[str, str]  # (package digest, import path): what add_instance was asked for
    inflight: int = 0
    retired: bool = False

    def retire(self) -> None:
        self.retired = True
        self.unload_if_idle()

    def unload_if_idle(self) -> None:
        if self.retired and self.inflight == 0 and (ns := namespace_of(type(self.obj))):
            unload_namespace(ns)


class _Instance:
    def __init__(self, generation: _Generation, max_concurrency: int | None) -> None:
        self.generation = generation
        self.max_concurrency = max_concurrency
        self.inflight = 0
        self.healthy = True
        self.idle = asyncio.Event()
        self.idle.set()

    def full(self) -> bool:
        return self.max_concurrency is not None and self.inflight >= self.max_concurrency

    def enter(self, gen: _Generation) -> None:
        self.inflight += 1
        gen.inflight += 1
        self.idle.clear()

    def leave(self, gen: _Generation) -> None:
        self.inflight -= 1
        gen.inflight -= 1
        if self.inflight == 0:
            self.idle.set()
        gen.unload_if_idle()


class InstanceHost:
    """Hosts instances by id; ``call`` never raises, control methods raise typed errors."""

    def __init__(self, *, call_threads: int = 64, health_timeout_s: float = 5.0) -> None:
        self._calls = ThreadPoolExecutor(call_threads, thread_name_prefix="ha-call")
        # Control work (imports, constructors, health checks) gets its own threads so it
        # is neither starved by busy user calls nor able to starve them.
        self._control = ThreadPoolExecutor(4, thread_name_prefix="ha-control")
        self._health_timeout_s = health_timeout_s
        self._instances: dict[str, _Instance] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[CallResult]] = set()

    # --- control -------------------------------------------------------------------

    async def add_instance(
        self,
        instance_id: str,
        package: Package,
        import_path: str,
        version: str,
        config: Config | None = None,
        *,
        max_concurrency: int | None = None,
    ) -> None:
        """Load, construct and configure a new instance, capped at ``max_concurrency``
        calls in flight (None: no cap). Idempotent for the same code (the cap given
        replaces the one held)."""
        _check_cap(instance_id, max_concurrency)
        async with self._lock(instance_id):
            if (inst := self._instances.get(instance_id)) is not None:
                gen = inst.generation
                if gen.spec == (package.digest, import_path) and gen.version == version:
                    inst.max_concurrency = max_concurrency
                    return  # a retried add after an AppMaster restart
                raise InvalidSpec(
                    "instance",
                    [f"{instance_id} already runs version {gen.version}; use load_code"],
                )
            gen = await self._build(instance_id, package, import_path, version, config)
            self._instances[instance_id] = _Instance(gen, max_concurrency)

    async def load_code(
        self,
        instance_id: str,
        package: Package,
        import_path: str,
        version: str,
        config: Config | None = None,
    ) -> None:
        """Swap in a new code version in place; on any error the old one keeps serving."""
        async with self._lock(instance_id):
            inst = self._require(instance_id)
            new = await self._build(instance_id, package, import_path, version, config)
            old, inst.generation = inst.generation, new
            inst.healthy = True
            old.retire()

    async def reconfigure(self, instance_id: str, config: Config) -> None:
        """Call the serving object's ``reconfigure(config)`` (same object, in place)."""
        async with self._lock(instance_id):
            obj = self._require(instance_id).generation.obj
            await self._apply_config(instance_id, obj, config)

    def set_max_concurrency(self, instance_id: str, max_concurrency: int | None) -> None:
        """Change the instance's cap (None: no cap) for the calls that start from now;
        calls in flight run on, even above a lowered cap."""
        _check_cap(instance_id, max_concurrency)
        self._require(instance_id).max_concurrency = max_concurrency

    async def remove_instance(self, instance_id: str) -> None:
        """Stop routing calls to the instance (drain it with ``wait_idle`` first).

        Calls still running finish on their object. Removing an unknown id is a no-op.
        """
        async with self._lock(instance_id):
            inst = self._instances.pop(instance_id, None)
        self._locks.pop(instance_id, None)
        if inst is not None:
            inst.generation.retire()

    # --- data ----------------------------------------------------------------------

    async def call(self, instance_id: str, method: str, payload: bytes) -> CallResult:
        """Run ``method`` with the JSON ``payload``; every outcome is a CallResult."""
        inst = self._instances.get(instance_id)
        if inst is None:
            return CallResult.failure(
                "UNAVAILABLE",
                f"instance {instance_id!r} is not hosted by this worker",
                reached_user_code=False,
                instance_id=instance_id,
            )
        gen = inst.generation
        fn = _public_method(gen.obj, method)
        if fn is None:
            return CallResult.failure(
                "NOT_FOUND",
                f"{type(gen.obj).__name__} has no method {method!r}",
                reached_user_code=False,
                instance_id=instance_id,
                version=gen.version,
            )
        try:
            value = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, nested too deep
            return CallResult.failure(
                "INVALID_ARGUMENT",
                f"payload is not valid JSON: {exc}",
                reached_user_code=False,
                instance_id=instance_id,
                version=gen.version,
            )
        if inst.full():  # the cap counts every caller's calls: refused before it runs
            return CallResult.failure(
                "RESOURCE_EXHAUSTED",
                f"instance {instance_id!r} is at its max_concurrency "
                f"({inst.max_concurrency} calls in flight)",
                reached_user_code=False,
                instance_id=instance_id,
                version=gen.version,
            )
        # Counted now, not when the task starts, so the next call sees it at once. The
        # task is shielded: if our caller is cancelled, the user code still runs to its
        # end and the in-flight count stays true, which is what draining relies on.
        inst.enter(gen)
        task = asyncio.ensure_future(self._run_call(instance_id, gen, fn, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: inst.leave(gen))
        return await asyncio.shield(task)

    async def _run_call(
        self,
        instance_id: str,
        gen: _Generation,
        fn: Callable[..., Any],
        value: Any,
    ) -> CallResult:
        try:
            if is_cheap(fn):  # declared non-blocking: run on the loop, no thread hop
                result = fn(value)
                if inspect.isawaitable(result):
                    result = await result
            else:
                result = await self._invoke(self._calls, fn, value)
        except Exception as exc:  # the user's error goes back to the caller, not up
            message = f"{type(exc).__name__}: {exc}"
            return CallResult.failure(
                "UNKNOWN",
                message,
                reached_user_code=True,
                instance_id=instance_id,
                version=gen.version,
            )
        try:
            data = json.dumps(result).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            return CallResult.failure(
                "UNKNOWN",
                f"result of {getattr(fn, '__name__', '?')} is not JSON: {exc}",
                reached_user_code=True,
                instance_id=instance_id,
                version=gen.version,
            )
        return CallResult.success(data, instance_id=instance_id, version=gen.version)

    async def check_health(self, instance_id: str) -> bool:
        """The user's ``check_health()`` (True if absent); False on error, timeout, or
        an unknown instance. The answer is also kept for ``stats()``."""
        inst = self._instances.get(instance_id)
        if inst is None:
            return False
        fn = getattr(inst.generation.obj, "check_health", None)
        healthy = True
        if callable(fn):
            try:
                answer = await asyncio.wait_for(
                    self._invoke(self._control, fn), self._health_timeout_s
                )
                healthy = answer is not False
            except Exception:  # a raising or hanging check means unhealthy, nothing more
                healthy = False
        inst.healthy = healthy
        return healthy

    def inflight(self, instance_id: str) -> int:
        inst = self._instances.get(instance_id)
        return 0 if inst is None else inst.inflight

    def stats(self) -> dict[str, InstanceStats]:
        return {
            iid: InstanceStats(
                inflight=inst.inflight,
                version=inst.generation.version,
                healthy=inst.healthy,
                max_concurrency=inst.max_concurrency,
            )
            for iid, inst in self._instances.items()
        }

    async def wait_idle(self, instance_id: str, timeout_s: float) -> bool:
        """True once the instance has no call in flight (or is unknown); False on timeout."""
        inst = self._instances.get(instance_id)
        if inst is None:
            return True
        try:
            await asyncio.wait_for(inst.idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, grace_s: float = 5.0) -> bool:
        """Let running calls finish (up to ``grace_s``), then drop every instance.

        True if every call finished in time. Calls still running in threads are not
        interrupted (Python cannot), their answers just go nowhere.
        """
        finished = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            finished = not pending
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)
        for inst in self._instances.values():
            inst.generation.retire()
        self._instances.clear()
        return finished

    # --- helpers -------------------------------------------------------------------

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def _require(self, instance_id: str) -> _Instance:
        inst = self._instances.get(instance_id)
        if inst is None:
            raise UnknownInstance(instance_id)
        return inst

    async def _build(
        self,
        instance_id: str,
        package: Package,
        import_path: str,
        version: str,
        config: Config | None,
    ) -> _Generation:
        def construct() -> Any:
            cls = load_class(package, import_path, namespace_id=instance_id)
            try:
                return cls()
            except Exception as exc:
                if ns := namespace_of(cls):
                    unload_namespace(ns)
                raise UserCodeError(
                    f"constructing {import_path}", type(exc).__name__, str(exc)
                ) from None

        obj = await asyncio.get_running_loop().run_in_executor(self._control, construct)
        gen = _Generation(obj, version, (package.digest, import_path))
        if config:
            try:
                await self._apply_config(instance_id, obj, config)
            except Exception:
                gen.retire()  # never served: drop its modules now
                raise
        return gen

    async def _apply_config(self, instance_id: str, obj: Any, config: Config) -> None:
        fn = getattr(obj, "reconfigure", None)
        if not callable(fn):
            raise InvalidSpec(
                "config", [f"{instance_id}: {type(obj).__name__} has no reconfigure(config)"]
            )
        try:
            await self._invoke(self._control, fn, dict(config))
        except Exception as exc:
            raise UserCodeError(
                f"reconfigure of {instance_id}", type(exc).__name__, str(exc)
            ) from None

    @staticmethod
    async def _invoke(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            result = await result
        return result


def _check_cap(instance_id: str, max_concurrency: int | None) -> None:
    if max_concurrency is not None and max_concurrency < 1:
        raise InvalidSpec("max_concurrency", [f"{instance_id}: {max_concurrency} is below 1"])


def _public_method(obj: Any, method: str) -> Callable[..., Any] | None:
    if not method or method.startswith("_") or method in RESERVED_METHODS:
        return None
    try:
        fn = getattr(obj, method, None)
    except Exception:  # a raising property is not a method either
        return None
    return fn if callable(fn) else None

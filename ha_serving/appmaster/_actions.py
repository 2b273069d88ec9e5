"""The executor's hands: what each planner action does, state change first.

``Actions`` is held by ``AppMasterCore`` (composition: it is given what it uses, and
nothing else): ``execute`` carries out one round's planned actions. Every method here
persists the state change an action enables (through ``mutate``, the core's group
commit) before the side effect it allows, so a crash between the two leaves a state the
next round's plan completes or repeats idempotently. The one exception,
``withdraw_proxy``, says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, assert_never

from ha_serving._errors import HAServingError
from ha_serving._settings import AppMasterSettings
from ha_serving._spec import Revision
from ha_serving._status import RolloutStatus
from ha_serving._wire import RouteEntry, RoutingTable
from ha_serving.appmaster._context import JobContext, Mutate
from ha_serving.appmaster._planner import (
    Action,
    Apply,
    Assign,
    CreateInstances,
    Drain,
    FinishRollout,
    Load,
    MarkLost,
    Observed,
    PushRoutes,
    Remove,
    ReplaceWorker,
    RollBack,
    StartProxy,
    StartWorker,
    StopProxy,
    StopWorker,
    WithdrawProxy,
    proxy_names,
    successor,
)
from ha_serving.appmaster._publication import Publication
from ha_serving.appmaster._state import (
    MAX_RETIRED_WORKERS,
    Group,
    Instance,
    JobState,
    Phase,
    Proxy,
    ProxyPhase,
    end_release,
    finish_rollout,
)
from ha_serving.runtime import ActorSpec, ActorUnavailable

ActorFactory = Callable[[str, JobState], ActorSpec]
Bookkeeping = CreateInstances | Assign | MarkLost | RollBack | FinishRollout | Drain
"""The actions that only change the state (``book``); the executor does them first."""


class Actions:
    """What the planner's actions do on the runtime, the store and the state.

    It holds no state of its own but caches: of code packages, of the workers' direct
    addresses and of what it wrote to discovery (``publication``). The job state is the
    core's, read through ``current`` and changed only through ``mutate``."""

    def __init__(
        self,
        job: JobContext,
        *,
        settings: AppMasterSettings,
        proxy_actor: ActorFactory,
        worker_actor: ActorFactory,
        mutate: Mutate,
        current: Callable[[], JobState | None],
    ) -> None:
        self.store, self.runtime, self.clock, self.log = job.store, job.runtime, job.clock, job.log
        self.cluster, self.service = job.cluster, job.service
        self.settings = settings
        """Its timings: endpoint leases, call timeouts, retries, withdrawal."""
        self._proxy_actor = proxy_actor
        self._worker_actor = worker_actor
        self._mutate = mutate
        self._current = current
        self._packages: dict[str, bytes] = {}
        """Code packages by digest, read from the store once (a rollout needs two)."""
        self._direct: dict[str, str] = {}
        """Worker -> its direct server's address ("" for none), as the worker reported it
        (``start_direct``): asked of every live worker not in here (``learn_direct``, so
        again after an AppMaster restart) and after every instance load (a worker Ray
        restarted comes back empty, on a new port, and its instances are loaded anew)."""
        self.publication = Publication(settings.endpoint_refresh_s)
        """The endpoints this process wrote to discovery, and when: what is due next."""

    async def execute(self, actions: list[Action], observed: Observed) -> None:
        """Bookkeeping first, then side effects concurrently, then routes to proxies,
        between the workers' raised caps and their lowered ones (``set_caps``)."""
        book = [
            a
            for a in actions
            if isinstance(a, (CreateInstances, Assign, MarkLost, RollBack, FinishRollout, Drain))
        ]
        for entry in book:
            await self.book(entry)
        await _gather(self._effects(actions))
        steps: list[Awaitable[None]] = []
        for a in actions:
            if isinstance(a, Load):
                steps.append(self.load(a.id, a.revision))
            elif isinstance(a, Apply):
                steps.append(self.apply(a.id, a.revision))
            elif isinstance(a, Remove):
                steps.append(self.remove(a.id))
        await _gather(steps)
        await self.set_caps(observed, lower=False)
        state = self._state()
        if state.routes_acked < state.routes_version or any(
            isinstance(a, PushRoutes) for a in actions
        ):
            await self.push_routes(observed)
        state = self._state()
        if state.routes_acked >= state.routes_version:
            await self.set_caps(observed, lower=True)

    async def set_caps(self, observed: Observed, *, lower: bool) -> None:
        """Give every hosted instance that enforces another cap the spec's
        ``max_concurrency``: raised caps (``lower=False``) before the proxies get the
        tables with their larger shares, lowered ones (and where none was set) once
        every proxy acknowledged a table within them, so the proxies' shares never sum
        above what a worker enforces. Repeated each round until the workers report it."""
        cap = self._state().spec.max_concurrency
        steps: list[Awaitable[None]] = [
            self._set_cap(worker, instance_id, cap)
            for worker, view in observed.workers.items()
            if view is not None
            for instance_id, held in view.caps.items()
            if held != cap and (held is None or held > cap) == lower
        ]
        await _gather(steps)

    async def _set_cap(self, worker: str, instance_id: str, cap: int) -> None:
        with contextlib.suppress(ActorUnavailable):  # asked again next round if still there
            result = await self._control(worker, "set_max_concurrency", instance_id, cap)
            if not result.ok:  # removed meanwhile: nothing to cap
                self.log.info("cap of %s not set: %s", instance_id, result.message)

    def _effects(self, actions: list[Action]) -> list[Awaitable[None]]:
        """The actor side effects among ``actions`` (run concurrently, before loads)."""
        effects: list[Awaitable[None]] = []
        for a in actions:
            if isinstance(a, StartProxy):
                effects.append(self.start_proxy(a.name))
            elif isinstance(a, StartWorker):
                effects.append(self.start_worker(a.name))
            elif isinstance(a, WithdrawProxy):
                effects.append(self.withdraw_proxy(a.name, a.addresses))
            elif isinstance(a, StopProxy):
                effects.append(self.stop_proxy(a.name))
            elif isinstance(a, StopWorker):
                effects.append(self.stop_worker(a.name))
            elif isinstance(a, ReplaceWorker):
                effects.append(self.replace_worker(a.name))
        return effects

    async def book(self, action: Bookkeeping) -> None:
        now = self.clock.now()

        def change(state: JobState) -> JobState:  # noqa: PLR0911 - one return per action
            if isinstance(action, CreateInstances):
                for inst in action.instances:
                    state = state.with_instance(inst)
                return state
            if isinstance(action, MarkLost):
                bump = any(state.instances[i].phase == Phase.SERVING for i in action.ids)
                for i in action.ids:
                    inst = state.instances[i]
                    state = state.with_instance(inst.to(Phase.PENDING, running=None, purpose=""))
                return _bump_routes(state) if bump else state
            if isinstance(action, Drain):
                nxt = state.routes_version + 1
                for i in action.ids:
                    inst = state.instances[i]
                    state = state.with_instance(
                        inst.to(Phase.DRAINING, drained_at_routes=nxt, purpose=action.purpose)
                    )
                return state.model_copy(update={"routes_version": nxt})
            if isinstance(action, Assign):
                for i in action.ids:
                    inst = state.instances[i]
                    state = state.with_instance(inst.model_copy(update={"group": action.group}))
                return _bump_routes(state)
            if isinstance(action, RollBack):
                r = state.rollout
                if r is None or (r.from_rev is None and state.release is None):
                    return finish_rollout(state, RolloutStatus.FAILED, now)
                rolled = r.to(RolloutStatus.ROLLING_BACK)
                if state.release is not None:  # a failing candidate: abort the release
                    state = _bump_routes(end_release(state, promote=False))
                    return state.model_copy(update={"rollout": rolled})
                return state.model_copy(update={"desired": r.from_rev, "rollout": rolled})
            if isinstance(action, FinishRollout):
                return finish_rollout(state, action.status, now)
            assert_never(action)  # a new bookkeeping action must be booked here, not dropped

        await self._mutate(change)
        if isinstance(action, (RollBack, FinishRollout)):
            self.log.info("rollout %s", type(action).__name__)
            await asyncio.to_thread(
                self.store.append_event,
                "rollout",
                cluster=self.cluster,
                service=self.service,
                detail={"action": type(action).__name__},
            )

    async def start_proxy(self, name: str) -> None:
        # recorded first: a proxy created by an AppMaster that died at once is still ours
        # to stop if the spec drops it
        state = await self._mutate(
            lambda s: (
                s
                if name in s.proxies
                else s.with_proxy(Proxy(name=name, phase=ProxyPhase.STARTING))
            )
        )
        await self.runtime.create(self._proxy_actor(name, state))
        endpoint = await self.runtime.call(name, "start", timeout_s=self.settings.call_timeout_s)
        metrics = f"{endpoint.address.rsplit(':', 1)[0]}:{endpoint.metrics_port}"
        state = await self._mutate(
            lambda s: s.with_proxy(
                s.proxies[name].to(
                    ProxyPhase.SERVING,
                    address=endpoint.address,
                    metrics_address=metrics,
                    stop_at=0.0,
                )
            )
        )
        proxy = state.proxies[name]
        await self._publish(endpoint.address, self._labels(state, proxy))

    def _labels(self, state: JobState, proxy: Proxy) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "proxy": proxy.name,
            "metrics": proxy.metrics_address,
            "weight": _weight(state, self.cluster),
        }

    async def _publish(self, address: str, labels: dict[str, Any]) -> None:
        """Register (or renew) a serving proxy's endpoint in discovery."""
        started = self.clock.monotonic()
        self.publication.writing(address, started)
        await asyncio.to_thread(
            self.store.upsert_endpoint,
            self.service,
            self.cluster,
            address,
            labels,
            self.settings.endpoint_ttl_s,
        )
        self.publication.wrote(address, labels, started)

    async def withdraw_proxy(self, name: str, addresses: tuple[str, ...]) -> None:
        """Take the proxy out of discovery, then record when it may be stopped.

        Side effect before state, unlike elsewhere, and on purpose: ``stop_at`` must be
        counted from a removal that happened. A crash in between leaves it ``serving``
        and the next round withdraws it again (idempotent); nothing re-publishes it
        meanwhile, since only wanted proxies are published."""
        for address in addresses:
            await asyncio.to_thread(self.store.remove_endpoint, self.service, self.cluster, address)
            self.publication.removed(address)
        stop_at = self.clock.now() + self.settings.withdraw_s
        await self._mutate(
            lambda s: s.with_proxy(s.proxies[name].to(ProxyPhase.WITHDRAWN, stop_at=stop_at))
        )
        self.log.info(
            "proxy %s withdrawn from discovery; stopping it in %.0fs",
            name,
            self.settings.withdraw_s,
        )

    async def stop_proxy(self, name: str) -> None:
        """Stop (NOT_SERVING, in-flight calls finish within the drain timeout), kill,
        forget. Repeated after a crash at any point, it completes what is left."""

        def stopping(s: JobState) -> JobState:
            p = s.proxies[name]
            return s if p.phase == ProxyPhase.STOPPING else s.with_proxy(p.to(ProxyPhase.STOPPING))

        state = await self._mutate(stopping)
        grace = state.spec.rollout.drain_timeout_s
        if await self.runtime.exists(name):
            try:
                await self.runtime.call(
                    name, "stop", grace, timeout_s=grace + self.settings.stop_margin_s
                )
            except ActorUnavailable as exc:  # dead or hung: nothing more to wait for
                self.log.warning("proxy %s did not stop gracefully (%s): killing it", name, exc)
            await self.runtime.kill(name)
        await self._mutate(lambda s: s.without_proxy(name))
        self.log.info("proxy %s stopped and forgotten", name)

    async def start_worker(self, name: str) -> None:
        state = await self._mutate(
            lambda s: s.model_copy(
                update={"workers": {**s.workers, name: s.workers.get(name, s.placement_key)}}
            )
        )
        await self.runtime.create(self._worker_actor(name, state))

    async def stop_worker(self, name: str) -> None:
        # recorded first: from now on no new instance may be placed on this name
        await self._mutate(
            lambda s: s.model_copy(
                update={
                    "retired_workers": (*s.retired_workers, name)[-MAX_RETIRED_WORKERS:],
                }
            )
        )
        # empty (its instances were removed, each after wait_idle): shutdown only
        # releases its thread pools; a dead worker is just forgotten
        with contextlib.suppress(ActorUnavailable):
            await self.runtime.call(name, "shutdown", timeout_s=self.settings.stop_margin_s * 2)
        await self.runtime.kill(name)
        self.forget_direct(name)
        await self._mutate(
            lambda s: s.model_copy(
                update={"workers": {k: v for k, v in s.workers.items() if k != name}}
            )
        )

    async def replace_worker(self, name: str) -> None:
        """Drained instances wait for idle, the worker dies, and they load anew on a
        successor with a new name (created by the next round with the current resources)."""
        state = self._state()
        mine = [i for i in state.instances.values() if i.worker == name]
        timeout = state.spec.rollout.drain_timeout_s
        await asyncio.gather(
            *(
                self.runtime.call(name, "wait_idle", i.id, timeout, timeout_s=timeout + 5)
                for i in mine
            )
        )
        await self.runtime.kill(name)
        self.forget_direct(name)

        new = successor(name)

        def renew(s: JobState) -> JobState:
            for i in mine:
                inst = s.instances[i.id]
                s = s.with_instance(inst.to(Phase.PENDING, running=None, purpose="", worker=new))
            return s.model_copy(
                update={"workers": {k: v for k, v in s.workers.items() if k != name}}
            )

        await self._mutate(renew)

    async def _package(self, digest: str) -> bytes:
        data = self._packages.get(digest)
        if data is None:
            data = await asyncio.to_thread(self.store.get_package, digest)
            # a rollout (and its rollback) needs two versions at most
            self._packages = {k: v for k, v in self._packages.items() if k == self._desired_pkg()}
            self._packages[digest] = data
        return data

    def _desired_pkg(self) -> str:
        state = self._current()
        return state.desired.package if state is not None else ""

    async def load(self, instance_id: str, rev: Revision) -> None:
        inst = self._inst(instance_id)
        code = await self._code(rev)
        cap = self._state().spec.max_concurrency
        try:
            result = await self._control(
                inst.worker, "add_instance", instance_id, **code, max_concurrency=cap
            )
        except TypeError:  # a worker of older code, without the cap: it enforces none
            result = await self._control(inst.worker, "add_instance", instance_id, **code)
        if result.ok:  # the worker may be a new process (Ray restarted it): a new address
            await self._ask_direct(inst.worker)
        await self._settle(instance_id, rev, result, loaded=result.ok)

    async def learn_direct(self, worker: str) -> None:
        """Ask live ``worker`` its direct address unless it is known already (the
        observe path: a worker this AppMaster has not asked yet)."""
        if worker not in self._direct:
            await self._ask_direct(worker)

    def forget_direct(self, worker: str) -> None:
        """``worker`` is gone: its address (if it comes back, a new process) is unknown."""
        self._direct.pop(worker, None)

    async def _ask_direct(self, worker: str) -> None:
        """Learn ``worker``'s direct server address (starting the server if need be);
        unknown while the worker does not answer, "" where it has no direct server:
        routing entries then send proxies through Ray."""
        try:
            address = await self.runtime.call(worker, "start_direct", timeout_s=5.0)
        except ActorUnavailable:
            self._direct.pop(worker, None)
            return
        except AttributeError:  # a worker of older code, without start_direct: Ray
            address = ""
        self._direct[worker] = str(address)

    async def _code(self, rev: Revision) -> dict[str, Any]:
        """The keyword arguments of a worker's add_instance/load_code for ``rev``."""
        return {
            "package": await self._package(rev.package),
            "digest": rev.package,
            "import_path": rev.import_path,
            "version": rev.version,
            "config": rev.config,
        }

    async def apply(self, instance_id: str, rev: Revision) -> None:
        inst = self._inst(instance_id)
        timeout = self._state().spec.rollout.drain_timeout_s
        idle = await self.runtime.call(
            inst.worker, "wait_idle", instance_id, timeout, timeout_s=timeout + 5
        )
        if not idle:
            self.log.warning("drain timeout: updating %s with calls in flight", instance_id)
        if inst.phase != Phase.UPDATING:  # else a restarted AppMaster finishing the update
            await self._mutate(
                lambda s: s.with_instance(s.instances[instance_id].to(Phase.UPDATING))
            )
        if inst.running is not None and inst.running.same_code(rev):
            result = await self._control(inst.worker, "reconfigure", instance_id, rev.config)
        else:
            code = await self._code(rev)
            result = await self._control(inst.worker, "load_code", instance_id, **code)
        await self._settle(instance_id, rev, result, loaded=result.ok)

    async def _settle(self, instance_id: str, rev: Revision, result: Any, *, loaded: bool) -> None:
        """After a load/update: health-checked instances serve, others fail (and count)."""
        inst = self._inst(instance_id)
        healthy = False
        if loaded:
            try:
                healthy = bool(
                    await self.runtime.call(
                        inst.worker, "check_health", instance_id, timeout_s=10.0
                    )
                )
            except ActorUnavailable:
                healthy = False
        now = self.clock.now()

        def change(state: JobState) -> JobState:
            cur = state.instances[instance_id]
            if healthy:
                group = cur.group
                if group == Group.CANDIDATE and state.release is None:
                    group = Group.STABLE  # a rolled-back canary instance is stable again
                served = cur.to(Phase.SERVING, running=rev, purpose="", group=group)
                return _bump_routes(state.with_instance(served))
            failed = cur.to(
                Phase.FAILED,
                running=rev if loaded else cur.running,
                retry_at=now + self.settings.failed_retry_s,
            )
            state = state.with_instance(failed)
            r = state.rollout
            if r is not None and r.status == RolloutStatus.RUNNING:
                state = state.model_copy(
                    update={"rollout": r.model_copy(update={"failures": r.failures + 1})}
                )
            return state

        await self._mutate(change)
        if not healthy:
            self.log.warning(
                "instance %s failed to serve %s: %s",
                instance_id,
                rev.version,
                getattr(result, "message", "health check failed"),
            )

    async def remove(self, instance_id: str) -> None:
        inst = self._inst(instance_id)
        if inst.phase == Phase.DRAINING:
            timeout = self._state().spec.rollout.drain_timeout_s
            await self.runtime.call(
                inst.worker, "wait_idle", instance_id, timeout, timeout_s=timeout + 5
            )
        if inst.phase != Phase.REMOVING:  # else a restarted AppMaster finishing the removal
            await self._mutate(
                lambda s: s.with_instance(s.instances[instance_id].to(Phase.REMOVING))
            )
        with contextlib.suppress(ActorUnavailable):  # a dead worker hosts nothing
            await self._control(inst.worker, "remove_instance", instance_id)
        await self._mutate(lambda s: s.without_instance(instance_id))

    async def _control(self, worker: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """A worker control call; its ControlResult says whether it worked."""
        return await self.runtime.call(
            worker, method, *args, timeout_s=self.settings.call_timeout_s, **kwargs
        )

    async def push_routes(self, observed: Observed) -> None:
        state = self._state()
        table = RoutingTable(
            service=self.service,
            version=state.routes_version,
            entries=tuple(
                RouteEntry(
                    instance_id=i.id,
                    worker=i.worker,
                    version=i.running.version if i.running else "",
                    max_concurrency=state.concurrency_per_proxy(),
                    group=i.group.value,
                    address=self._direct.get(i.worker, ""),
                )
                for i in state.serving()
            ),
            candidate_weight=state.release.weight if state.release is not None else 0,
        )
        # withdrawn proxies still serve some calls: they get the table too; ones stopped
        # since the round began do not
        live = [
            n
            for n, v in observed.proxies.items()
            if v is not None and (n in state.proxies or n in proxy_names(state))
        ]

        async def push(name: str) -> bool:
            try:
                held = await self.runtime.call(name, "update_routes", table, timeout_s=10.0)
            except ActorUnavailable:
                return False
            return int(held) >= table.version

        acks = await asyncio.gather(*(push(n) for n in live))
        if live and all(acks):
            await self._mutate(
                lambda s: s.model_copy(update={"routes_acked": max(s.routes_acked, table.version)})
            )

    async def heartbeat_endpoints(self, observed: Observed, started: set[str]) -> None:
        """Publish the serving proxies the spec asks for, and nothing else: a withdrawn
        one stays out, a dead one is taken out. ``started``: proxies started this round
        (observed dead before it, so alive by their record). Only what changed, or is
        due for renewal, is written (``Publication``)."""
        state = self._current()
        if state is None:
            return
        live: dict[str, dict[str, Any]] = {}
        for name in proxy_names(state):
            proxy = state.proxies.get(name)
            if proxy is None or proxy.phase != ProxyPhase.SERVING or proxy.address is None:
                continue
            if observed.proxies.get(name) is not None or name in started:
                live[proxy.address] = self._labels(state, proxy)
        due = self.publication.due(live, self.clock.monotonic())
        for address in due.write:
            await self._publish(address, live[address])
        if due.prune:
            keep = set(live)
            await asyncio.to_thread(
                self.store.remove_endpoints, self.service, self.cluster, keep=keep
            )
            self.publication.pruned_to(keep)

    def _inst(self, instance_id: str) -> Instance:
        return self._state().instances[instance_id]

    def _state(self) -> JobState:
        state = self._current()
        if state is None:
            raise HAServingError(f"{self.service}: AppMaster has no state yet")
        return state


async def _gather(aws: list[Awaitable[None]]) -> None:
    """Run side effects concurrently; the first failure is raised after all finished."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _bump_routes(state: JobState) -> JobState:
    return state.model_copy(update={"routes_version": state.routes_version + 1})


def _weight(state: JobState, cluster: str) -> int:
    """This cluster's traffic weight: the Keeper's override (a drained cluster's 0), else
    the spec's placement (100 when not placed)."""
    if state.cluster_weight is not None:
        return state.cluster_weight
    for placed in state.spec.placement.clusters:
        if placed.name == cluster:
            return placed.weight
    return 100

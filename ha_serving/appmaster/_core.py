"""Act separately: the AppMaster's executor, a thin loop around the pure planner.

Each round: observe the runtime, ``plan()``, apply the actions. Every state change is
saved to the DB (compare-and-set) *before* the side effect it enables, through
``_mutate``, which applies a change to the latest state under a lock so concurrent
actions never lose each other's updates. If the DB is down, nothing new is acted on;
proxies keep their last routing table, so the data plane keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, assert_never

from ha_serving._errors import (
    ConflictError,
    HAServingError,
    InvalidSpec,
    LeaseLost,
    TransientError,
)
from ha_serving._instructions import (
    DeployBody,
    EndReleaseBody,
    ReleaseBody,
    ReleaseInstruction,
    TrafficBody,
    parse_instruction,
)
from ha_serving._settings import AppMasterSettings, AutoscaleSettings
from ha_serving._spec import Revision, ServiceSpec
from ha_serving._status import RolloutKind, RolloutStatus
from ha_serving.appmaster._actions import Actions, ActorFactory
from ha_serving.appmaster._context import JobContext
from ha_serving.appmaster._planner import (
    Observed,
    ProxyView,
    StartProxy,
    WorkerView,
    plan,
    proxy_names,
)
from ha_serving.appmaster._scaler import Autoscaler
from ha_serving.appmaster._state import (
    MAX_APPLIED_OPS,
    JobState,
    Release,
    Rollout,
    end_release,
    finish_rollout,
)
from ha_serving.runtime import ActorUnavailable, Runtime
from ha_serving.store import KEEPER_LEADER, Store
from ha_serving.util.clock import Clock, SystemClock
from ha_serving.util.logs import bound


class StaleInstruction(HAServingError):
    """An instruction from a Keeper epoch below the highest this AppMaster has seen."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, epoch: int, highest: int, message: str | None = None) -> None:
        self.epoch = epoch
        self.highest = highest
        super().__init__(message or f"instruction epoch {epoch} < highest seen {highest}: refused")


class UnknownEpoch(StaleInstruction):
    """An epoch above any the Keepers' leadership lease has granted: made up by its
    caller, not a leader's. Refused like a stale one, so it can never fence the real
    leader out."""

    def __init__(self, epoch: int, granted: int) -> None:
        message = f"instruction epoch {epoch} > the Keepers' lease epoch {granted}: refused"
        super().__init__(epoch, granted, message)


MAX_REJECTED = 20
"""Rejected instructions a state remembers (newest last), for the Keeper to read."""


def _start_or_step(state: JobState, body: ReleaseBody, op_id: str, now: float) -> JobState:
    """Start operation ``body.op``'s release, or set the weight of the running one."""
    r = state.release
    if r is not None and r.op_id == body.op:
        if r.weight == body.weight:
            return state
        return state.model_copy(
            update={
                "release": r.model_copy(update={"weight": body.weight}),
                "routes_version": state.routes_version + 1,
            }
        )
    if r is not None:  # a newer release replaces an older one
        state = end_release(state, promote=False)
    spec = body.spec
    candidate = Revision(
        version=spec.version,
        package=body.package,
        import_path=spec.code.import_path,
        config=spec.config,
    )
    release = Release(
        op_id=body.op,
        mode=body.mode,
        candidate=candidate,
        spec=spec,
        instances=body.instances,
        weight=body.weight,
    )
    rollout = Rollout(
        op_id=op_id,
        kind=RolloutKind(body.mode.value),
        from_rev=state.desired,
        to_rev=candidate,
        started_at=now,
    )
    state = finish_rollout(state, RolloutStatus.SUPERSEDED, now)
    return state.model_copy(
        update={
            "release": release,
            "rollout": rollout,
            "routes_version": state.routes_version + 1,
        }
    )


def _end(
    state: JobState, release_op: str, *, promote: bool, op_id: str, now: float
) -> tuple[JobState, bool]:
    """Promote or abort operation ``release_op``'s running release; (the state, whether
    it was in effect already). A release that is not running here is rejected
    (``InvalidSpec``: the leader fails the operation with the reason), never recorded as
    applied, except an abort of one this AppMaster aborted itself (it rolls a failing
    candidate back on its own): that abort is in effect already."""
    kind = "promote" if promote else "abort"
    r = state.release
    if r is None or r.op_id != release_op:
        ended = state.ended_releases.get(release_op)
        if ended == "aborted" and not promote:
            return state, True
        was = f"it was {ended} here" if ended else "it never ran here"
        now_running = f"release {r.op_id} runs" if r is not None else "no release runs"
        raise InvalidSpec(
            "instruction", [f"cannot {kind} release {release_op}: {was}, {now_running}"]
        )
    rollout = Rollout(  # an abort has nothing to roll back to
        op_id=op_id,
        kind=kind,
        from_rev=state.desired if promote else None,
        to_rev=r.candidate if promote else state.desired,
        started_at=now,
    )
    state = finish_rollout(state, RolloutStatus.SUPERSEDED, now)
    state = end_release(state, promote=promote)
    state = state.model_copy(
        update={"rollout": rollout, "routes_version": state.routes_version + 1}
    )
    return state, False


class AppMasterCore:
    """The control loop of one service on one cluster; Ray-free (``Runtime`` adapter)."""

    def __init__(
        self,
        *,
        store: Store,
        runtime: Runtime,
        cluster: str,
        service: str,
        proxy_actor: ActorFactory,
        worker_actor: ActorFactory,
        clock: Clock | None = None,
        settings: AppMasterSettings | None = None,
        autoscale: AutoscaleSettings | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.settings = settings or AppMasterSettings()
        self.cluster = cluster
        self.service = service
        self.clock = clock or SystemClock()
        self.state: JobState | None = None
        self._version: int | None = None
        self._lock = asyncio.Lock()
        self._pending: list[tuple[Callable[[JobState], JobState], asyncio.Future[JobState]]] = []
        self._wake = asyncio.Event()
        self._last_health = 0.0
        self._unhealthy: frozenset[str] = frozenset()
        self._granted = 0
        """Highest epoch the store's leadership lease was seen at (it only grows)."""
        self.fence: tuple[str, int] | None = None
        """(lease, epoch) every state write is fenced by: set by an AppMaster with a warm
        standby (``appmaster._standby``), so once the standby took the lease this one's
        writes fail with ``LeaseLost`` and ``run`` ends; None: unfenced (one AppMaster)."""
        self.rounds = 0
        self._reconciled = False
        """True once a round has observed the actors and acted on what it saw since this
        process loaded its state: until then the state is what was persisted, which may
        list as serving actors that died with the previous process."""
        self.log = bound("ha_serving.appmaster", cluster=cluster, service=service)
        job = JobContext(store, runtime, cluster, service, self.clock, self.log)
        self.autoscaler = Autoscaler(job, settings=autoscale or AutoscaleSettings())
        self.actions = Actions(
            job,
            settings=self.settings,
            proxy_actor=proxy_actor,
            worker_actor=worker_actor,
            mutate=self._mutate,
            current=lambda: self.state,
        )
        """What the planner's actions do (it changes the state only through ``_mutate``)."""

    # --- durable state ----------------------------------------------------------------

    async def load(self) -> JobState | None:
        found = await asyncio.to_thread(self.store.load_appmaster_state, self.cluster, self.service)
        if found is not None:
            record, self._version = found
            self.state = JobState.from_record(record)
        return self.state

    async def _mutate(self, change: Callable[[JobState], JobState]) -> JobState:
        """Apply ``change`` to the latest state and persist it before returning it.

        Group commit: changes that arrive while a save is in flight are applied together
        and saved once, and each caller returns only after the save that contains its
        change. Durability per caller is unchanged; a rollout step that settles 25
        instances costs one DB write instead of 25.
        """
        done: asyncio.Future[JobState] = asyncio.get_running_loop().create_future()
        self._pending.append((change, done))
        async with self._lock:
            if not done.done():
                await self._commit()
        return await done

    async def _commit(self) -> None:
        batch, self._pending = self._pending, []
        state = self.state
        if state is None:
            for _, fut in batch:
                fut.set_exception(HAServingError(f"{self.service}: no state to change"))
            return
        applied: list[tuple[asyncio.Future[JobState], JobState]] = []
        for change, fut in batch:
            try:
                state = change(state)
            except Exception as exc:  # that caller's change is refused, not the others'
                fut.set_exception(exc)
                continue
            applied.append((fut, state))
        try:
            if state != self.state:
                self._version = await asyncio.to_thread(
                    self.store.save_appmaster_state,
                    self.cluster,
                    self.service,
                    state.to_record(),
                    expected_version=self._version,
                    fence=self.fence,
                )
                self.state = state
        except Exception as exc:  # nothing of the batch is durable: all callers learn it
            for fut, _ in applied:
                fut.set_exception(exc)
            return
        for fut, after in applied:
            fut.set_result(after)

    # --- instructions -----------------------------------------------------------------

    async def apply(
        self, spec: ServiceSpec, package: str, *, op_id: str, epoch: int = 0, kind: str = "deploy"
    ) -> dict[str, Any]:
        """Adopt ``spec`` (code in ``package``): durable before this returns.

        Fenced by ``epoch`` (refused below the highest seen) and idempotent by ``op_id``.
        """
        desired = Revision(
            version=spec.version,
            package=package,
            import_path=spec.code.import_path,
            config=spec.config,
        )
        if await self._seen(op_id, epoch):
            return {"op_id": op_id, "accepted": False, "duplicate": True}
        now = self.clock.now()

        def adopt(state: JobState | None) -> JobState:
            if state is None:
                return JobState(
                    service=self.service,
                    cluster=self.cluster,
                    spec=spec,
                    desired=desired,
                    rollout=Rollout(
                        op_id=op_id, kind=kind, from_rev=None, to_rev=desired, started_at=now
                    ),
                    highest_epoch=epoch,
                    applied_ops=(op_id,),
                )
            if state.release is not None:  # a plain update ends a canary/blue-green
                state = end_release(state, promote=False)
                state = state.model_copy(update={"routes_version": state.routes_version + 1})
            rollout = state.rollout
            if desired.key != state.desired.key or rollout is None:
                if rollout is not None:
                    state = finish_rollout(state, RolloutStatus.SUPERSEDED, now)
                rollout = Rollout(
                    op_id=op_id, kind=kind, from_rev=state.desired, to_rev=desired, started_at=now
                )
            # the proxies' share of max_concurrency is in the routing table (and the
            # workers' cap follows it: Actions.set_caps)
            resend = spec.max_concurrency != state.spec.max_concurrency
            # an operator's new count overrides the autoscaler's (it starts from there),
            # and autoscaling switched off forgets it (switched on again, it starts from
            # ``instances``, not from a count decided under an old load)
            forget = spec.instances != state.spec.instances or spec.autoscaling is None
            return state.model_copy(
                update={
                    "autoscaled": None if forget else state.autoscaled,
                    "autoscale_demand": (
                        None if spec.autoscaling is None else state.autoscale_demand
                    ),
                    "spec": spec,
                    "desired": desired,
                    "rollout": rollout,
                    "routes_version": state.routes_version + int(resend),
                    "highest_epoch": max(epoch, state.highest_epoch),
                    "applied_ops": (*state.applied_ops, op_id)[-MAX_APPLIED_OPS:],
                }
            )

        if self.state is None:
            async with self._lock:
                new = adopt(None)
                self._version = await asyncio.to_thread(
                    self.store.save_appmaster_state,
                    self.cluster,
                    self.service,
                    new.to_record(),
                    expected_version=None,
                    fence=self.fence,
                )
                self.state = new
        else:
            await self._mutate(adopt)
        await asyncio.to_thread(
            self.store.append_event,
            "apply",
            cluster=self.cluster,
            service=self.service,
            op_id=op_id,
            epoch=epoch,
            detail={"kind": kind, "version": spec.version},
        )
        self._wake.set()
        return {"op_id": op_id, "accepted": True, "duplicate": False}

    async def _fence(self, epoch: int) -> None:
        """An epoch above the highest this AppMaster has seen must have been granted to a
        Keeper: checked against the store's leadership lease (``UnknownEpoch`` if not),
        so a caller cannot pass an epoch of its own making."""
        state = self.state
        known = max(self._granted, state.highest_epoch if state is not None else 0)
        if epoch <= known:
            return
        lease = await asyncio.to_thread(self.store.get_lease, KEEPER_LEADER)
        self._granted = max(self._granted, lease.epoch if lease is not None else 0)
        if epoch > self._granted:
            raise UnknownEpoch(epoch, self._granted)

    async def _seen(self, op_id: str, epoch: int) -> bool:
        """Fencing and idempotence: StaleInstruction below the highest epoch seen,
        UnknownEpoch above any granted; True if ``op_id`` was applied already."""
        await self._fence(epoch)
        async with self._lock:
            state = self.state
            if state is not None:
                if epoch < state.highest_epoch:
                    raise StaleInstruction(epoch, state.highest_epoch)
                if op_id in state.applied_ops:
                    return True
        return False

    async def release(self, body: ReleaseInstruction, *, op_id: str, epoch: int) -> str:
        """A release instruction (canary, blue-green) or a traffic weight change:

        - ``release``: run ``body.spec`` as the candidate of operation ``body.op``
          on ``instances`` instances (``mode`` canary or blue_green) and send it
          ``weight`` percent of traffic; repeated with a new weight for each step;
        - ``promote`` / ``abort``: end that operation's release (``InvalidSpec`` if it
          is not running here; ``duplicate`` for an abort in effect already, see ``_end``);
        - ``traffic``: set this cluster's traffic weight (None: the placement's).
        Fenced and idempotent like ``apply``; durable before it returns."""
        if await self._seen(op_id, epoch):
            return "duplicate"
        if self.state is None:
            raise InvalidSpec("release", [f"{self.service} is not deployed on {self.cluster}"])
        now = self.clock.now()
        already = {"in_effect": False}

        def change(state: JobState) -> JobState:
            if isinstance(body, ReleaseBody):
                state = _start_or_step(state, body, op_id, now)
            elif isinstance(body, EndReleaseBody):
                promote = body.kind == "promote"
                state, in_effect = _end(state, body.op, promote=promote, op_id=op_id, now=now)
                already.update(in_effect=in_effect)
            elif isinstance(body, TrafficBody):
                state = state.model_copy(update={"cluster_weight": body.weight})
            else:
                assert_never(body)
            return state.model_copy(
                update={
                    "highest_epoch": max(epoch, state.highest_epoch),
                    "applied_ops": (*state.applied_ops, op_id)[-MAX_APPLIED_OPS:],
                }
            )

        await self._mutate(change)
        detail = body.model_dump(mode="json", exclude={"spec", "package"})
        if already["in_effect"]:
            detail["in_effect"] = True
        await asyncio.to_thread(
            self.store.append_event,
            body.kind,
            cluster=self.cluster,
            service=self.service,
            op_id=op_id,
            epoch=epoch,
            detail=detail,
        )
        self._wake.set()
        return "duplicate" if already["in_effect"] else "applied"

    async def take_instruction(
        self, instruction_id: int, body: str | Mapping[str, Any], *, op_id: str, epoch: int
    ) -> str:
        """Consume one Keeper instruction (``body``: its JSON, or that parsed): applied,
        duplicate, refused (stale or unknown epoch) or rejected (one this AppMaster
        cannot carry out: not JSON, an unknown kind, a missing or wrong field, a release
        with nothing deployed). The body is parsed here, once
        (``ha_serving._instructions.parse_instruction``). Either way it is recorded as
        consumed, so the link resumes after it and later instructions flow; a rejection
        is also recorded in the state (``rejected``), where the leader reads it and ends
        the operation as failed with the reason."""
        state = self.state
        if state is not None and instruction_id <= state.last_instruction:
            return "consumed"
        reason: str | None = None
        try:
            await self._fence(epoch)  # a stale leader's instruction is refused, not judged
            typed = parse_instruction(body)
            if isinstance(typed, DeployBody):
                ack = await self.apply(
                    typed.spec, typed.package, op_id=op_id, epoch=epoch, kind=typed.kind
                )
                outcome = "duplicate" if ack["duplicate"] else "applied"
            else:
                outcome = await self.release(typed, op_id=op_id, epoch=epoch)
        except (InvalidSpec, StaleInstruction) as exc:
            # cannot be carried out here (rejected) or comes from a stale leader (refused):
            # consumed all the same, and said so in the log and the audit trail
            detail: dict[str, Any]
            if isinstance(exc, StaleInstruction):
                outcome, detail = "refused", {"highest_epoch": exc.highest}
            else:
                reason = " ".join(str(exc).split())
                outcome, detail = "rejected", {"error": reason}
            self.log.warning("%s instruction %s: %s", outcome, op_id, exc)
            await asyncio.to_thread(
                self.store.append_event,
                outcome,
                cluster=self.cluster,
                service=self.service,
                op_id=op_id,
                epoch=epoch,
                detail=detail,
            )
            if self.state is None:
                return outcome

        def consumed(s: JobState) -> JobState:
            update: dict[str, Any] = {"last_instruction": max(s.last_instruction, instruction_id)}
            if reason is not None:
                rejected = {**s.rejected, op_id: reason}
                update["rejected"] = dict(list(rejected.items())[-MAX_REJECTED:])
                update["highest_epoch"] = max(epoch, s.highest_epoch)
            return s.model_copy(update=update)

        await self._mutate(consumed)
        return outcome

    def republish_endpoints(self, for_s: float) -> None:
        """Write every endpoint again, and prune, each round for ``for_s`` seconds: the
        link's heartbeat lapsed, so the leader may have taken this cluster for lost and
        withdrawn its endpoints meanwhile (``Publication``)."""
        self.actions.publication.in_doubt(self.clock.monotonic() + for_s)

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile forever: plan, act, and sleep only when there is nothing to do."""
        while True:
            try:
                busy = await self.round()
            except LeaseLost:  # the standby took over: this one must not act again
                self.log.exception("the AppMaster lease moved to the standby: stopping")
                raise
            except (TransientError, ConflictError) as exc:
                self.log.warning("round failed, retrying: %s", exc)
                if isinstance(exc, ConflictError):
                    await self.load()  # someone else wrote: re-read before planning
                busy = False
            except Exception:  # a bug must not stop reconciliation; log it loudly
                self.log.exception("round crashed")
                busy = False
            if not busy:
                period = self.state.spec.rollout.health_check_period_s if self.state else 1.0
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(period, 1.0))

    async def round(self) -> bool:
        """One observe-plan-act round; True if it did something."""
        if self.state is None and await self.load() is None:
            return False
        observed = await self.observe(self._state())
        await self.autoscaler.tick(self._state(), self._mutate)  # saved before acted on
        state = self._state()
        actions = plan(state, observed, self.clock.now())
        self.rounds += 1
        await self.actions.execute(actions, observed)
        await self.actions.heartbeat_endpoints(
            observed, {a.name for a in actions if isinstance(a, StartProxy)}
        )
        self._reconciled = True
        return bool(actions)

    async def observe(self, state: JobState) -> Observed:
        names = sorted({i.worker for i in state.instances.values()} | set(state.workers))
        workers = await asyncio.gather(*(self._observe_worker(n) for n in names))
        # the recorded ones too: a proxy the spec dropped runs until it is stopped
        proxy_set = sorted(set(proxy_names(state)) | set(state.proxies))
        proxies = await asyncio.gather(*(self._observe_proxy(n) for n in proxy_set))
        now = self.clock.monotonic()
        if now - self._last_health >= state.spec.rollout.health_check_period_s:
            self._last_health = now
            self._unhealthy = await self._health(state, dict(zip(names, workers, strict=True)))
        return Observed(
            workers=dict(zip(names, workers, strict=True)),
            proxies=dict(zip(proxy_set, proxies, strict=True)),
            unhealthy=self._unhealthy,
        )

    async def _observe_worker(self, name: str) -> WorkerView | None:
        if not await self.runtime.exists(name):
            self.actions.forget_direct(name)
            return None
        try:
            stats = await self.runtime.call(name, "stats", timeout_s=5.0)
        except ActorUnavailable:
            return None
        await self.actions.learn_direct(name)
        caps = {i: s["max_concurrency"] for i, s in stats.items() if "max_concurrency" in s}
        return WorkerView(hosted=frozenset(stats), caps=caps)

    async def _observe_proxy(self, name: str) -> ProxyView | None:
        if not await self.runtime.exists(name):
            return None
        try:
            endpoint = await self.runtime.call(name, "start", timeout_s=10.0)
            version = await self.runtime.call(name, "routes_version", timeout_s=5.0)
        except ActorUnavailable:
            return None
        return ProxyView(routes_version=int(version), address=endpoint.address)

    async def _health(
        self, state: JobState, workers: dict[str, WorkerView | None]
    ) -> frozenset[str]:
        timeout = state.spec.rollout.health_check_timeout_s
        serving = {i.id for i in state.serving()}

        async def check(name: str) -> set[str]:
            try:
                answers = await self.runtime.call(name, "check_health_all", timeout_s=timeout)
            except ActorUnavailable:
                return set()  # the worker's loss is handled as "lost", not unhealthy
            return {i for i, ok in answers.items() if not ok and i in serving}

        bad = await asyncio.gather(*(check(n) for n, v in workers.items() if v is not None))
        return frozenset().union(*bad) if bad else frozenset()

    # --- reading ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        state = self.state
        if state is None:
            return {"service": self.service, "cluster": self.cluster, "deployed": False}
        return {
            "service": self.service,
            "cluster": self.cluster,
            "deployed": True,
            "converged": self.converged(),
            "spec": json.loads(state.spec.model_dump_json()),
            "desired_version": state.desired.version,
            "instances": [
                {
                    "id": i.id,
                    "worker": i.worker,
                    "phase": i.phase.value,
                    "version": i.running.version if i.running else None,
                    "group": i.group.value,
                }
                for i in sorted(state.instances.values(), key=lambda i: i.index)
            ],
            "proxies": [p.model_dump() for p in state.proxies.values()],
            "routes_version": state.routes_version,
            "rollout": state.rollout.model_dump(mode="json") if state.rollout else None,
            "release": (
                {
                    "op_id": state.release.op_id,
                    "mode": state.release.mode,
                    "candidate_version": state.release.candidate.version,
                    "instances": state.release.instances,
                    "weight": state.release.weight,
                }
                if state.release
                else None
            ),
            "cluster_weight": state.cluster_weight,
            "autoscale": self._describe_autoscale(state),
            "history": [r.model_dump(mode="json") for r in state.history[-5:]],
            "rounds": self.rounds,
        }

    def _describe_autoscale(self, state: JobState) -> dict[str, Any] | None:
        if state.spec.autoscaling is None:
            return None
        last = self.autoscaler.last
        return {
            "instances": state.spec.scaled(state.autoscaled),
            "last_change": state.autoscale.model_dump() if state.autoscale else None,
            "last_decision": dataclasses.asdict(last) if last is not None else None,
            "own_demand": state.autoscale_demand,
            "keeper_floor": self.autoscaler.floor,
        }

    async def describe_live(self) -> dict[str, Any]:
        """``describe()`` plus each instance's in-flight calls, asked of its worker."""
        view = self.describe()
        workers = sorted({i["worker"] for i in view.get("instances", [])})

        async def stats(name: str) -> dict[str, Any]:
            try:
                return dict(await self.runtime.call(name, "stats", timeout_s=5.0))
            except ActorUnavailable:
                return {}

        merged: dict[str, Any] = {}
        for found in await asyncio.gather(*(stats(w) for w in workers)):
            merged.update(found)
        for inst in view.get("instances", []):
            s = merged.get(inst["id"])
            inst["inflight"] = s["inflight"] if s is not None else None
        return view

    def converged(self) -> bool:
        """Every instance serves the desired revision and no rollout is open, as seen by
        a round of this process (never from the persisted state alone: after a restart
        it may call dead actors serving until the first round has looked)."""
        s = self.state
        return (
            self._reconciled
            and s is not None
            and s.rollout is None
            and s.converged()
            and s.routed()
        )

    def _state(self) -> JobState:
        if self.state is None:
            raise HAServingError(f"{self.service}: AppMaster has no state yet")
        return self.state

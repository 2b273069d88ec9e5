"""The leader's loop: carry operations out, keep every target's AppMaster alive.

Only while ``Leadership.term()`` is valid, every ``reconcile_period_s``: for each service's newest
active operation, ``decide()`` (pure, in ``_releases``) and apply the decisions, each
instruction stamped with the current epoch; older active operations of the same service
are superseded. An operation's plan and progress are parsed once, where it is read
(``_plan.Operation.parse``); one that does not parse ends failed with the reason in one
line, and the round goes on with the others. Every target cluster of a service must have
a live AppMaster (its link heartbeats through any Keeper); one that is silent gets its
serving job (re)submitted through the cluster's Ray Job Submission API, at most every
``resubmit_s``; a submission that fails (a restarted cluster whose GCS answers before its
Job API does) is tried again after ``submit_retry_s``, not after ``resubmit_s``, which
cost a restarted cluster ~30 s.
Every timing is a ``KeeperSettings`` field (checked against the links' there), and all
time is read from the injected clock: the reconciler's own waits from its monotonic
reading, heartbeats and step clocks from the store's.

A round reads each thing once and only what it needs: the active operations (filtered by
the DB), each service's latest operation (one row per service, however long the
history), the clusters, the heartbeats and the DB's clock. It used to read every
operation ever recorded (within retention: 7 days) twice per round, and the clusters,
heartbeats and clock twice; the scale simulation (docs/scale.md) showed it. The active
operations' targets (last instruction, AppMaster state) are read in one transaction.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ha_serving._errors import HAServingError, StoreUnavailable
from ha_serving._jobstate import JobState
from ha_serving._settings import KeeperSettings
from ha_serving._spec import AutoscalingPolicy
from ha_serving._status import ACTIVE, OperationStatus, RolloutStatus
from ha_serving.keeper._analysis import (
    MetricsScraper,
    Sample,
    analyze,
    metrics_addresses,
)
from ha_serving.keeper._capacity import (
    ClusterDemand,
    floors,
    takers_demand,
    unmet_sources,
)
from ha_serving.keeper._control_api import record_service
from ha_serving.keeper._leadership import LEASE_NAME, Leadership, Term
from ha_serving.keeper._plan import (
    ClusterTarget,
    Operation,
    Plan,
    ReleaseProgress,
    UnreadableOperation,
    target_clusters,
)
from ha_serving.keeper._releases import (
    Advance,
    Decision,
    Finish,
    Instruct,
    Progress,
    decide,
)
from ha_serving.keeper._weighted import WEIGHTED, add_check, decide_weighted
from ha_serving.store import (
    AppMasterRecord,
    ClusterRecord,
    Instruction,
    OperationRecord,
    Store,
    Target,
)
from ha_serving.util.clock import Clock, SystemClock
from ha_serving.util.logs import bound


@dataclass(frozen=True)
class _View:
    """What a round reads once for both the loss check and the AppMaster check."""

    clusters: list[ClusterRecord]
    beats: list[AppMasterRecord]
    now: float
    """The DB's clock, read with the heartbeats it is compared with."""
    latest: list[OperationRecord]
    """Each service's newest operation that got anywhere (not superseded)."""


class _Unreadable:
    """An AppMaster state row that does not parse (see ``Reconciler._state``)."""


_UNREADABLE = _Unreadable()


class JobSubmitter(Protocol):
    def submit(self, cluster: ClusterRecord, service: str) -> str:
        """Start the serving job of ``service`` on ``cluster``; returns the job id."""
        ...


class Reconciler:
    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        submitter: JobSubmitter,
        *,
        settings: KeeperSettings | None = None,
        scraper: Callable[[list[str], str], Sample] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.leadership = leadership
        self.submitter = submitter
        self.settings = settings or KeeperSettings()
        """Its timings and the retention of history (period, resubmission, loss, pruning)."""
        self._next_submit: dict[tuple[str, str], float] = {}
        """(cluster, service) -> earliest time (monotonic) of its next job submission."""
        self.lost: set[str] = set()
        """Clusters this leader declared lost (and has not seen come back)."""
        self._scrape = scraper or MetricsScraper()
        """Reads the proxies' metrics (tests inject one)."""
        self.clock = clock or SystemClock()
        self._samples: dict[str, tuple[float, Sample]] = {}
        """Last metrics scrape per release being analysed (a new leader starts afresh)."""
        self._unreadable: dict[tuple[str, str], int | None] = {}
        self._parsed: dict[tuple[str, str], tuple[int | None, JobState | _Unreadable]] = {}
        """(cluster, service) -> the version of its AppMaster state last read and what it
        parsed to: a state still at that version is neither read nor parsed again (in a
        wave, decoding every target's state every round was most of the leader's CPU).
        Kept only for the targets read in the last round: an ended operation's go."""
        self._read_in_round: set[tuple[str, str]] = set()
        """(cluster, service) -> version of its AppMaster state row that does not parse,
        so each bad version is logged once, not every round."""
        self._store_failed_at: float | None = None
        """When (monotonic) a round of this leader last failed on an unavailable store."""
        self._next_prune = 0.0
        """When (monotonic) this leader prunes next: at once, then every prune period."""
        self._next_spread = 0.0
        """When (monotonic) this leader recomputes the capacity floors next."""
        self._plans: dict[str, Plan | None] = {}
        """op_id -> its plan (None: it does not parse), for each service's latest."""
        self._unmet_base: dict[str, int] = {}
        """service -> its growing clusters' own demand when some demand went unmet."""
        self._calm: dict[str, dict[str, int]] = {}
        """service -> each live cluster's own demand at the last pass with none unmet."""
        self._short_since: dict[tuple[str, str], float] = {}
        """(service, cluster) -> since when (monotonic) it serves fewer than it decided."""
        self.log = bound("ha_serving.keeper.reconciler", keeper=leadership.holder)

    async def run(self) -> None:
        while True:
            term = self.leadership.term()
            if term is not None:
                try:
                    await asyncio.to_thread(self.round, term)
                except (StoreUnavailable, HAServingError) as exc:
                    if isinstance(exc, StoreUnavailable):
                        self._store_failed_at = self.clock.monotonic()
                    self.log.warning("round failed: %s", exc)
                except Exception:  # a bug must not stop the leader's loop
                    self.log.exception("round crashed")
            await self.clock.sleep(self.settings.reconcile_period_s)

    def round(self, term: Term) -> None:
        active = self.store.list_operations(statuses=ACTIVE)
        newest: dict[str, OperationRecord] = {}
        for record in active:  # oldest first: the last one per service wins
            previous = newest.get(record.service)
            if previous is not None:
                self._write(previous, term, status=OperationStatus.SUPERSEDED)
            newest[record.service] = record
        ops = [op for op in (self._parse(r, term) for r in newest.values()) if op is not None]
        # every active operation's targets in one transaction, not 2 per target
        targets = self._read_targets((t.name, op.service) for op in ops for t in op.plan.clusters)
        for op in ops:
            self._carry_out(op, term, targets)
        view = self._view()
        self._watch_clusters(view)
        self._ensure_appmasters(view)
        self._spread_capacity(term, view)
        self._prune()
        self._parsed = {k: v for k, v in self._parsed.items() if k in self._read_in_round}
        self._read_in_round = set()

    def _view(self) -> _View:
        return _View(
            self.store.list_clusters(),
            self.store.list_appmasters(),
            self.store.now(),
            self.store.latest_operations(exclude_status=OperationStatus.SUPERSEDED),
        )

    def _prune(self) -> None:
        """Every prune period, one bounded batch per table of history older than the
        retention (``Store.prune`` says what is never pruned)."""
        if self.clock.monotonic() < self._next_prune:
            return
        self.leadership.require()
        self._next_prune = self.clock.monotonic() + self.settings.prune_period_s
        deleted = self.store.prune(self.settings.retention_s, batch=self.settings.prune_batch)
        if any(deleted.values()):
            self.log.info("pruned %s", ", ".join(f"{n} {t}" for t, n in deleted.items() if n))

    def _parse(self, record: OperationRecord, term: Term) -> Operation | None:
        """The operation with its plan and progress parsed; one that does not parse
        could never be carried out: it ends failed with the reason in one line, so it
        neither stops the round nor waits forever."""
        try:
            return Operation.parse(record)
        except UnreadableOperation as exc:
            self.log.warning("%s", exc)
            self._end(record, term, Finish(OperationStatus.FAILED, str(exc)))
            return None

    def _advance(self, record: OperationRecord, term: Term) -> None:
        """Carry one operation on its own a step further (tests): its targets only."""
        op = self._parse(record, term)
        if op is not None:
            self._carry_out(op, term)

    def _carry_out(
        self, op: Operation, term: Term, read: dict[tuple[str, str], Target] | None = None
    ) -> None:
        targets = [t.name for t in op.plan.clusters]
        if read is None:
            read = self._read_targets((c, op.service) for c in targets)
        last = {c: read[(c, op.service)].last_instruction for c in targets}
        states = {c: self._state(c, op.service, read[(c, op.service)]) for c in targets}
        # a sequential op reads only the cluster at its step; a weighted one every cluster
        reading = targets if op.kind in WEIGHTED else targets[op.step : op.step + 1]
        if any(states[c] is _UNREADABLE for c in reading):
            return  # not ready: decide again once the AppMaster saves a state that parses
        typed = {c: s if isinstance(s, JobState) else None for c, s in states.items()}
        self._decide(op, last, typed, term)

    def _read_targets(self, targets: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Target]:
        """``Store.read_targets``, skipping the states this leader has parsed already."""
        wanted = list(targets)
        self._read_in_round.update(wanted)
        known = {
            t: v
            for t in wanted
            if (p := self._parsed.get(t)) is not None and (v := p[0]) is not None
        }
        return self.store.read_targets(wanted, known=known)

    def _state(self, cluster: str, service: str, target: Target) -> JobState | _Unreadable | None:
        """The AppMaster's persisted state (None: it saved none yet); a row that does not
        parse (corrupt, or written by a newer version) is logged once and unreadable."""
        key = (cluster, service)
        if target.state_unchanged:
            parsed = self._parsed.pop(key, None)
            if parsed is None or parsed[0] != target.state_version:
                return _UNREADABLE  # not what was asked for: read in full next round
            self._parsed[key] = parsed
            return parsed[1]
        if target.state is None:
            self._parsed.pop(key, None)
            return None
        parsed_state = self._parse_state(cluster, service, target)
        self._parsed[key] = (target.state_version, parsed_state)
        return parsed_state

    def _parse_state(self, cluster: str, service: str, target: Target) -> JobState | _Unreadable:
        version = target.state_version
        try:
            state = JobState.from_record(target.state or {})
        except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError too
            if self._unreadable.get((cluster, service)) != version:
                self._unreadable[(cluster, service)] = version
                self.log.warning(
                    "AppMaster state of %s on %s (version %s) does not parse, "
                    "treated as not ready: %s",
                    service,
                    cluster,
                    version,
                    str(exc).splitlines()[0],
                )
            return _UNREADABLE
        self._unreadable.pop((cluster, service), None)
        return state

    def _decide(
        self,
        op: Operation,
        last: dict[str, Instruction | None],
        states: dict[str, JobState | None],
        term: Term,
    ) -> None:
        decisions: list[Decision]
        if op.kind in WEIGHTED:
            op = self._analyse(op, states, term)
            decisions = decide_weighted(op, last, states, self.store.now())
        else:
            decisions = decide(op, last, states)
        for decision in decisions:
            self.leadership.require()  # never act on a term that ran out meanwhile
            if isinstance(decision, Instruct):
                if op.status == OperationStatus.PENDING:  # before the send: never sent pending
                    op = self._set(op, term, status=OperationStatus.RUNNING)
                self.store.add_instruction(
                    decision.cluster,
                    op.service,
                    decision.op_id,
                    term.epoch,
                    decision.body.to_record(),
                    fence=LEASE_NAME,
                )
                self.log.info("instructed %s/%s (%s)", decision.cluster, op.service, op.op_id)
            elif isinstance(decision, Advance):
                op = self._set(op, term, step=decision.step, status=OperationStatus.RUNNING)
            elif isinstance(decision, Progress):
                op = self._set(op, term, progress=decision.progress)
            elif isinstance(decision, Finish):
                if op.kind in WEIGHTED and decision.status == OperationStatus.SUCCEEDED:
                    record_service(self.store, op.plan)  # the candidate is the service now
                self._end(op.record, term, decision)

    def _end(self, record: OperationRecord, term: Term, finish: Finish) -> None:
        """End the operation as ``finish`` says, in the audit trail too."""
        record = self._write(record, term, status=finish.status, error=finish.error)
        self._samples.pop(record.op_id, None)
        self.log.info("operation %s %s", record.op_id, finish.status)
        self.store.append_event(
            "operation",
            service=record.service,
            op_id=record.op_id,
            epoch=term.epoch,
            detail={"status": record.status, "error": record.error},
        )

    def _analyse(self, op: Operation, states: dict[str, JobState | None], term: Term) -> Operation:
        """While the candidate takes traffic, every ``interval_s`` judge the interval's
        calls from the proxies' metrics and record the check in the op's progress."""
        progress = op.progress
        if op.step < 1 or progress.ending or progress.step != op.step:
            return op
        policy = op.plan.weighted().analysis
        now = self.clock.monotonic()
        previous = self._samples.get(op.op_id)
        if previous is not None and now - previous[0] < policy.interval_s:
            return op
        sample = self._scrape(metrics_addresses(states), op.service)
        self._samples[op.op_id] = (now, sample)
        if previous is None:
            return op  # the baseline: the first check covers the next interval
        check = analyze(previous[1], sample, policy).model_copy(
            update={"at": self.store.now(), "step": op.step, "weight": progress.weight}
        )
        if check.verdict == "fail":
            self.log.warning("release %s: analysis failed: %s", op.op_id, check.reason)
        self.leadership.require()
        return self._set(op, term, progress=add_check(progress, check))

    def _set(
        self, op: Operation, term: Term, *, progress: ReleaseProgress | None = None, **changes: Any
    ) -> Operation:
        """Write ``changes`` (and ``progress``) to the operation's row."""
        if progress is not None:
            changes["progress"] = progress.to_record()
        return op.written(self._write(op.record, term, **changes), progress)

    def _write(self, record: OperationRecord, term: Term, **changes: Any) -> OperationRecord:
        return self.store.advance_operation(
            record.op_id,
            expected_version=record.version,
            epoch=term.epoch,
            fence=LEASE_NAME,
            **changes,
        )

    def _watch_clusters(self, view: _View | None = None) -> None:
        """A cluster whose GCS does not answer and whose AppMasters all went silent is
        lost: its endpoints are withdrawn at once (and again every round while it stays
        lost), so clients move to the other clusters. When its GCS answers again, its
        AppMasters are restarted without waiting for the resubmit interval."""
        view = view or self._view()
        beats, now = view.beats, view.now
        for cluster in view.clusters:
            fresh = any(
                b.cluster == cluster.name and now - b.heartbeat_at < self.settings.loss_silence_s
                for b in beats
            )
            reachable = _answers(cluster.gcs_address)
            if not reachable and not fresh:
                withdrawn = self.store.remove_cluster_endpoints(cluster.name)
                if cluster.name not in self.lost:
                    self.lost.add(cluster.name)
                    self.log.warning(
                        "cluster %s lost: %d endpoints withdrawn", cluster.name, withdrawn
                    )
                    self.store.append_event(
                        "cluster_lost", cluster=cluster.name, detail={"withdrawn": withdrawn}
                    )
            elif reachable and cluster.name in self.lost:
                self.lost.discard(cluster.name)
                for key in [k for k in self._next_submit if k[0] == cluster.name]:
                    del self._next_submit[key]
                self.log.warning("cluster %s is back", cluster.name)
                self.store.append_event("cluster_back", cluster=cluster.name)

    def _store_was_down(self) -> bool:
        """Whether the store failed this Keeper (as leader or follower) within the last
        ``heartbeat_stale_s``: then no AppMaster could have its heartbeat written for a
        while, and a stale one says nothing about it yet."""
        times = (self._store_failed_at, self.leadership.store_failed_at)
        failed = [t for t in times if t is not None]
        return bool(failed) and self.clock.monotonic() - max(failed) < (
            self.settings.heartbeat_stale_s
        )

    def _ensure_appmasters(self, view: _View | None = None) -> None:
        """Submit the serving job of every target whose AppMaster is silent. Not while
        the store has just been down: after a 30 s DB outage every heartbeat is 30 s old,
        and the first round after it used to resubmit every job (each a new driver
        process on its cluster's head, for an AppMaster that lives), which under load
        held pending operations up for 10 s and more. Silent ``heartbeat_stale_s`` after
        the store is back is silent."""
        view = view or self._view()
        clusters = {c.name: c for c in view.clusters}
        beats = {(a.cluster, a.service): a.heartbeat_at for a in view.beats}
        now = view.now
        blind = self._store_was_down()
        for target, service in self._targets(view):
            beat = beats.get((target, service))
            if beat is not None and now - beat < self.settings.heartbeat_stale_s:
                # the job did its work: should this AppMaster go silent later (its cluster
                # restarted faster than we could call it lost), start one again at once
                self._next_submit.pop((target, service), None)
                continue
            if blind and beat is not None:  # it had linked: it may not have been heard
                continue
            cluster = clusters.get(target)
            key = (target, service)
            if cluster is None or self.clock.monotonic() < self._next_submit.get(key, 0.0):
                continue
            self.leadership.require()
            try:
                job = self.submitter.submit(cluster, service)
            except Exception as exc:  # a cluster still starting or down: try again soon
                self._next_submit[key] = self.clock.monotonic() + self.settings.submit_retry_s
                self.log.warning("cannot start %s on %s: %s", service, target, exc)
                continue
            # the job's AppMaster needs time to start and link: do not submit it twice
            self._next_submit[key] = self.clock.monotonic() + self.settings.resubmit_s
            self.log.info("submitted serving job %s for %s on %s", job, service, target)

    def _spread_capacity(self, term: Term, view: _View | None = None) -> None:
        """Every ``capacity_period_s``: for each autoscaled service placed on more than
        one cluster, the floor under each cluster's count (``_capacity.floors``: a lost
        cluster's demand, and what a cluster that cannot grow lacks, go to the others by
        weight), written where it changed. A new leader starts from the floors in the
        store and from no memory of short clusters (they are stuck again after
        ``capacity_stuck_s``)."""
        now = self.clock.monotonic()
        if now < self._next_spread:
            return
        self._next_spread = now + self.settings.capacity_period_s
        plans = self._autoscaled_plans(view or self._view())
        if not plans:
            return
        read = self._read_targets(
            (t.name, service) for service, plan in plans.items() for t in plan.clusters
        )
        stored = {(f.service, f.cluster): f for f in self.store.list_capacity_floors()}
        for service, plan in plans.items():
            policy = plan.spec.autoscaling
            if policy is None:
                continue
            demands = {
                t.name: self._demand(service, policy, t, read[(t.name, service)], now)
                for t in plan.clusters
            }
            absorbed = self._absorbed(service, demands)
            found, unplaced = floors(demands, absorbed=absorbed)
            for cluster, floor in found.items():
                old = stored.get((service, cluster))
                if (old is None and floor.count == 0) or (
                    old is not None and (old.floor, old.reason) == (floor.count, floor.reason)
                ):
                    continue
                self.leadership.require()
                self.store.set_capacity_floor(
                    service, cluster, floor.count, floor.reason, epoch=term.epoch, fence=LEASE_NAME
                )
                self.log.info(
                    "capacity floor of %s on %s: %d%s",
                    service,
                    cluster,
                    floor.count,
                    f" ({floor.reason})" if floor.reason else "",
                )
                self.store.append_event(
                    "capacity_floor",
                    cluster=cluster,
                    service=service,
                    epoch=term.epoch,
                    detail={"floor": floor.count, "reason": floor.reason, "unplaced": unplaced},
                )

    def _absorbed(self, service: str, demands: dict[str, ClusterDemand]) -> int:
        """How much the clusters that take unmet demand grew their own demand since it
        went unmet: the unmet calls' clients arriving there, not to be counted twice.
        Measured from each one's own demand at the last pass with nothing unmet (the
        loss is seen ~2 s after it, and the clients move at once), or from when this
        leader first saw it unmet."""
        now = {n: c.demand for n, c in demands.items() if c.alive and not c.stuck}
        if not unmet_sources(demands):
            self._calm[service] = now
            self._unmet_base.pop(service, None)
            return 0
        calm = self._calm.get(service, {})
        base = self._unmet_base.setdefault(
            service, sum(min(calm.get(n, d), d) for n, d in now.items())
        )
        return max(0, takers_demand(demands) - base)

    def _autoscaled_plans(self, view: _View) -> dict[str, Plan]:
        """service -> the plan of its latest operation, for each autoscaled service
        placed on more than one cluster (each plan parsed once: thousands of services)."""
        plans: dict[str, Plan] = {}
        parsed: dict[str, Plan | None] = {}
        for record in view.latest:
            if record.op_id in self._plans:  # a plan never changes once made
                plan = self._plans[record.op_id]
            else:
                try:
                    plan = Operation.parse(record).plan
                except UnreadableOperation:
                    plan = None
            parsed[record.op_id] = plan
            if plan is not None and plan.spec.autoscaling is not None and len(plan.clusters) > 1:
                plans[record.service] = plan
        self._plans = parsed
        return plans

    def _demand(
        self,
        service: str,
        policy: AutoscalingPolicy,
        target: ClusterTarget,
        read: Target,
        now: float,
    ) -> ClusterDemand:
        """One cluster's demand, as its AppMaster's state shows it (none saved yet: no
        demand, room for the maximum)."""
        cluster, weight = target.name, target.weight
        state = self._state(cluster, service, read)
        alive = cluster not in self.lost
        if not isinstance(state, JobState):
            self._short_since.pop((service, cluster), None)
            return ClusterDemand(weight, 0, 0, policy.max_instances, alive=alive)
        serving = len(state.serving())
        key = (service, cluster)
        rolling = state.rollout is not None and state.rollout.status == RolloutStatus.RUNNING
        if state.wanted() > serving and not rolling:  # a rollout's replacements are not growth
            self._short_since.setdefault(key, now)
        else:
            self._short_since.pop(key, None)
        wait = max(self.settings.capacity_stuck_s, 3 * policy.instance_start_s)
        stuck = alive and now - self._short_since.get(key, now) >= wait
        demand = state.autoscale_demand if state.autoscale_demand is not None else state.wanted()
        if state.cluster_weight is not None:
            weight = state.cluster_weight
        return ClusterDemand(
            weight, demand, serving, policy.max_instances, alive=alive, stuck=stuck
        )

    def _targets(self, view: _View) -> list[tuple[str, str]]:
        """(cluster, service) pairs that must have an AppMaster: the targets of each
        service's newest operation that got anywhere."""
        return [(c, op.service) for op in view.latest for c in target_clusters(op.plan)]


def _answers(address: str, timeout_s: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` (a cluster's GCS) succeeds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False

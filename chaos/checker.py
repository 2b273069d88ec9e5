"""Checkers over a chaos run's history: pure functions, unit-tested with planted bugs.

Control plane, Jepsen-style. A client issued control operations through the Keepers and
recorded each as ``invoke`` then ``ok``, ``fail`` (refused: definitely not done) or
``info`` (timed out or unavailable: may or may not take effect). Every op writes the
whole spec with a config value ``seq`` of its own, so the service is a register and the
last op applied on a cluster decides what it serves. After the drill, ``FinalState`` says
what the store holds (operations, oldest first; the AppMasters' ``apply`` events with the
Keeper epoch that sent them; each AppMaster's applied-op window) and what each cluster's
instances answer. ``check_control`` reports:

===================  ===============================================================
violation            when
===================  ===============================================================
lost                 an ``ok`` op is not in the store (not durable)
not-carried-out      an ``ok`` op is still pending/running, failed, or succeeded
                     without being applied on one of its clusters
failed-op-applied    a ``fail`` op is in the store or was applied
applied-twice        an AppMaster applied the same op twice
stale-epoch          an op was applied with an epoch below one applied before it on
                     that cluster (a deposed leader acted: fencing is off)
reordered            an ``ok`` op that completed before another was invoked sits after
                     it in the store (the later one would be superseded by the earlier)
unsettled            the newest op in the store never finished
not-newest           a cluster's last applied op is not the newest op (which succeeded)
stale-config         a cluster serves a config other than its last applied op's
record-stale         the service record is not the newest op's spec
===================  ===============================================================

An ``info`` op is never a violation by itself: it may take effect at any time, even
after later ops (a paused Keeper may write it late); the checks above then judge the
order the store and the AppMasters actually show.

Data plane. ``data_plane`` gives availability, failures by code, the longest streak of
consecutive failed calls, latency percentiles and when the last failure happened, over
the calls that started in a window. ``check_executions`` compares the calls with the
drill service's ledger (how many times each call id ran): a call that ran twice is a
violation, and so is an ``OK`` answer for a call that never ran.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from chaos.history import CallRecord, ControlEvent
from ha_serving._status import ACTIVE
from loadtest.sla import percentile

LOST = "lost"
NOT_CARRIED_OUT = "not-carried-out"
FAILED_OP_APPLIED = "failed-op-applied"
APPLIED_TWICE = "applied-twice"
STALE_EPOCH = "stale-epoch"
REORDERED = "reordered"
UNSETTLED = "unsettled"
NOT_NEWEST = "not-newest"
STALE_CONFIG = "stale-config"
RECORD_STALE = "record-stale"
RAN_TWICE = "ran-twice"
OK_NEVER_RAN = "ok-never-ran"
UNCHECKED = "unchecked"
"""The runner could not read the final state: nothing was checked (never a pass)."""

ACKED_OPS_LOST = frozenset({LOST, NOT_CARRIED_OUT})
"""The violations that count as "acknowledged ops lost" in the summary."""


@dataclass(frozen=True)
class Violation:
    kind: str
    subject: str
    """The op id or call id it is about."""
    detail: str


# --- what the store and the service finally show ------------------------------------


@dataclass(frozen=True)
class StoredOp:
    op_id: str
    status: str
    seq: int | None
    """The config value of the op's spec (None: the spec has none)."""
    targets: tuple[str, ...]
    error: str = ""


@dataclass(frozen=True)
class Applied:
    """An AppMaster's ``apply`` audit event: ``op_id`` (the operation, not the per-cluster
    instruction) carried out on ``cluster``, sent at ``epoch``."""

    event_id: int
    cluster: str
    op_id: str
    epoch: int | None


@dataclass(frozen=True)
class ClusterView:
    cluster: str
    applied_ops: tuple[str, ...]
    """The AppMaster's persisted window of applied ops (operation ids), oldest first."""
    served: tuple[int | None, ...]
    """The config value each answer of the service on this cluster carried."""


@dataclass(frozen=True)
class FinalState:
    ops: tuple[StoredOp, ...]
    """The service's operations in the store, oldest first."""
    applies: tuple[Applied, ...]
    """Audit order (event id)."""
    clusters: tuple[ClusterView, ...]
    record_seq: int | None
    """The config value of the service record."""
    since_event: int = 0
    """Audit events up to this id were judged before (an earlier drill): an event-level
    violation is reported only for a later event or for an op of this history."""


# --- control plane -------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    invoke: ControlEvent
    done: ControlEvent | None

    @property
    def type(self) -> str:
        return "info" if self.done is None else self.done.type


def _ops(history: Sequence[ControlEvent]) -> dict[str, _Op]:
    """Each op's invocation and completion; an op never completed counts as ``info``."""
    invokes: dict[str, ControlEvent] = {}
    done: dict[str, ControlEvent] = {}
    for e in history:
        if e.type == "invoke":
            invokes[e.op_id] = e
        else:
            done[e.op_id] = e
    return {op_id: _Op(inv, done.get(op_id)) for op_id, inv in invokes.items()}


def check_control(history: Sequence[ControlEvent], final: FinalState) -> list[Violation]:
    """Every violation of the control-plane invariants (module docstring) in ``history``
    given ``final``; empty when the history is clean."""
    ops = _ops(history)
    applied = _applied_on(final)
    return [
        *_acknowledged(ops, final, applied),
        *_refused(ops, final, applied),
        *_twice(ops, final),
        *_fencing(final),
        *_realtime_order(ops, final),
        *_final_state(final),
    ]


def _applied_on(final: FinalState) -> dict[str, set[str]]:
    """op id -> clusters that applied it (audit events or an AppMaster's window)."""
    on: dict[str, set[str]] = defaultdict(set)
    for a in final.applies:
        on[a.op_id].add(a.cluster)
    for c in final.clusters:
        for op_id in c.applied_ops:
            on[op_id].add(c.cluster)
    return on


def _acknowledged(
    ops: Mapping[str, _Op], final: FinalState, applied: Mapping[str, set[str]]
) -> list[Violation]:
    stored = {o.op_id: o for o in final.ops}
    out = []
    for op_id, op in ops.items():
        if op.type != "ok":
            continue
        s = stored.get(op_id)
        if s is None:
            out.append(Violation(LOST, op_id, "acknowledged, but not in the store"))
        elif s.status in ACTIVE:
            out.append(Violation(NOT_CARRIED_OUT, op_id, f"acknowledged, still {s.status}"))
        elif s.status == "failed":
            out.append(Violation(NOT_CARRIED_OUT, op_id, f"acknowledged, then failed: {s.error}"))
        elif s.status == "succeeded":
            missing = [c for c in s.targets if c not in applied.get(op_id, set())]
            if missing:
                out.append(
                    Violation(NOT_CARRIED_OUT, op_id, f"succeeded, never applied on {missing}")
                )
    return out


def _refused(
    ops: Mapping[str, _Op], final: FinalState, applied: Mapping[str, set[str]]
) -> list[Violation]:
    stored = {o.op_id for o in final.ops}
    out = []
    for op_id, op in ops.items():
        if op.type != "fail":
            continue
        if op_id in stored:
            out.append(Violation(FAILED_OP_APPLIED, op_id, "refused, but in the store"))
        if applied.get(op_id):
            where = sorted(applied[op_id])
            out.append(Violation(FAILED_OP_APPLIED, op_id, f"refused, but applied on {where}"))
    return out


def _twice(ops: Mapping[str, _Op], final: FinalState) -> list[Violation]:
    counts = Counter((a.cluster, a.op_id) for a in final.applies)
    recent = {a.op_id for a in final.applies if a.event_id > final.since_event}
    for c in final.clusters:
        for op_id, n in Counter(c.applied_ops).items():
            counts[(c.cluster, op_id)] = max(counts[(c.cluster, op_id)], n)
    return [
        Violation(APPLIED_TWICE, op_id, f"applied {n} times on {cluster}")
        for (cluster, op_id), n in sorted(counts.items())
        if n > 1 and (op_id in ops or op_id in recent)
    ]


def _fencing(final: FinalState) -> list[Violation]:
    highest: dict[str, tuple[int, str]] = {}
    out = []
    for a in sorted(final.applies, key=lambda a: a.event_id):
        if a.epoch is None:
            continue
        seen = highest.get(a.cluster)
        if seen is not None and a.epoch < seen[0] and a.event_id > final.since_event:
            out.append(
                Violation(
                    STALE_EPOCH,
                    a.op_id,
                    f"applied on {a.cluster} at epoch {a.epoch} after {seen[1]} at epoch {seen[0]}",
                )
            )
        elif seen is None or a.epoch > seen[0]:
            highest[a.cluster] = (a.epoch, a.op_id)
    return out


def _realtime_order(ops: Mapping[str, _Op], final: FinalState) -> list[Violation]:
    index = {o.op_id: i for i, o in enumerate(final.ops)}
    acked = [(op.done.time, op_id) for op_id, op in ops.items() if op.done and op.type == "ok"]
    out = []
    for op_id, op in ops.items():
        if op_id not in index:
            continue
        out += [
            Violation(
                REORDERED, op_id, f"invoked after {earlier} was acknowledged, stored before it"
            )
            for acked_at, earlier in acked
            if earlier != op_id
            and acked_at < op.invoke.time
            and index.get(earlier, -1) > index[op_id]
        ]
    return out


def _final_state(final: FinalState) -> list[Violation]:
    if not final.ops:
        return []
    stored = {o.op_id: o for o in final.ops}
    newest = final.ops[-1]
    out = []
    if newest.status in ACTIVE:
        out.append(Violation(UNSETTLED, newest.op_id, f"the newest op is still {newest.status}"))
    if final.record_seq != newest.seq:
        out.append(
            Violation(
                RECORD_STALE,
                newest.op_id,
                f"service record has seq {final.record_seq}, the newest op {newest.seq}",
            )
        )
    for view in final.clusters:
        last = _last_applied(final, view)
        if newest.status == "succeeded" and view.cluster in newest.targets and last != newest.op_id:
            out.append(
                Violation(
                    NOT_NEWEST,
                    newest.op_id,
                    f"{view.cluster} last applied {last}, not the newest op",
                )
            )
        expected = stored[last].seq if last in stored else None
        if not view.served:
            out.append(Violation(STALE_CONFIG, last or "-", f"{view.cluster} serves nothing"))
        elif any(s != expected for s in view.served):
            seen = sorted({s for s in view.served if s is not None})
            out.append(
                Violation(
                    STALE_CONFIG,
                    last or "-",
                    f"{view.cluster} serves seq {seen}, its last applied op has {expected}",
                )
            )
    return out


def _last_applied(final: FinalState, view: ClusterView) -> str | None:
    if view.applied_ops:
        return view.applied_ops[-1]
    on_cluster = [a for a in final.applies if a.cluster == view.cluster]
    return max(on_cluster, key=lambda a: a.event_id).op_id if on_cluster else None


# --- data plane ----------------------------------------------------------------------


@dataclass(frozen=True)
class Streak:
    """A run of consecutive failed calls (by start time)."""

    calls: int = 0
    seconds: float = 0.0
    """From the first one's start to the last one's end."""
    start: float = 0.0


@dataclass(frozen=True)
class DataPlane:
    calls: int
    failures: int
    by_code: Mapping[str, int] = field(default_factory=dict)
    availability: float = 0.0
    """Good / all calls; 0.0 when there was no call (a load that died is no success)."""
    longest_streak: Streak = Streak()
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    per_cluster: Mapping[str, int] = field(default_factory=dict)
    last_failure_s: float | None = None
    """When the last failed call ended, from the window's start; None without failures."""


def within(calls: Sequence[CallRecord], start: float, end: float) -> list[CallRecord]:
    """The calls that started in [start, end]."""
    return [c for c in calls if start <= c.start <= end]


def longest_streak(calls: Sequence[CallRecord]) -> Streak:
    """The most consecutive failed calls (by start), their span from the first one's
    start to the latest end among them. One pass: a drill whose whole window fails
    (tens of thousands of calls) is judged in linear time."""
    best = Streak()
    count, first, last_end = 0, 0.0, 0.0
    for c in sorted(calls, key=lambda c: c.start):
        if c.ok:
            count = 0
            continue
        if count == 0:
            first, last_end = c.start, c.end
        count += 1
        last_end = max(last_end, c.end)
        if count > best.calls:
            best = Streak(count, last_end - first, first)
    return best


def data_plane(calls: Sequence[CallRecord], start: float | None = None) -> DataPlane:
    """Availability, failures, streak and latency of ``calls``; ``start`` (defaults to
    the first call's) is what ``last_failure_s`` counts from."""
    if not calls:
        return DataPlane(calls=0, failures=0)
    failed = [c for c in calls if not c.ok]
    latencies = sorted(c.latency_ms for c in calls)
    t0 = start if start is not None else min(c.start for c in calls)
    return DataPlane(
        calls=len(calls),
        failures=len(failed),
        by_code=dict(sorted(Counter(c.outcome for c in failed).items())),
        availability=(len(calls) - len(failed)) / len(calls),
        longest_streak=longest_streak(calls),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1],
        per_cluster=dict(sorted(Counter(c.cluster for c in calls if c.ok).items())),
        last_failure_s=max(c.end for c in failed) - t0 if failed else None,
    )


def check_executions(calls: Sequence[CallRecord], executions: Mapping[str, int]) -> list[Violation]:
    """A call whose id ran more than once, or that answered OK without running."""
    out = []
    for c in calls:
        if not c.call_id:
            continue
        n = executions.get(c.call_id, 0)
        if n > 1:
            out.append(Violation(RAN_TWICE, c.call_id, f"ran {n} times ({c.outcome})"))
        elif c.ok and n == 0:
            out.append(Violation(OK_NEVER_RAN, c.call_id, "answered OK, never ran"))
    return out

"""A drill's control-plane client: operations through the Keepers, recorded Jepsen-style.

Every ``interval_s`` it issues one operation on the drill service: a config update that
writes the next ``seq`` (the service is a register: every op writes a value of its own),
every ``scale_every``-th op also a scale change (instances toggle between two counts),
and every ``invalid_every``-th op an invalid spec, which a Keeper must refuse (a
``fail`` the checker can then look for in the store). Each op carries an op id of the
client's own, so an op whose answer was lost can still be looked up. It records
``invoke`` before the request and, after it, ``ok``, ``fail`` (the Keeper refused it:
definitely not done) or ``info`` (timeout, no Keeper answered, anything else: maybe done).
Ops start from the Keepers in turn, so a paused Keeper delays only its share of them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.history import ControlEvent, OpType
from ha_serving.keeper import KeeperClient, KeeperRefused
from ha_serving.util.tls import TlsFiles

Deploy = Callable[[Sequence[str], str, str, str], str]
"""(Keeper addresses, spec JSON, kind, op id) -> op id; raises KeeperRefused/KeeperError."""


@dataclass(frozen=True)
class PlannedOp:
    n: int
    op_id: str
    kind: str
    seq: int
    instances: int
    valid: bool = True


def plan_op(
    n: int,
    *,
    prefix: str,
    seq: int,
    instances: int,
    counts: tuple[int, int],
    scale_every: int,
    invalid_every: int,
) -> PlannedOp:
    """The ``n``-th op (1-based) of a client whose last op wrote ``seq`` and
    ``instances``: pure, so the schedule is unit-tested."""
    new_seq = seq + 1
    op_id = f"{prefix}-{new_seq}"
    if invalid_every and n % invalid_every == 0:
        return PlannedOp(n, op_id, "config", new_seq, -1, valid=False)
    if scale_every and n % scale_every == 0:
        other = counts[1] if instances == counts[0] else counts[0]
        return PlannedOp(n, op_id, "scale", new_seq, other)
    return PlannedOp(n, op_id, "config", new_seq, instances)


def spec_for(base: Mapping[str, Any], op: PlannedOp) -> dict[str, Any]:
    """The whole spec the op writes: the deployed one with its seq and instances."""
    config = {**dict(base.get("config") or {}), "seq": op.seq}
    return {**base, "config": config, "instances": op.instances}


def keeper_deploy(token: str | None, timeout_s: float, tls: TlsFiles | None = None) -> Deploy:
    """Deploy through the Keepers with ``token``, over TLS verified with ``tls`` (the
    stack's CA) or in plaintext when None."""

    def deploy(addresses: Sequence[str], spec_json: str, kind: str, op_id: str) -> str:
        client = KeeperClient(list(addresses), token=token, timeout_s=timeout_s, tls=tls)
        return client.deploy(spec_json, b"", kind=kind, op_id=op_id)

    return deploy


@dataclass
class ControlLoad:
    keepers: list[str]
    base_spec: Mapping[str, Any]
    deploy: Deploy
    drill: str
    prefix: str
    seq: int
    """The last seq written; the first op writes ``seq + 1``."""
    instances: int
    counts: tuple[int, int] = (2, 3)
    interval_s: float = 2.0
    scale_every: int = 4
    invalid_every: int = 10
    clock: Callable[[], float] = time.time
    history: list[ControlEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._n = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="control-ops", daemon=True)

    def step(self) -> PlannedOp:
        """Issue the next op and record it (blocking until its answer)."""
        self._n += 1
        op = plan_op(
            self._n,
            prefix=self.prefix,
            seq=self.seq,
            instances=self.instances,
            counts=self.counts,
            scale_every=self.scale_every,
            invalid_every=self.invalid_every,
        )
        self.seq = op.seq
        if op.valid:
            self.instances = op.instances
        first = (self._n - 1) % len(self.keepers)
        order = self.keepers[first:] + self.keepers[:first]
        body = json.dumps(spec_for(self.base_spec, op))

        def event(kind: OpType, error: str = "") -> ControlEvent:
            return ControlEvent(
                self.drill, kind, op.op_id, self.clock(), op.kind, op.seq, op.instances,
                order[0], error,
            )  # fmt: skip

        self._append(event("invoke"))
        try:
            self.deploy(order, body, op.kind, op.op_id)
        except KeeperRefused as exc:
            self._append(event("fail", str(exc)))
        except Exception as exc:  # timeout, no Keeper, DB down: the op may or may not be done
            self._append(event("info", f"{type(exc).__name__}: {exc}"))
        else:
            self._append(event("ok"))
        return op

    def _append(self, e: ControlEvent) -> None:
        with self._lock:
            self.history.append(e)

    def events(self) -> list[ControlEvent]:
        with self._lock:
            return list(self.history)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.step()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop after the op in flight has its answer."""
        self._stop.set()
        self._thread.join(timeout_s)

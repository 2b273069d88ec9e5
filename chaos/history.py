"""What a chaos run records: every data-plane call and every control operation.

Plain frozen values, written one JSON object a line to ``history.jsonl`` and read back
by the checkers (which never touch the stack). The drill service's ledger (one line per
execution of a call id, a file per worker process) is read here too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

OpType = Literal["invoke", "ok", "fail", "info"]
"""Jepsen's op types: ``invoke`` when a client sends it; then ``ok`` (acknowledged),
``fail`` (definitely not done: the Keeper refused it) or ``info`` (indeterminate: a
timeout or an unavailable control plane; it may or may not take effect)."""


@dataclass(frozen=True)
class CallRecord:
    """One data-plane call as its caller saw it."""

    drill: str
    start: float
    """Wall clock, epoch seconds."""
    latency_ms: float
    outcome: str
    """``OK`` or the gRPC status name."""
    cluster: str = ""
    call_id: str = ""
    caller: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "OK"

    @property
    def end(self) -> float:
        return self.start + self.latency_ms / 1000


@dataclass(frozen=True)
class ControlEvent:
    """One line of the control-plane history: an op's invocation or its completion."""

    drill: str
    type: OpType
    op_id: str
    time: float
    """Wall clock, epoch seconds."""
    kind: str
    """The operation's kind as sent to the Keeper (``config``, ``scale``)."""
    seq: int
    """The config value the op writes (grows with every op)."""
    instances: int
    keeper: str = ""
    """The Keeper the client tried first."""
    error: str = ""


@dataclass(frozen=True)
class FaultWindow:
    """When a drill's fault was in effect: its method, from the first activity's start to
    the last one's end, as the Chaos Toolkit journal says."""

    drill: str
    start: float
    end: float


Line = CallRecord | ControlEvent | FaultWindow
_TYPES: dict[str, type[CallRecord] | type[ControlEvent] | type[FaultWindow]] = {
    "call": CallRecord,
    "control": ControlEvent,
    "fault": FaultWindow,
}


def _tag(line: Line) -> str:
    for tag, cls in _TYPES.items():
        if isinstance(line, cls):
            return tag
    raise TypeError(f"not a history line: {line!r}")


def dumps(line: Line) -> str:
    return json.dumps({"record": _tag(line), **asdict(line)}, sort_keys=True)


def loads(text: str) -> Line:
    data: dict[str, Any] = json.loads(text)
    cls = _TYPES[data.pop("record")]
    return cls(**data)


def write(path: Path, lines: Iterable[Line]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for line in lines:
            f.write(dumps(line) + "\n")
    tmp.replace(path)


def read(path: Path) -> Iterator[Line]:
    with path.open() as f:
        for text in f:
            if text.strip():
                yield loads(text)


def read_ledger(ledger_dir: Path) -> dict[str, int]:
    """How many times each call id ran, over every worker's ledger file of the drill
    service (``examples/drill``); empty when there is none."""
    counts: dict[str, int] = {}
    for path in sorted(ledger_dir.glob("calls-*.log")):
        for text in path.read_text().splitlines():
            if text:
                counts[text] = counts.get(text, 0) + 1
    return counts

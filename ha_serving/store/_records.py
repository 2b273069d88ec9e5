"""Immutable values read from and written to the store, one per table.

Each has ``to_record()`` (a dict of column values) and ``from_record(row)`` (from a
result row mapping). JSON columns come back as plain dicts; treat them as read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ha_serving._errors import UserError
from ha_serving._status import OperationStatus

JSON = Mapping[str, Any]


@dataclass(frozen=True)
class ServiceRecord:
    """A service's desired spec. ``spec_version`` counts spec changes (user-visible);
    ``version`` counts every write to the row (optimistic concurrency)."""

    name: str
    spec: JSON
    spec_version: int
    version: int
    created_at: float
    updated_at: float

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "spec": dict(self.spec)}

    @classmethod
    def from_record(cls, row: Mapping[Any, Any]) -> ServiceRecord:
        return cls(
            name=row["name"],
            spec=row["spec"],
            spec_version=int(row["spec_version"]),
            version=int(row["version"]),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
        )


@dataclass(frozen=True)
class OperationRecord:
    """A durable control operation: its plan, the step reached and its status.

    Build one with ``op_id``, ``service``, ``kind``, ``plan`` (and ``epoch``, the
    creating leader's); the store fills ``version`` and the times when it stores it.
    """

    op_id: str
    service: str
    kind: str
    plan: JSON
    step: int = 0
    status: OperationStatus = OperationStatus.PENDING
    """Moves by ``ha_serving._status.OPERATION_TRANSITIONS`` (``Store.advance_operation``)."""
    epoch: int = 0
    version: int = 0  # 0: not stored yet
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    progress: JSON | None = None
    """A release's progress: current weight, when its step began, analysis checks."""
    command: str | None = None
    """The operator's last command to a release (promote, pause, resume, abort)."""

    def same_request(self, other: OperationRecord) -> bool:
        """Whether ``other`` asks for the same thing (a retried create), ignoring progress."""
        return (self.op_id, self.service, self.kind, dict(self.plan)) == (
            other.op_id,
            other.service,
            other.kind,
            dict(other.plan),
        )

    def to_record(self) -> dict[str, Any]:
        progress = None if self.progress is None else dict(self.progress)
        return {
            **asdict(self),
            "plan": dict(self.plan),
            "progress": progress,
            "status": str(self.status),  # the plain value: a driver needs no enum
        }

    @classmethod
    def from_record(cls, row: Mapping[Any, Any]) -> OperationRecord:
        return cls(
            op_id=row["op_id"],
            service=row["service"],
            kind=row["kind"],
            plan=row["plan"],
            step=int(row["step"]),
            status=OperationStatus(row["status"]),
            epoch=int(row["epoch"]),
            version=int(row["version"]),
            error=row["error"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            progress=row.get("progress"),
            command=row.get("command"),
        )


@dataclass(frozen=True)
class CapacityFloor:
    """The Keeper leader's floor under an autoscaled service's count on one cluster."""

    service: str
    cluster: str
    floor: int
    """Fewest instances the cluster's autoscaler may decide (0: no floor)."""
    reason: str
    epoch: int
    updated_at: float


@dataclass(frozen=True)
class EventRecord:
    """One line of the audit log."""

    id: int
    at: float
    kind: str
    cluster: str | None = None
    service: str | None = None
    op_id: str | None = None
    epoch: int | None = None
    detail: JSON | None = field(default=None)

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "detail": None if self.detail is None else dict(self.detail)}

    @classmethod
    def from_record(cls, row: Mapping[Any, Any]) -> EventRecord:
        epoch = row["epoch"]
        return cls(
            id=int(row["id"]),
            at=float(row["at"]),
            kind=row["kind"],
            cluster=row["cluster"],
            service=row["service"],
            op_id=row["op_id"],
            epoch=None if epoch is None else int(epoch),
            detail=row["detail"],
        )


class AlreadyExists(UserError):
    """A create hit an existing row with different content."""

    grpc_status = "ALREADY_EXISTS"

    def __init__(self, table: str, key: str) -> None:
        self.table = table
        self.key = key
        super().__init__(f"{table}[{key}] already exists")


class UnknownOperation(UserError):
    grpc_status = "NOT_FOUND"

    def __init__(self, op_id: str) -> None:
        self.op_id = op_id
        super().__init__(f"unknown operation {op_id!r}")

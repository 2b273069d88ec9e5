"""One error tree for the whole stack, split by fault and by retryability.

User-caused errors (bad spec, unknown service, bad configuration) are permanent:
retrying the same call cannot help. System-caused errors are either transient
(``TransientError``: retry after ``retry_after`` seconds) or permanent. Each class
names the gRPC status it maps to, so servers translate errors in one place.
"""

from __future__ import annotations

from typing import ClassVar


class HAServingError(Exception):
    """Root of every error this package raises on purpose."""

    grpc_status: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False


# --- caused by the user ------------------------------------------------------------


class UserError(HAServingError):
    """The caller asked for something invalid; fix the input, do not retry."""

    grpc_status = "INVALID_ARGUMENT"


class InvalidSpec(UserError):
    """A spec or setting failed validation; ``problems`` lists each one by field."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        super().__init__(f"invalid {what}: " + "; ".join(problems))


class UnknownService(UserError):
    grpc_status = "NOT_FOUND"

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(f"unknown service {service!r}")


# --- caused by the system ----------------------------------------------------------


class PlatformError(HAServingError):
    """Something in the platform failed; see the subclass for retryability."""


class TransientError(PlatformError):
    """Worth retrying after ``retry_after`` seconds (DB blip, leader change...)."""

    grpc_status = "UNAVAILABLE"
    retryable = True

    def __init__(self, message: str, *, retry_after: float = 0.5) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StoreUnavailable(TransientError):
    """The state store did not answer."""


class ConflictError(PlatformError):
    """An optimistic-concurrency write lost: the row changed since it was read."""

    grpc_status = "ABORTED"
    retryable = True

    def __init__(self, table: str, key: str, expected: int, actual: int | None) -> None:
        self.table = table
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{table}[{key}] changed concurrently: expected version {expected}, found {actual}"
        )


class LeaseLost(PlatformError):
    """The caller no longer holds the lease it acts under (expired or taken over)."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, name: str, holder: str, epoch: int) -> None:
        self.name = name
        self.holder = holder
        self.epoch = epoch
        super().__init__(f"lease {name!r} at epoch {epoch} is no longer held by {holder!r}")


class StackError(PlatformError):
    """The local stack could not be brought up, inspected or torn down."""

    grpc_status = "FAILED_PRECONDITION"

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


MAX_PROBLEMS_SHOWN = 5
"""An error's message names this many problems, then "and N more" (``problems`` has all)."""
MAX_PROBLEM_CHARS = 200
"""Each problem (and the thing found invalid) is cut to this many characters in a message."""


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (every run of whitespace, newlines included, made one space),
    cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)] + "…"


class InvalidSpec(UserError):
    """A spec or setting failed validation; ``problems`` lists each one by field.

    The message is one line of bounded length whatever the input: the first
    ``MAX_PROBLEMS_SHOWN`` problems, each cut to ``MAX_PROBLEM_CHARS``, then how many more."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        shown = [one_line(p, MAX_PROBLEM_CHARS) for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"and {len(problems) - MAX_PROBLEMS_SHOWN} more")
        super().__init__(f"invalid {one_line(what, MAX_PROBLEM_CHARS)}: " + "; ".join(shown))


class UnknownService(UserError):
    grpc_status = "NOT_FOUND"

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(f"unknown service {service!r}")


class OperationFinished(UserError):
    """A command for an operation that has already finished."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, op_id: str, status: str) -> None:
        self.op_id = op_id
        self.status = status
        super().__init__(f"operation {op_id} has finished ({status}): nothing to command")


class UserCodeError(UserError):
    """The user's code raised (import, constructor, reconfigure or a method); fix the code."""

    grpc_status = "UNKNOWN"

    def __init__(self, action: str, error_type: str, detail: str) -> None:
        self.action = action
        self.error_type = error_type
        self.detail = detail
        super().__init__(f"{action} failed: {error_type}: {detail}")


class CallError(HAServingError):
    """A data-plane call ended in a non-OK gRPC status; ``code`` is the status name."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


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


class BackPressure(TransientError):
    """Every instance able to take the call is at its concurrency cap; retry elsewhere/later."""

    grpc_status = "RESOURCE_EXHAUSTED"


class BackendUnavailable(TransientError):
    """A backend worker could not be reached; ``reached_user_code`` says if a retry is safe."""

    def __init__(self, worker: str, reason: str, *, reached_user_code: bool) -> None:
        self.worker = worker
        self.reason = reason
        self.reached_user_code = reached_user_code
        super().__init__(f"backend worker {worker!r} unavailable: {reason}")


class UnknownInstance(PlatformError):
    """The addressed instance is not hosted here (never added, or already removed)."""

    grpc_status = "NOT_FOUND"

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"no instance {instance_id!r} is hosted here")


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


class IllegalTransition(PlatformError):
    """A lifecycle move its table does not allow (``ha_serving._status``, the AppMaster's
    ``_state``): a bug, never retried."""

    def __init__(self, subject: str, src: str, dst: str) -> None:
        self.subject = subject
        """What moved: ``instance <id>``, ``proxy <name>``, ``operation <op_id>`` ..."""
        self.src = src
        self.dst = dst
        super().__init__(f"{subject}: illegal transition {src} -> {dst}")


class InvalidRecord(PlatformError):
    """A record read from the store or sent between roles does not decode: it is
    corrupt, or was written by code that disagrees on its shape. Not the caller's fault,
    and retrying the same read cannot help."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"invalid {what} record: {one_line(problem, MAX_PROBLEM_CHARS)}")


class StackError(PlatformError):
    """The local stack could not be brought up, inspected or torn down."""

    grpc_status = "FAILED_PRECONDITION"

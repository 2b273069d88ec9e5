"""Small values that cross the data plane: proxy <-> backend, AppMaster -> proxy.

They are frozen dataclasses with no Ray or gRPC in them, so they pickle through Ray
actor calls unchanged and the AppMaster, proxy and backend agree on one shape.
``code`` fields hold gRPC status *names* ("OK", "NOT_FOUND", ...) rather than
``grpc.StatusCode`` members, so a ``CallResult`` means the same whichever path carried it
(a Ray actor call, or the direct gRPC path, ``ha_serving/proto/direct.proto``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from ha_serving._errors import InvalidRecord

SERVING_SERVICE = "ha_serving.v1.Serving"
"""Full gRPC name of the data-plane service (see ``ha_serving/proto/serving.proto``)."""

CALL_METHOD = f"/{SERVING_SERVICE}/Call"
"""Full gRPC method path of ``Serving.Call``, used by the client and the proxy."""

ROUTES_METHOD = f"/{SERVING_SERVICE}/Routes"
"""``Serving.Routes``: a proxy's direct routes, for clients in direct mode."""

DIRECT_SERVICE = "ha_serving.v1.Direct"
"""Full gRPC name of a backend worker's own server (``ha_serving/proto/direct.proto``),
called by proxies on the direct path."""

DIRECT_CALL = f"/{DIRECT_SERVICE}/Call"
DIRECT_PING = f"/{DIRECT_SERVICE}/Ping"

RETRY_SAFE_KEY = "ha-retry-safe"
"""Trailing-metadata key a proxy sets on every non-OK answer it makes: "1" when the call
is known not to have reached user code (a retry cannot run it twice), else "0". Its
absence means the error came from the transport, not from a proxy."""


@dataclass(frozen=True, slots=True)
class CallResult:
    """What a backend instance made of one call; never an exception across Ray."""

    ok: bool
    payload: bytes
    code: str
    message: str
    instance_id: str
    version: str
    reached_user_code: bool

    @classmethod
    def success(cls, payload: bytes, *, instance_id: str, version: str) -> CallResult:
        return cls(True, payload, "OK", "", instance_id, version, reached_user_code=True)

    @classmethod
    def failure(
        cls,
        code: str,
        message: str,
        *,
        reached_user_code: bool,
        instance_id: str = "",
        version: str = "",
    ) -> CallResult:
        return cls(False, b"", code, message, instance_id, version, reached_user_code)


@dataclass(frozen=True, slots=True)
class ControlResult:
    """Outcome of a control call on a backend worker (add, reconfigure, load_code...).

    Returned rather than raised, because exceptions with custom constructors do not
    survive Ray's pickling intact and the AppMaster wants the code and message anyway.
    """

    ok: bool
    code: str = "OK"
    message: str = ""

    @classmethod
    def failed(cls, code: str, message: str) -> ControlResult:
        return cls(False, code, message)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One routable instance: where it lives and how many calls it may hold at once."""

    instance_id: str
    worker: str
    """Name of the Ray actor (BackendWorker) hosting the instance."""
    version: str
    max_concurrency: int
    """Calls one proxy sends the instance at once; the cap is per caller (each proxy, and
    each client in direct mode, counts its own)."""
    group: str = "stable"
    """Version group: "stable", "candidate" (canary, blue-green) or "retiring"."""
    address: str = ""
    """``host:port`` of the worker's direct gRPC server (``BackendWorker.start_direct``),
    which proxies call instead of the Ray actor; "" when the worker has none (not
    started, or could not be set up): then proxies use the Ray actor call."""

    def __post_init__(self) -> None:
        if not self.instance_id or not self.worker:
            raise ValueError("a route entry needs an instance_id and a worker")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency of {self.instance_id} must be >= 1")


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The instances of one service that are in service now, at table ``version``.

    The AppMaster bumps ``version`` on every change and removes an instance from the
    table *before* draining it, so a proxy holding the table never routes to it again.
    """

    service: str
    version: int
    entries: tuple[RouteEntry, ...] = ()
    candidate_weight: int = 0
    """Percent of calls for the "candidate" group; the "stable" group gets the rest and
    "retiring" instances get calls only when no other instance has room."""

    def __post_init__(self) -> None:
        if not 0 <= self.candidate_weight <= 100:
            raise ValueError(f"candidate_weight {self.candidate_weight} is not in 0..100")
        ids = [e.instance_id for e in self.entries]
        if len(set(ids)) != len(ids):
            raise ValueError(f"routing table v{self.version} of {self.service} repeats an id")

    def to_record(self) -> dict[str, object]:
        """A JSON-able dict for the store."""
        return {
            "service": self.service,
            "version": self.version,
            "entries": [
                {
                    "instance_id": e.instance_id,
                    "worker": e.worker,
                    "version": e.version,
                    "max_concurrency": e.max_concurrency,
                    "group": e.group,
                    "address": e.address,
                }
                for e in self.entries
            ],
            "candidate_weight": self.candidate_weight,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> RoutingTable:
        """The table ``to_record`` made; InvalidRecord for anything else (a missing or
        mistyped field, a repeated id, a weight out of range), never another error."""
        try:
            raw = _field(record, "entries", list)
            entries = tuple(
                RouteEntry(
                    instance_id=_field(e, "instance_id", str),
                    worker=_field(e, "worker", str),
                    version=_field(e, "version", str),
                    max_concurrency=_field(e, "max_concurrency", int),
                    group=_field(e, "group", str, "stable"),
                    address=_field(e, "address", str, ""),
                )
                for e in raw
            )
            return cls(
                service=_field(record, "service", str),
                version=_field(record, "version", int),
                entries=entries,
                candidate_weight=_field(record, "candidate_weight", int, 0),
            )
        except (TypeError, ValueError) as exc:  # ValueError: RouteEntry's own checks
            raise InvalidRecord("routing table", str(exc)) from None


_T = TypeVar("_T")


def _field(record: object, key: str, kind: type[_T], default: _T | None = None) -> _T:
    """``record[key]`` if ``record`` is a mapping and the value a ``kind`` (an int is no
    bool here); TypeError otherwise."""
    if not isinstance(record, Mapping):
        raise TypeError(f"expected a mapping, got {type(record).__name__}")
    value = record.get(key, default)
    if value is None:
        raise TypeError(f"{key} is missing")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} must be {kind.__name__}, got {type(value).__name__}")
    return value

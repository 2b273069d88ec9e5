"""Trigger layer: validate one request and split it into per-bank jobs.

Every problem is a ``ValueError`` whose message names the field, so a caller sees what
to fix (the platform returns it as the call's error).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BANKS = 100
MAX_INDICATORS = 50
"""Per bank: a request is one routing decision, not a batch job."""

_FIELDS = frozenset({"time", "banks"})


@dataclass(frozen=True)
class BankJob:
    """One bank of a request and the indicators to compute for it."""

    time: str
    bank: str
    indicators: tuple[str, ...]


def split(request: object) -> tuple[str, list[BankJob]]:
    """``{"time": t, "banks": {bank: [indicator, ...]}}`` -> (time key, one job per bank)."""
    if not isinstance(request, dict):
        # ValueError for every bad request, type or value: one kind of error for callers
        raise ValueError(  # noqa: TRY004
            'request must be an object {"time": ..., "banks": {bank: [indicator, ...]}}, '
            f"got {type(request).__name__}"
        )
    unknown = sorted(set(request) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}: a request has only 'time' and 'banks'")
    time_key = _time_key(request.get("time"))
    banks = request.get("banks")
    if banks is None:
        raise ValueError("'banks' is required: an object mapping bank id -> list of indicators")
    if not isinstance(banks, dict) or not banks:
        raise ValueError(
            "'banks' must be a non-empty object mapping bank id -> list of indicators, "
            f"got {type(banks).__name__}"
        )
    if len(banks) > MAX_BANKS:
        raise ValueError(f"too many banks: {len(banks)} > {MAX_BANKS} per request")
    jobs = [BankJob(time_key, bank, _indicators(bank, inds)) for bank, inds in banks.items()]
    return time_key, jobs


def _time_key(value: object) -> str:
    if value is None:
        raise ValueError("'time' is required: a string or a number (e.g. \"2024-05-01T12:00\")")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        raise ValueError(f"'time' must be a non-empty string or a number, got {value!r}")
    return str(value)


def _indicators(bank: str, value: object) -> tuple[str, ...]:
    if not bank:
        raise ValueError("bank ids must be non-empty")
    if not isinstance(value, list):
        raise ValueError(  # noqa: TRY004 - see split()
            f"banks[{bank!r}] must be a list of indicator names, got {type(value).__name__}"
        )
    if not value:
        raise ValueError(f"banks[{bank!r}] lists no indicator")
    if len(value) > MAX_INDICATORS:
        raise ValueError(f"banks[{bank!r}]: {len(value)} indicators > {MAX_INDICATORS}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"banks[{bank!r}]: indicator names are non-empty strings, got {name!r}"
            )
    if len(set(value)) != len(value):
        raise ValueError(f"banks[{bank!r}] lists an indicator twice")
    return tuple(value)

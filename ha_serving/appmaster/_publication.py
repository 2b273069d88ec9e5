"""What an AppMaster has written to discovery, and what it must write next.

A proxy's endpoint is a lease in the store (``endpoints.expires_at``, ``endpoint_ttl_s``
after its last write; readers skip expired rows). An AppMaster used to write every
serving proxy's endpoint and prune the others at the end of every round (a round runs
at least every second): about three writes a second per AppMaster that changed nothing
a client sees. ``Publication`` remembers what this process wrote, so a round writes an
endpoint only when

- it is new to this process, or its labels changed (cluster weight, proxy name, metrics
  address): at once, as before;
- its last write is ``endpoint_refresh_s`` old (a third of the TTL by default): the
  lease is renewed well before it lapses, even if a refresh fails or comes a round late;
- a write of it failed (it may or may not have landed): retried next round;
- the link's heartbeat lapsed (``in_doubt``): the leader may have taken the cluster for
  lost and withdrawn its endpoints behind this AppMaster's back
  (``Reconciler._watch_clusters``), so each round writes every endpoint again, as every
  round did before, until the leader has surely seen the heartbeat again.

And it prunes (deletes the service's other endpoints on its cluster) on its first
round, when an endpoint it wrote is no longer wanted, and while in doubt. Clients see
the same list as before: the same rows, written as soon as they change; only the
renewals of unchanged leases are fewer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Labels = Mapping[str, Any]


@dataclass(frozen=True)
class Written:
    labels: Labels | None
    """What was written; None while a write is under way or after it failed."""
    at: float
    """Monotonic time the write started (the lease runs from a moment after it)."""


@dataclass(frozen=True)
class Due:
    """One round's writes to discovery."""

    write: tuple[str, ...]
    """Addresses whose endpoint to write (register or renew)."""
    prune: bool
    """Delete every endpoint of the service on this cluster but the wanted ones."""


class Publication:
    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self.written: dict[str, Written] = {}
        """Address -> its last write by this process."""
        self.pruned = False
        """Whether this process has pruned once (rows of an earlier incarnation)."""
        self.doubt_until = float("-inf")

    def due(self, wanted: Mapping[str, Labels], now: float) -> Due:
        """What to write for the ``wanted`` endpoints (address -> labels) at ``now``."""
        doubt = now < self.doubt_until
        write = tuple(
            address
            for address, labels in wanted.items()
            if doubt or self._stale(address, labels, now)
        )
        gone = set(self.written) - set(wanted)
        return Due(write=write, prune=doubt or not self.pruned or bool(gone))

    def _stale(self, address: str, labels: Labels, now: float) -> bool:
        last = self.written.get(address)
        return last is None or last.labels != labels or now - last.at >= self.refresh_s

    def writing(self, address: str, now: float) -> None:
        """A write of ``address`` starts: in doubt until ``wrote``."""
        self.written[address] = Written(None, now)

    def wrote(self, address: str, labels: Labels, started: float) -> None:
        self.written[address] = Written(dict(labels), started)

    def removed(self, address: str) -> None:
        """``address`` was deleted from discovery (withdrawn)."""
        self.written.pop(address, None)

    def pruned_to(self, kept: set[str]) -> None:
        """Every endpoint but ``kept`` was deleted."""
        self.pruned = True
        for address in set(self.written) - kept:
            del self.written[address]

    def in_doubt(self, until: float) -> None:
        """Write everything, and prune, every round until ``until`` (monotonic)."""
        self.doubt_until = max(self.doubt_until, until)

"""Direct mode: the client calls the workers' own gRPC servers, a proxy only its directory.

``Client(addresses, mode="direct")`` and ``AsyncClient(..., mode="direct")`` skip the
proxy hop: a call goes straight to a backend worker's ``DirectServer``
(``ha_serving/proto/direct.proto``), the server a proxy itself calls. Measured on the
echo (``make bench BENCH_ARGS=--direct-client``, docs/results.md): about twice the
throughput of the proxy path at a lower p99 and half the CPU per request.

Per call, decided without I/O by ``DirectCore.attempts`` (a generator, as
``_Core.attempts`` is for the proxy path; each client's driver does what it yields):

1. **Routes.** The client holds, per service, the direct routes of one proxy's routing
   table, fetched with ``Serving.Routes``: each worker's direct address, its instances
   (version group, version, ``max_concurrency``), the group weights, the table's version
   and cluster. A call that finds them older than ``routes_refresh_s`` fetches them first
   (``Refresh``) from a proxy chosen as calls choose one (the nearest healthy tier, by
   weight), within ``routes_timeout_s`` and its own deadline; a failure on the direct
   path marks them stale, so the next call refetches after ``MIN_REFRESH_GAP_S``. One
   fetch per service at a time: calls meanwhile use the routes held. A failed fetch
   keeps them (as a proxy keeps its last table while the control plane is down) and is
   not retried before ``routes_refresh_s``. A table of the same cluster older than the
   one held is ignored; one of another cluster replaces it.
2. **Choice.** The proxy's own ``Router`` (``ha_serving.dataplane``): the version group
   drawn by weight, power of two choices under each instance's ``max_concurrency``
   (counted by this client, as each proxy counts its own), ejected workers skipped.
3. **The call** (``DirectTry``): ``Direct.Call`` with the remaining deadline as gRPC
   deadline, through ``WorkerLinks`` (asyncio) or ``SyncLinks`` (blocking), both of which
   judge failures by the shared rules of ``ha_serving/dataplane/_direct.py``.
4. **The outcome**, as the proxy judges it:

   ============================================  ==========================================
   outcome                                       what the client does
   ============================================  ==========================================
   the worker's answer (ok or an error)          returns it, or raises ``CallError(code)``
   never sent (no READY channel before the       ejects the worker, tries an instance of
   call), UNIMPLEMENTED, FAILED_PRECONDITION     another worker (once), then the proxy path;
                                                 marks the routes stale
   "instance not hosted" (the routes are         the same, without ejecting the worker (its
   stale)                                        other instances are fine)
   the worker's refusal at the instance's        tries another instance (once), then
   ``max_concurrency`` (RESOURCE_EXHAUSTED,      ``CallError(RESOURCE_EXHAUSTED)``, not the
   unrun: the worker counts every caller)        proxy path (its calls meet the same caps)
   any other failure of a sent call              ejects the worker; ``CallError(UNAVAILABLE)``:
                                                 it may have run, so it is never retried
   the deadline passed                           ``CallError(DEADLINE_EXCEEDED)``, not retried
   every usable instance at this client's cap    ``CallError(RESOURCE_EXHAUSTED)``
   no direct route (none yet, none with an       the proxy path (``ViaProxy``), same deadline
   address, every worker ejected)
   ============================================  ==========================================

   At most once: user code runs at most once per call, as on the proxy path.

   At its cap the client answers RESOURCE_EXHAUSTED, as a proxy does, rather than
   falling back to a proxy: the instances are saturated, and a proxy's calls would only
   add to their load (or meet the workers' caps).

   An ejected worker is skipped for ``direct_eject_s``, or until the routes give it a new
   address (a restarted worker), or until they drop it.

What it does not give, and why that is safe:

* The AppMaster drains an instance once every proxy acknowledged a table without it; it
  does not know direct clients, whose routes lag by up to ``routes_refresh_s``. A call
  reaching an instance being drained is counted by its host, and the drain's
  ``wait_idle`` waits for it; a call reaching an instance already removed is refused
  unrun ("not hosted") and tried elsewhere. Canary weights lag likewise.
* Two caps apply. The routes carry each instance's per-proxy share (``max_concurrency``
  // serving proxies, ``JobState.concurrency_per_proxy``), which this client counts on
  its own, as each proxy counts its own; so N direct clients and P proxies may send up
  to (N + P) x share calls to one instance. The worker itself holds it to the spec's
  ``max_concurrency`` across all of them (``InstanceHost``: the AppMaster gives it the
  cap), refusing the excess unrun with RESOURCE_EXHAUSTED, which this client (and a
  proxy) tries once on another instance. So direct clients can crowd out the proxies'
  calls (those are then refused and retried, retry-safe) but never push an instance
  past ``max_concurrency``.
* Only the cluster of the proxy that answered is used; the proxy path remains the way to
  the others (when every worker is ejected, or none is known).
* Under TLS the workers take only mutual TLS: the client must show a certificate of the
  stack's CA (``TlsFiles(ca, cert, key)``; for a stack ``up`` brought up,
  ``infra.Topology.direct_client_tls()`` gives its ``client.pem``); without one,
  construction fails.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any, TypeGuard

import grpc

from ha_serving._errors import BackendUnavailable, CallError, InvalidSpec
from ha_serving._settings import ClientSettings
from ha_serving._wire import DIRECT_CALL, CallResult, RouteEntry, RoutingTable
from ha_serving.dataplane import (
    CHANNEL_OPTIONS,
    FAILED_STATES,
    READY,
    Router,
    failure,
    not_connected,
    result_of,
)
from ha_serving.proto.direct_pb2 import DirectCall, DirectResult
from ha_serving.proto.serving_pb2 import CallReply, RoutesReply
from ha_serving.util.tls import TlsFiles
from ha_serving.util.tls import channel as tls_channel

log = logging.getLogger("ha_serving.client.direct")

MIN_REFRESH_GAP_S = 0.05
"""Least time between two route fetches of one service, also after a failure on the
direct path (so a burst of failures costs one fetch, not one per call)."""
DIRECT_TRIES = 2
"""Direct tries per call: the first and one more when the first provably never ran (as
a proxy retries once): on another worker, or on another instance after a worker's
refusal at the instance's cap; then the proxy path (or RESOURCE_EXHAUSTED after a
refusal)."""


def check_tls(tls: TlsFiles | None) -> None:
    """Refuse direct mode under TLS without a client certificate: workers take only
    mutual TLS, so every direct call would fail to connect."""
    if tls is not None and tls.cert is None:
        raise InvalidSpec(
            "client",
            [
                "mode 'direct' under TLS needs a client certificate of the stack's CA "
                "(TlsFiles(ca, cert, key)): backend workers take only mutual TLS"
            ],
        )


@dataclass(frozen=True)
class DirectStats:
    """What a direct-mode client did, since it was made (counters)."""

    direct: int = 0
    """Calls answered on the direct path (by a worker: a reply or its error), or failed
    there after being sent."""
    proxied: int = 0
    """Calls sent through a proxy (the fallbacks)."""
    fallbacks: int = 0
    """Calls that took the proxy path: no usable direct route, or none left to try."""
    ejections: int = 0
    """Workers ejected after a failed direct call."""
    refreshes: int = 0
    """Route fetches answered by a proxy."""
    refresh_failures: int = 0
    """Route fetches that failed (no proxy answered, or its answer was unusable)."""


@dataclass(frozen=True)
class Refresh:
    """Fetch ``service``'s routes from a proxy within ``timeout`` seconds; send back the
    ``RoutesReply``, or None if none came."""

    service: str
    timeout: float


@dataclass(frozen=True)
class DirectTry:
    """Call ``entry`` on its worker's direct server within ``timeout`` seconds; send back
    the ``CallResult`` or the exception raised."""

    entry: RouteEntry
    timeout: float


@dataclass(frozen=True)
class ViaProxy:
    """The call takes the proxy path (nothing was run on the direct one): ``reason``."""

    reason: str


Step = Refresh | DirectTry
Outcome = RoutesReply | CallResult | BaseException | None


class _Book:
    """One service's routes and choices."""

    def __init__(self, service: str, rng: Any) -> None:
        self.service = service
        self.router = Router(service, rng=rng)
        self.cluster = ""
        self.version = -1
        """The proxy's table version (of ``cluster``) held."""
        self.local_version = 0
        """Our own table versions for the Router, which adopts only newer ones."""
        self.tried_at = -math.inf
        self.refreshing = False
        self.stale = False
        self.ejected_at: dict[str, float] = {}


class DirectCore:
    """The direct mode's decisions, shared by Client and AsyncClient, without I/O.

    Thread-safe: the blocking client runs calls from many threads, so the books are
    read and changed under ``lock``."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        rng: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.rng = rng
        self.clock = clock
        self.lock = threading.Lock()
        self._books: dict[str, _Book] = {}
        self._counts: dict[str, int] = dict.fromkeys(DirectStats.__dataclass_fields__, 0)

    def stats(self) -> DirectStats:
        with self.lock:
            return DirectStats(**self._counts)

    def count(self, what: str) -> None:
        with self.lock:
            self._counts[what] += 1

    def addresses(self) -> set[str]:
        """Every direct address in the routes held (channels to others can be closed)."""
        with self.lock:
            return {e.address for b in self._books.values() for e in b.router.table.entries}

    # --- one call ------------------------------------------------------------------

    def attempts(
        self, service: str, deadline: float
    ) -> Generator[Step, Outcome, CallReply | ViaProxy]:
        """One call's direct tries until ``deadline`` (see the module's docstring):
        yields what the driver does next and is sent its outcome; returns the reply or
        ``ViaProxy``, or raises the ``CallError`` the caller gets. A driver that stops
        early closes it (its ``finally`` clauses release what it holds)."""
        with self.lock:
            book = self._books.get(service)
            if book is None:
                book = self._books[service] = _Book(service, self.rng)
            refresh = self._claim_refresh(book)
        if refresh:
            reply: Outcome = None
            try:
                remaining = max(0.0, deadline - self.clock())
                reply = yield Refresh(service, min(self.settings.routes_timeout_s, remaining))
            finally:
                self._adopt(book, reply if isinstance(reply, RoutesReply) else None)
        excluded: set[str] = set()
        reason = "no direct route"
        refused: CallResult | None = None
        for _ in range(DIRECT_TRIES):
            with self.lock:
                self._readmit_due(book)
                entry = book.router.acquire(excluded)
                if entry is None:
                    reason = self._no_entry(book, excluded)
            if entry is None:
                break
            try:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise CallError("DEADLINE_EXCEEDED", "deadline passed before a direct call")
                outcome = yield DirectTry(entry, remaining)
            finally:
                with self.lock:
                    book.router.release(entry.instance_id)
            reply_now = self._judge(book, entry, outcome, excluded)
            if reply_now is not None:
                return reply_now
            if _at_cap(outcome):
                refused = outcome
            reason = "the direct path to every worker tried was unavailable (never sent)"
        if refused is not None:  # a proxy would meet the same workers' caps
            self.count("direct")
            raise CallError(
                "RESOURCE_EXHAUSTED",
                f"{refused.message} (direct: every instance tried is at its cap)",
            )
        self.count("fallbacks")
        return ViaProxy(reason)

    def _judge(
        self, book: _Book, entry: RouteEntry, outcome: Outcome, excluded: set[str]
    ) -> CallReply | None:
        """The reply, or raise the caller's ``CallError``; None: it never ran, so try
        another worker (this one's instances are added to ``excluded``), or after a
        refusal at the instance's cap another instance (it alone is excluded)."""
        where = f"direct: {entry.worker} at {entry.address}"
        if _at_cap(outcome):  # the worker refused it unrun: another instance may have room
            with self.lock:
                excluded.add(entry.instance_id)
            return None
        if isinstance(outcome, CallResult):
            if outcome.ok or outcome.reached_user_code or outcome.code != "UNAVAILABLE":
                self.count("direct")
                if outcome.ok:
                    return CallReply(
                        payload=outcome.payload,
                        instance_id=outcome.instance_id,
                        version=outcome.version,
                        cluster=book.cluster,
                    )
                code = outcome.code if outcome.code in grpc.StatusCode.__members__ else "UNKNOWN"
                raise CallError(code, f"{outcome.message} ({where})")
            # "not hosted here": our routes are stale; the worker itself is fine
            self._never_ran(book, entry, excluded, eject=False)
            return None
        if isinstance(outcome, BackendUnavailable):
            if not outcome.reached_user_code:
                self._never_ran(book, entry, excluded, eject=True)
                return None
            self._eject(book, entry.worker)
            self.count("direct")
            raise CallError("UNAVAILABLE", f"{outcome} ({where}; it may have run: not retried)")
        self.count("direct")
        if isinstance(outcome, TimeoutError):
            raise CallError(
                "DEADLINE_EXCEEDED",
                f"instance {entry.instance_id} did not answer within the deadline ({where})",
            )
        kind = type(outcome).__name__
        raise CallError(
            "UNAVAILABLE", f"call to {entry.instance_id} failed: {kind}: {outcome} ({where})"
        )

    def _never_ran(
        self, book: _Book, entry: RouteEntry, excluded: set[str], *, eject: bool
    ) -> None:
        with self.lock:
            book.stale = True
            excluded.add(entry.instance_id)
            excluded.update(
                e.instance_id for e in book.router.table.entries if e.worker == entry.worker
            )
        if eject:
            self._eject(book, entry.worker)

    def _no_entry(self, book: _Book, excluded: Collection[str]) -> str:
        """Why no instance could be chosen (under the lock); raise RESOURCE_EXHAUSTED when
        usable instances exist but each is at this client's cap."""
        router = book.router
        entries = router.table.entries
        usable = [
            e for e in entries if e.instance_id not in excluded and not router.ejected(e.worker)
        ]
        if usable:  # the Router found none under its cap
            raise CallError(
                "RESOURCE_EXHAUSTED",
                f"all {len(usable)} instances of {book.service!r} are at this client's "
                "concurrency cap (direct mode)",
            )
        if not entries:
            return "no direct route"
        if excluded:
            return "the direct path to every worker tried was unavailable (never sent)"
        return "every worker with a direct route is ejected"

    # --- routes --------------------------------------------------------------------

    def _claim_refresh(self, book: _Book) -> bool:
        """Whether this call fetches the routes (under the lock): due and none running."""
        if book.refreshing:
            return False
        wait = MIN_REFRESH_GAP_S if book.stale else self.settings.routes_refresh_s
        if self.clock() - book.tried_at < wait:
            return False
        book.refreshing = True
        return True

    def _adopt(self, book: _Book, reply: RoutesReply | None) -> None:
        with self.lock:
            book.refreshing = False
            book.stale = False
            book.tried_at = self.clock()
            if reply is None:
                self._counts["refresh_failures"] += 1
                return
            try:
                table = self._table_of(book, reply)
            except ValueError as exc:  # an answer we cannot route by: keep what we hold
                self._counts["refresh_failures"] += 1
                log.warning("direct routes of %s refused: %s", book.service, exc)
                return
            self._counts["refreshes"] += 1
            if table is None:
                return
            before = {e.worker: e.address for e in book.router.table.entries}
            book.router.update(table)
            for worker in list(book.ejected_at):
                moved = any(
                    e.worker == worker and e.address != before.get(worker) for e in table.entries
                )
                if moved:  # a restarted worker: its new address is worth a try
                    book.router.readmit(worker)
                if not book.router.ejected(worker):
                    del book.ejected_at[worker]
            book.cluster, book.version = reply.cluster, reply.version

    @staticmethod
    def _table_of(book: _Book, reply: RoutesReply) -> RoutingTable | None:
        """The routing table of ``reply`` (ValueError if it is not one for this book);
        None if it is older than the one held from the same cluster."""
        if reply.service != book.service:
            raise ValueError(f"routes of {reply.service!r} answered for {book.service!r}")
        if reply.cluster == book.cluster and reply.version < book.version:
            return None
        entries = tuple(
            RouteEntry(
                instance_id=i.instance_id,
                worker=w.worker,
                version=i.version,
                max_concurrency=i.max_concurrency,
                group=i.group or "stable",
                address=w.address,
            )
            for w in reply.workers
            if w.address
            for i in w.instances
        )
        book.local_version += 1
        return RoutingTable(book.service, book.local_version, entries, reply.candidate_weight)

    # --- ejection ------------------------------------------------------------------

    def _eject(self, book: _Book, worker: str) -> None:
        with self.lock:
            if book.router.eject(worker):
                book.ejected_at[worker] = self.clock()
                self._counts["ejections"] += 1
                log.warning("direct mode: ejected worker %s of %s", worker, book.service)

    def _readmit_due(self, book: _Book) -> None:
        """Readmit workers ejected ``direct_eject_s`` ago (under the lock)."""
        if not book.ejected_at:
            return
        now = self.clock()
        for worker, since in list(book.ejected_at.items()):
            if now - since >= self.settings.direct_eject_s:
                book.router.readmit(worker)
                del book.ejected_at[worker]


def _at_cap(outcome: Outcome) -> TypeGuard[CallResult]:
    """Whether ``outcome`` is a worker's refusal at the instance's ``max_concurrency``
    (before any user code ran)."""
    return (
        isinstance(outcome, CallResult)
        and outcome.code == "RESOURCE_EXHAUSTED"
        and not outcome.reached_user_code
    )


# --- blocking links ---------------------------------------------------------------------


class _SyncLink:
    """A blocking channel to one worker, with its connectivity followed by a subscription
    (so a call on a READY channel pays no wait). Closed once retired and unused."""

    def __init__(self, address: str, tls: TlsFiles | None) -> None:
        self.channel = tls_channel(address, tls, CHANNEL_OPTIONS)
        self.call = self.channel.unary_unary(
            DIRECT_CALL,
            request_serializer=DirectCall.SerializeToString,
            response_deserializer=DirectResult.FromString,
        )
        self.users = 0
        self.retired = False
        self.state = grpc.ChannelConnectivity.IDLE
        self._changed = threading.Condition()
        self.channel.subscribe(self._seen, try_to_connect=True)

    def _seen(self, state: grpc.ChannelConnectivity) -> None:
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def wait_ready(self, budget: float) -> grpc.ChannelConnectivity:
        """READY, a failed state, or the state after ``budget`` seconds."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.state is READY or self.state in FAILED_STATES, budget
            )
            return self.state

    def close(self) -> None:
        self.channel.unsubscribe(self._seen)
        self.channel.close()


class SyncLinks:
    """``WorkerLinks`` for blocking callers: the same verdicts, on ``grpc.Channel``s."""

    def __init__(self, *, tls: TlsFiles | None, connect_timeout_s: float) -> None:
        self._tls = tls
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._links: dict[str, _SyncLink] = {}

    def call(
        self,
        worker: str,
        instance_id: str,
        method: str,
        payload: bytes,
        timeout_s: float,
        *,
        address: str,
    ) -> CallResult:
        """One call at ``address``; ``BackendUnavailable`` or ``TimeoutError`` as
        ``ha_serving/dataplane/_direct.py`` says."""
        with self._lock:
            link = self._links.get(address)
            if link is None:
                link = self._links[address] = _SyncLink(address, self._tls)
            link.users += 1
        try:
            state = link.state
            if state is not READY:
                state = link.wait_ready(min(self._connect_timeout_s, timeout_s))
            if state is not READY:
                self._retire(address, link)  # the next call opens a fresh channel
                raise not_connected(worker, address, state)
            request = DirectCall(
                worker=worker, instance_id=instance_id, method=method, payload=payload
            )
            try:
                reply: DirectResult = link.call(request, timeout=timeout_s, wait_for_ready=False)
            except grpc.RpcError as err:
                if not isinstance(err, grpc.Call):  # pragma: no cover - grpc gives one
                    raise
                raise failure(worker, address, err.code(), err.details()) from None
            return result_of(reply)
        finally:
            with self._lock:
                link.users -= 1
                idle = link.retired and link.users == 0
            if idle:
                link.close()

    def addresses(self) -> list[str]:
        """Worker addresses with an open channel."""
        with self._lock:
            return list(self._links)

    def retain(self, addresses: Collection[str]) -> None:
        """Close the channels to addresses not in ``addresses`` (once no call uses them)."""
        for address in [a for a in self.addresses() if a not in addresses]:
            self._retire(address, None)

    def close(self) -> None:
        """Close every channel (one still carrying a call once that call ends)."""
        self.retain(())

    def _retire(self, address: str, link: _SyncLink | None) -> None:
        with self._lock:
            held = self._links.get(address)
            if held is None or (link is not None and held is not link):
                return
            del self._links[address]
            held.retired = True
            idle = held.users == 0
        if idle:
            held.close()


def outcome_of(call: Callable[[], CallResult]) -> CallResult | BaseException:
    """``call()``'s result, or the exception it raised (what a ``DirectTry`` is sent)."""
    try:
        return call()
    except Exception as exc:  # judged by DirectCore, never swallowed
        return exc

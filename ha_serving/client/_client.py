"""Client and AsyncClient: call a service through its proxies, retrying only what is safe.

Each call picks an endpoint at random among the healthy ones (an endpoint answering
UNAVAILABLE is skipped for ``endpoint_down_s``), with one reused channel per endpoint.
A failed attempt is retried on another endpoint only when a retry cannot run user code
twice, within the call's overall deadline, ``max_attempts``, and a ``RetryBudget``:

* the proxy's trailer ``ha-retry-safe: 1`` on UNAVAILABLE or RESOURCE_EXHAUSTED, or
* UNAVAILABLE with no such trailer whose message says the connection was never made
  (refused, unreachable, no address): no proxy ever saw the request.

UNAVAILABLE with no trailer on a connection that was made ("Socket closed", a reset,
GOAWAY) is *not* retried: the proxy may have died holding the request after passing it
to a backend, and a retry would run user code twice.

Everything else, notably any error from a call that reached user code, goes straight
to the caller as ``CallError(code, message)``. The endpoint list is replaceable
(``set_addresses``) so discovery can feed it; a removed endpoint's channel is closed
once its last call has ended.

One call's loop (wait for a first endpoint, choose one, try, decide whether and when to
retry) is decided in one place without I/O, ``_Core.attempts``: a generator that yields
what to do next (``_Wait``, ``_Try``, ``_Pause``) and is sent each try's outcome. The two
drivers, ``Client.call_raw`` (blocking) and ``AsyncClient.call_raw`` (asyncio), only do
what it says, each with its own kind of waiting, calling and sleeping.

``mode="direct"`` skips the proxy hop: calls go to the backend workers' own servers, the
proxies serving as a directory of routes, and the proxy path above is the fallback
(``ha_serving/client/_direct.py``, decided likewise by ``DirectCore.attempts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import grpc

from ha_serving._errors import CallError
from ha_serving._settings import ClientSettings
from ha_serving._wire import CALL_METHOD, RETRY_SAFE_KEY, ROUTES_METHOD
from ha_serving.client._direct import (
    DirectCore,
    DirectStats,
    Outcome,
    Refresh,
    SyncLinks,
    ViaProxy,
    check_tls,
    outcome_of,
)
from ha_serving.client._discovery import Discovery, EndpointInfo, rank
from ha_serving.dataplane import WorkerLinks, never_connected
from ha_serving.proto.serving_pb2 import CallReply, CallRequest, RoutesReply, RoutesRequest
from ha_serving.util.tls import TlsFiles, aio_channel
from ha_serving.util.tls import channel as tls_channel

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

C = TypeVar("C")  # a channel: grpc.Channel or grpc.aio.Channel
Mode = Literal["proxy", "direct"]
"""How a client reaches instances: through a proxy, or straight to the workers (the
proxies only a directory of routes, and the fallback)."""


class RetryBudget:
    """Token bucket limiting retries to ``ratio`` x requests + ``floor`` per second.

    Each request deposits ``ratio`` tokens, time adds ``floor`` tokens per second, a
    retry takes one; the bucket holds at most ``max(floor, 1)``. So a failing backend
    sees at most (1 + ratio) x the offered load plus a trickle, never a retry storm.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        floor: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._floor = floor
        self._cap = max(floor, 1.0)
        self._clock = clock
        self._balance = self._cap
        self._last = clock()
        self._lock = threading.Lock()

    def on_request(self) -> None:
        with self._lock:
            self._refill()
            self._balance = min(self._cap, self._balance + self._ratio)

    def try_retry(self) -> bool:
        """Take a token if one is there; False means "do not retry"."""
        with self._lock:
            self._refill()
            if self._balance < 1.0:
                return False
            self._balance -= 1.0
            return True

    def _refill(self) -> None:
        now = self._clock()
        self._balance = min(self._cap, self._balance + (now - self._last) * self._floor)
        self._last = now


class _Endpoint(Generic[C]):
    def __init__(self, address: str, channel: C, stub: Any) -> None:
        self.address = address
        self.channel = channel
        self.stub = stub
        self.active = 0
        self.down_until = 0.0
        self.retired = False
        self.tier = 0
        """Preference: the lowest tier with a healthy endpoint is used (0 = nearest)."""
        self.weight = 100
        """Share of traffic within its tier (its cluster's traffic weight); 0 (a drained
        cluster) = only when no weighted endpoint in any tier is healthy."""


class _Ready:
    """Set while the client has an endpoint. Threads wait on it (``wait``), and event
    loops too (``wait_async``), without polling: ``set`` may come from any thread
    (discovery's), and wakes each loop's waiters through that loop."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._set = False
        self._loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._cond:
            self._set = True
            self._cond.notify_all()
            waiting, self._loops = self._loops, []
        for loop, fut in waiting:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, fut)

    def clear(self) -> None:
        with self._cond:
            self._set = False

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._set, timeout)

    async def wait_async(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._set:
                return True
            self._loops.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            with self._cond, contextlib.suppress(ValueError):  # already taken by ``set``
                self._loops.remove((loop, fut))
        return True


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass(frozen=True)
class _Wait:
    """Wait up to ``seconds`` for a first endpoint (discovery has not answered yet)."""

    seconds: float


@dataclass(frozen=True)
class _Try(Generic[C]):
    """Call ``endpoint`` within ``timeout`` seconds; send back the reply or the error.
    Either way, ``_Core.end(endpoint)`` once the try is over."""

    endpoint: _Endpoint[C]
    timeout: float


@dataclass(frozen=True)
class _Pause:
    """Back off ``seconds`` before the next try."""

    seconds: float


_Failure = grpc.aio.AioRpcError | grpc.Call
"""A failed try as the two gRPC flavours report it (code, details, trailers)."""


class _Core(Generic[C]):
    """What Client and AsyncClient share: endpoints, budget, retry decisions."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        settings: ClientSettings,
        timeout_s: float | None,
        retry_budget: RetryBudget | None,
        rng: random.Random | None,
        open_channel: Callable[[str], tuple[C, Any]],
    ) -> None:
        self.settings = settings
        self.timeout_s = settings.timeout_s if timeout_s is None else timeout_s
        self.budget = retry_budget or RetryBudget(settings.retry_ratio, settings.retry_floor)
        self.rng = rng or random.Random()  # noqa: S311 - endpoint choice, not crypto
        self.clock = time.monotonic
        self.lock = threading.Lock()
        self._open = open_channel
        self.endpoints: dict[str, _Endpoint[C]] = {}
        self.has_endpoints = _Ready()
        """Set while there is an endpoint: a call made before discovery's first answer
        waits for it (within its deadline) instead of failing at once."""
        self.replace(addresses)

    def replace(
        self,
        addresses: Sequence[str],
        tiers: Mapping[str, int] | None = None,
        weights: Mapping[str, int] | None = None,
    ) -> list[_Endpoint[C]]:
        """Adopt ``addresses`` (with preference ``tiers``, default all 0); return the
        dropped endpoints that can be closed now."""
        with self.lock:
            wanted = list(dict.fromkeys(addresses))
            for address in wanted:
                if address not in self.endpoints:
                    channel, stub = self._open(address)
                    self.endpoints[address] = _Endpoint(address, channel, stub)
                self.endpoints[address].tier = (tiers or {}).get(address, 0)
                self.endpoints[address].weight = (weights or {}).get(address, 100)
            closable = []
            for address in [a for a in self.endpoints if a not in wanted]:
                ep = self.endpoints.pop(address)
                ep.retired = True
                if ep.active == 0:
                    closable.append(ep)
            if self.endpoints:
                self.has_endpoints.set()
            else:
                self.has_endpoints.clear()
            return closable

    def request(
        self, service: str, method: str, payload: bytes, metadata: Mapping[str, str] | None
    ) -> CallRequest:
        self.budget.on_request()
        return CallRequest(service=service, method=method, payload=payload, metadata=metadata)

    def deadline(self, timeout: float | None) -> float:
        return self.clock() + (self.timeout_s if timeout is None else timeout)

    def attempts(
        self, deadline: float
    ) -> Generator[_Wait | _Try[C] | _Pause, CallReply | _Failure | None, CallReply]:
        """One call's loop until ``deadline``, without I/O (see the module's docstring):
        yields what the driver does next, is sent each ``_Try``'s reply or error, returns
        the reply, or raises the ``CallError`` the caller gets."""
        if not self.has_endpoints.is_set():
            yield _Wait(max(0.0, deadline - self.clock()))
        tried: set[str] = set()
        for attempt in itertools.count(1):
            ep, remaining = self.begin(tried, deadline, attempt)
            outcome = yield _Try(ep, remaining)
            if isinstance(outcome, CallReply):
                self.mark_up(ep)
                return outcome
            if outcome is None:  # pragma: no cover - a driver's bug, not a call's failure
                raise TypeError("a _Try needs its outcome sent back")
            pause = self.after_failure(ep, outcome, attempt, deadline)
            tried.add(ep.address)
            yield _Pause(pause)
        raise AssertionError("unreachable")  # pragma: no cover - itertools.count is endless

    def begin(self, tried: set[str], deadline: float, attempt: int) -> tuple[_Endpoint[C], float]:
        """Choose the endpoint for this attempt and count the call on it."""
        remaining = deadline - self.clock()
        with self.lock:
            live = list(self.endpoints.values())
            if not live:
                raise CallError("UNAVAILABLE", "the client has no endpoint to call")
            if remaining <= 0:
                raise CallError(
                    "DEADLINE_EXCEEDED", f"deadline passed after {attempt - 1} attempts"
                )
            fresh = [ep for ep in live if ep.address not in tried] or live
            now = self.clock()
            healthy = [ep for ep in fresh if ep.down_until <= now]
            # a cluster drained to weight 0 is used only when no other is healthy
            healthy = [ep for ep in healthy if ep.weight > 0] or healthy
            if healthy:  # the nearest tier that has a healthy endpoint; spill over by health
                nearest = min(ep.tier for ep in healthy)
                healthy = [ep for ep in healthy if ep.tier == nearest]
                weighted = [ep for ep in healthy if ep.weight > 0]
                if weighted:  # within the tier, by the clusters' traffic weights
                    ep = self.rng.choices(weighted, weights=[e.weight for e in weighted])[0]
                    ep.active += 1
                    return ep, remaining
            ep = self.rng.choice(healthy or fresh)
            ep.active += 1
            return ep, remaining

    def pick(self, timeout: float) -> _Endpoint[C] | None:
        """An endpoint for a request of the client's own (the directory's routes), chosen
        and counted as a call's first try is; None if there is none. ``end`` it after."""
        try:
            ep, _ = self.begin(set(), self.clock() + timeout, 1)
        except CallError:
            return None
        return ep

    def end(self, ep: _Endpoint[C]) -> bool:
        """The call on ``ep`` ended; True if its channel should now be closed."""
        with self.lock:
            ep.active -= 1
            return ep.retired and ep.active == 0

    def after_failure(
        self, ep: _Endpoint[C], err: _Failure, attempt: int, deadline: float
    ) -> float:
        """Backoff before retrying, or raise the CallError the caller gets."""
        code = err.code()
        trailers = err.trailing_metadata()
        safe = _retry_safe(code, trailers, err.details())
        from_transport = not any(k == RETRY_SAFE_KEY for k, _ in (trailers or ()))
        if code == grpc.StatusCode.UNAVAILABLE and (safe or from_transport):
            # The proxy itself is gone (no proxy answered: the connection failed or
            # broke) or has nothing to route to. (An UNAVAILABLE a proxy answered that
            # may have run user code blames a backend, not the proxy: keep using it.)
            with self.lock:
                ep.down_until = self.clock() + self.settings.endpoint_down_s
        error = CallError(code.name, f"{err.details()} (via {ep.address})")
        if not safe or attempt >= self.settings.max_attempts:
            raise error
        remaining = deadline - self.clock()
        if remaining <= 0 or not self.budget.try_retry():
            raise error
        pause = self.settings.retry_backoff_s * (2.0 ** (attempt - 1)) * self.rng.uniform(0.5, 1.0)
        return min(pause, remaining)

    def mark_up(self, ep: _Endpoint[C]) -> None:
        ep.down_until = 0.0


def _retry_safe(
    code: grpc.StatusCode, trailers: Iterable[tuple[str, Any]] | None, details: str | None = ""
) -> bool:
    flag = next((str(v) for k, v in (trailers or ()) if k == RETRY_SAFE_KEY), None)
    if flag is None:  # not answered by a proxy: safe only if no proxy ever saw it
        return never_connected(code, details)
    return flag == "1" and code in _RETRYABLE


def _decode(reply: CallReply) -> object:
    try:
        return json.loads(reply.payload)
    except (ValueError, RecursionError) as exc:  # bad JSON, or nested deeper than we decode
        raise CallError("INTERNAL", f"reply of {reply.instance_id} is not JSON: {exc}") from None


def _options(settings: ClientSettings) -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", settings.max_message_bytes)]


class Client:
    """Blocking client; thread-safe; ``with Client([...]) as c: c.call(...)``."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout_s: float | None = None,
        retry_budget: RetryBudget | None = None,
        settings: ClientSettings | None = None,
        rng: random.Random | None = None,
        tls: TlsFiles | None = None,
        mode: Mode = "proxy",
    ) -> None:
        """``tls``: the CA the proxies' certificate must be signed by; None: plaintext.
        ``mode="direct"``: call the workers' own servers, the proxies a directory and the
        fallback (``ha_serving/client/_direct.py``); under TLS it needs ``tls`` with a
        client certificate of the stack's CA (``InvalidSpec`` otherwise)."""
        s = settings or ClientSettings()
        if mode == "direct":
            check_tls(tls)

        def open_channel(address: str) -> tuple[grpc.Channel, Any]:
            channel = tls_channel(address, tls, _options(s))
            stub = channel.unary_unary(
                CALL_METHOD,
                request_serializer=CallRequest.SerializeToString,
                response_deserializer=CallReply.FromString,
            )
            return channel, stub

        self._core: _Core[grpc.Channel] = _Core(
            addresses,
            settings=s,
            timeout_s=timeout_s,
            retry_budget=retry_budget,
            rng=rng,
            open_channel=open_channel,
        )
        self._direct: DirectCore | None = None
        self._links: SyncLinks | None = None
        if mode == "direct":
            self._direct = DirectCore(s, rng=self._core.rng)
            self._links = SyncLinks(tls=tls, connect_timeout_s=s.direct_connect_timeout_s)

    def direct_stats(self) -> DirectStats | None:
        """Direct mode's counters (direct and proxied calls, fallbacks, ejections, route
        fetches); None in proxy mode."""
        return None if self._direct is None else self._direct.stats()

    def set_addresses(
        self,
        addresses: Sequence[str],
        *,
        tiers: Mapping[str, int] | None = None,
        weights: Mapping[str, int] | None = None,
    ) -> None:
        """Replace the endpoint list; ``tiers`` ranks them (lower = preferred) and
        ``weights`` shares traffic within a tier (default 100 each)."""
        for ep in self._core.replace(addresses, tiers, weights):
            ep.channel.close()

    def call(
        self,
        service: str,
        method: str,
        payload_obj: object = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> object:
        """Call with a JSON-able value; return the decoded JSON answer or raise CallError."""
        payload = json.dumps(payload_obj).encode()
        return _decode(self.call_raw(service, method, payload, timeout=timeout, metadata=metadata))

    def call_raw(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CallReply:
        core = self._core
        request = core.request(service, method, payload, metadata)
        deadline = core.deadline(timeout)
        if self._direct is not None:
            reply = self._call_direct(self._direct, request, deadline)
            if isinstance(reply, CallReply):
                return reply
            self._direct.count("proxied")
        return self._call_proxy(request, deadline)

    def _call_direct(
        self, direct: DirectCore, request: CallRequest, deadline: float
    ) -> CallReply | ViaProxy:
        assert self._links is not None  # noqa: S101 - made with the DirectCore
        links = self._links
        plan = direct.attempts(request.service, deadline)
        refreshed = False
        try:
            step = next(plan)
            while True:
                outcome: Outcome
                if isinstance(step, Refresh):
                    outcome, refreshed = self._fetch_routes(step), True
                else:
                    e = step.entry
                    call = partial(
                        links.call,
                        e.worker,
                        e.instance_id,
                        request.method,
                        request.payload,
                        step.timeout,
                        address=e.address,
                    )
                    outcome = outcome_of(call)
                step = plan.send(outcome)
        except StopIteration as done:
            result: CallReply | ViaProxy = done.value
            return result
        finally:
            plan.close()
            if refreshed:  # channels to workers the routes no longer list
                links.retain(direct.addresses())

    def _fetch_routes(self, step: Refresh) -> RoutesReply | None:
        ep = self._core.pick(step.timeout)
        if ep is None:
            return None
        try:
            fetch = ep.channel.unary_unary(
                ROUTES_METHOD,
                request_serializer=RoutesRequest.SerializeToString,
                response_deserializer=RoutesReply.FromString,
            )
            reply: RoutesReply = fetch(RoutesRequest(service=step.service), timeout=step.timeout)
        except grpc.RpcError:
            return None  # counted as a failed fetch; the routes held stay
        finally:
            if self._core.end(ep):
                ep.channel.close()
        return reply

    def _call_proxy(self, request: CallRequest, deadline: float) -> CallReply:
        core = self._core
        loop = core.attempts(deadline)
        step = next(loop)
        while True:
            outcome: CallReply | _Failure | None = None
            if isinstance(step, _Wait):
                core.has_endpoints.wait(step.seconds)
            elif isinstance(step, _Pause):
                time.sleep(step.seconds)
            else:
                ep = step.endpoint
                try:
                    outcome = ep.stub(request, timeout=step.timeout)
                except grpc.RpcError as err:
                    if not isinstance(err, grpc.Call):  # pragma: no cover - grpc gives one
                        raise
                    outcome = err
                finally:
                    if core.end(ep):
                        ep.channel.close()
            try:
                step = loop.send(outcome)
            except StopIteration as done:
                reply: CallReply = done.value
                return reply

    def close(self) -> None:
        self.set_addresses([])
        if self._links is not None:
            self._links.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same for asyncio (grpc.aio); use in one event loop."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout_s: float | None = None,
        retry_budget: RetryBudget | None = None,
        settings: ClientSettings | None = None,
        rng: random.Random | None = None,
        tls: TlsFiles | None = None,
        mode: Mode = "proxy",
    ) -> None:
        """As ``Client``'s."""
        s = settings or ClientSettings()
        if mode == "direct":
            check_tls(tls)

        def open_channel(address: str) -> tuple[grpc.aio.Channel, Any]:
            channel = aio_channel(address, tls, _options(s))
            stub = channel.unary_unary(
                CALL_METHOD,
                request_serializer=CallRequest.SerializeToString,
                response_deserializer=CallReply.FromString,
            )
            return channel, stub

        self._core: _Core[grpc.aio.Channel] = _Core(
            addresses,
            settings=s,
            timeout_s=timeout_s,
            retry_budget=retry_budget,
            rng=rng,
            open_channel=open_channel,
        )
        self._direct: DirectCore | None = None
        self._links: WorkerLinks | None = None
        if mode == "direct":
            self._direct = DirectCore(s, rng=self._core.rng)
            self._links = WorkerLinks(tls=tls, connect_timeout_s=s.direct_connect_timeout_s)

    def direct_stats(self) -> DirectStats | None:
        """As ``Client``'s."""
        return None if self._direct is None else self._direct.stats()

    async def set_addresses(
        self,
        addresses: Sequence[str],
        *,
        tiers: Mapping[str, int] | None = None,
        weights: Mapping[str, int] | None = None,
    ) -> None:
        for ep in self._core.replace(addresses, tiers, weights):
            await ep.channel.close()

    async def call(
        self,
        service: str,
        method: str,
        payload_obj: object = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> object:
        """Call with a JSON-able value; return the decoded JSON answer or raise CallError."""
        payload = json.dumps(payload_obj).encode()
        reply = await self.call_raw(service, method, payload, timeout=timeout, metadata=metadata)
        return _decode(reply)

    async def call_raw(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CallReply:
        core = self._core
        request = core.request(service, method, payload, metadata)
        deadline = core.deadline(timeout)
        if self._direct is not None:
            reply = await self._call_direct(self._direct, request, deadline)
            if isinstance(reply, CallReply):
                return reply
            self._direct.count("proxied")
        return await self._call_proxy(request, deadline)

    async def _call_direct(
        self, direct: DirectCore, request: CallRequest, deadline: float
    ) -> CallReply | ViaProxy:
        assert self._links is not None  # noqa: S101 - made with the DirectCore
        links = self._links
        plan = direct.attempts(request.service, deadline)
        refreshed = False
        try:
            step = next(plan)
            while True:
                outcome: Outcome
                if isinstance(step, Refresh):
                    outcome, refreshed = await self._fetch_routes(step), True
                else:
                    e = step.entry
                    try:
                        outcome = await links.call(
                            e.worker,
                            e.instance_id,
                            request.method,
                            request.payload,
                            step.timeout,
                            address=e.address,
                        )
                    except Exception as exc:  # judged by DirectCore, never swallowed
                        outcome = exc
                step = plan.send(outcome)
        except StopIteration as done:
            result: CallReply | ViaProxy = done.value
            return result
        finally:
            plan.close()
            if refreshed:  # channels to workers the routes no longer list
                links.retain(direct.addresses())

    async def _fetch_routes(self, step: Refresh) -> RoutesReply | None:
        ep = self._core.pick(step.timeout)
        if ep is None:
            return None
        try:
            fetch = ep.channel.unary_unary(
                ROUTES_METHOD,
                request_serializer=RoutesRequest.SerializeToString,
                response_deserializer=RoutesReply.FromString,
            )
            reply: RoutesReply = await fetch(
                RoutesRequest(service=step.service), timeout=step.timeout
            )
        except grpc.aio.AioRpcError:
            return None  # counted as a failed fetch; the routes held stay
        finally:
            if self._core.end(ep):
                await ep.channel.close()
        return reply

    async def _call_proxy(self, request: CallRequest, deadline: float) -> CallReply:
        core = self._core
        loop = core.attempts(deadline)
        step = next(loop)
        while True:
            outcome: CallReply | _Failure | None = None
            if isinstance(step, _Wait):
                await core.has_endpoints.wait_async(step.seconds)  # set from discovery's thread
            elif isinstance(step, _Pause):
                await asyncio.sleep(step.seconds)
            else:
                ep = step.endpoint
                try:
                    outcome = await ep.stub(request, timeout=step.timeout)
                except grpc.aio.AioRpcError as err:
                    outcome = err
                finally:
                    if core.end(ep):
                        await ep.channel.close()
            try:
                step = loop.send(outcome)
            except StopIteration as done:
                reply: CallReply = done.value
                return reply

    async def close(self) -> None:
        await self.set_addresses([])
        if self._links is not None:
            await self._links.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def discovered_client(
    service: str,
    keepers: Sequence[str],
    *,
    token: str | None,
    cache_dir: Path | None = None,
    cluster: str | None = None,
    zone: str | None = None,
    settings: ClientSettings | None = None,
    tls: TlsFiles | None = None,
    mode: Mode = "proxy",
) -> tuple[Client, Discovery]:
    """A Client whose endpoints follow the Keepers' discovery for ``service``, nearest
    (``cluster``, then ``zone``) first. Stop the Discovery and close the Client after use.
    ``tls``: the stack's CA, which signs the Keepers' and the proxies' certificates.
    ``mode="direct"``: calls go to the workers, the discovered proxies are the directory
    (see ``Client``)."""
    client = Client([], settings=settings, tls=tls, mode=mode)

    def adopt(endpoints: list[EndpointInfo]) -> None:
        tiers = rank(endpoints, cluster=cluster, zone=zone)
        weights = {e.address: e.weight for e in endpoints}
        client.set_addresses([e.address for e in endpoints], tiers=tiers, weights=weights)

    discovery = Discovery(
        service, keepers, token=token, on_change=adopt, cache_dir=cache_dir, tls=tls
    )
    return client, discovery.start()

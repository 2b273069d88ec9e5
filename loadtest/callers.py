"""Paced SDK callers: the constant client load of the recovery soak and the chaos drills.

``Load`` runs ``threads`` callers over every proxy of a service (endpoints from the
Keepers' discovery, as a real client gets them), each paced to its share of a fixed
offered ``rate``, and records every call: when it started, how long it took, its outcome
(``OK`` or the gRPC status name) and the cluster that answered. Each call carries an id
of its own (``payload(call_id)`` builds the request), so a service that records the ids
it ran shows whether a call ran twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import infra
from ha_serving._errors import CallError
from ha_serving.client import Client, Discovery, EndpointInfo, discovered_client
from ha_serving.util.tls import TlsFiles

Payload = Callable[[str], bytes]
"""Builds a call's request body from its id."""


def routed_tls(topo: infra.Topology) -> TlsFiles | None:
    """What callers that dial fault links instead of the proxies verify the proxies with:
    the stack's CA, under a node's address rather than the link's (which no certificate
    names). Every proxy shows the stack's one proxy certificate, valid for every node
    address, so the proxy behind any link passes; a server the CA did not sign does not.
    None when the stack speaks plaintext."""
    tls = topo.client_tls()
    if tls is None:
        return None
    return replace(tls, server_name=topo.clusters[0].head.address)


def constant(body: bytes) -> Payload:
    """The same body for every call (the id is not sent)."""
    return lambda _call_id: body


@dataclass(frozen=True)
class Call:
    """One call as its caller saw it."""

    caller: int
    call_id: str
    start: float
    """Wall clock (epoch seconds) when the call was issued."""
    done: float
    """Monotonic clock when it ended (reply or error)."""
    latency_ms: float
    outcome: str
    """``OK`` or the gRPC status name of the failure."""
    cluster: str = ""
    """The cluster that answered; empty for a failure."""

    @property
    def ok(self) -> bool:
        return self.outcome == "OK"

    @property
    def answer(self) -> str:
        """The answering cluster (``?`` if the reply named none), or the failure's code."""
        return (self.cluster or "?") if self.ok else self.outcome


@dataclass
class Load:
    """SDK callers over every proxy of ``service``, each call recorded as a ``Call``."""

    topo: infra.Topology
    service: str
    method: str = "echo"
    payload: Payload = field(default_factory=lambda: constant(b'"x"'))
    threads: int = 8
    rate: float = 200.0
    """Calls per second offered in all (paced per caller): a fixed rate, as a service's
    clients offer, so a drill measures recovery, not how much this machine can push."""
    deadline_s: float = 2.0
    route: Callable[[EndpointInfo], str] | None = None
    """Maps each endpoint discovery reports to the address the callers dial instead (a
    chaos drill's fault link in front of it); None: the endpoints' own addresses."""
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        keepers = [k.address for k in self.topo.keepers]
        route = self.route
        if route is None:
            self.client, self.discovery = discovered_client(
                self.service,
                keepers,
                token=self.topo.discovery_token(),
                tls=self.topo.client_tls(),
            )
        else:
            client = self.client = Client([], tls=routed_tls(self.topo))

            def adopt(endpoints: list[EndpointInfo]) -> None:
                dialed = [route(e) for e in endpoints]
                weights = {a: e.weight for a, e in zip(dialed, endpoints, strict=True)}
                client.set_addresses(dialed, weights=weights)

            self.discovery = Discovery(
                self.service,
                keepers,
                token=self.topo.discovery_token(),
                on_change=adopt,
                tls=self.topo.client_tls(),
            ).start()
        self._nonce = uuid.uuid4().hex[:8]
        self._workers = [
            threading.Thread(target=self._run, args=(i,), daemon=True, name=f"caller-{i}")
            for i in range(self.threads)
        ]

    def _run(self, caller: int) -> None:
        interval = self.threads / self.rate
        due = time.monotonic()
        n = 0
        while not self.stop.is_set():
            due += interval
            if (ahead := due - time.monotonic()) > 0:
                self.stop.wait(ahead)  # pacing to the offered rate
            else:
                due = time.monotonic()  # behind (a slow call): no burst to catch up
            n += 1
            call_id = f"{self._nonce}-{caller}-{n}"
            body = self.payload(call_id)
            start, t0 = time.time(), time.monotonic()
            try:
                reply = self.client.call_raw(
                    self.service, self.method, body, timeout=self.deadline_s
                )
                outcome, cluster = "OK", reply.cluster
            except CallError as exc:
                outcome, cluster = exc.code, ""
            done = time.monotonic()
            call = Call(caller, call_id, start, done, (done - t0) * 1000, outcome, cluster)
            with self.lock:
                self.calls.append(call)

    def start(self) -> None:
        for t in self._workers:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(10)
        self.discovery.stop()
        self.client.close()

    def since(self, t0: float) -> list[Call]:
        """Calls that ended at or after ``t0`` (monotonic clock)."""
        with self.lock:
            return [c for c in self.calls if c.done >= t0]

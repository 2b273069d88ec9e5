"""Locust users calling a service through the ha_serving client SDK (gRPC).

Run by ``loadtest/run.py`` (headless); configured through the environment:
``HA_LOADTEST_SERVICE``, ``HA_LOADTEST_METHOD``, ``HA_LOADTEST_PAYLOAD`` (the call's JSON
argument), ``HA_LOADTEST_KEEPERS`` (comma-separated), ``HA_LOADTEST_DEADLINE_S``,
``HA_LOADTEST_RAW`` (where raw records go, one JSON line per request, flushed every
second). ``HA_LOADTEST_USER_RATE`` (calls/s) makes each user a Poisson source of that
rate instead of a call every 20 ms after the last, so the offered rate follows the user
count (the autoscaling scenarios' shapes, ``autoscale_locustfile.py``);
``HA_LOADTEST_SHARED_CLIENT=1`` gives all users one ``Client``, so users that a shape
starts and stops every few seconds reuse its channels instead of connecting anew. The
Keepers' token (the stack's discovery credential) and the stack's CA, when it speaks TLS,
come from the settings tree (``Settings.from_env``: ``HA_SERVING_KEEPER_TOKEN``,
``HA_SERVING_TLS_CA``), the one reader of the stack's variables.

gevent is patched by Locust before this module runs; ``init_gevent()`` makes gRPC
cooperate with it and must run before any gRPC object exists. Each user has its own
``Client`` (its own channels) unless shared; one shared Discovery (a Watch stream to the
Keepers) feeds every user's endpoint list. Every call has a deadline.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402 - after init_gevent on purpose
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

import gevent  # noqa: E402
from locust import User, events, task  # noqa: E402

from ha_serving._errors import CallError  # noqa: E402
from ha_serving._settings import Settings  # noqa: E402
from ha_serving.client import Client, Discovery, EndpointInfo  # noqa: E402
from ha_serving.util.tls import TlsFiles, files  # noqa: E402

SERVICE = os.environ.get("HA_LOADTEST_SERVICE", "loadtest-echo")
METHOD = os.environ.get("HA_LOADTEST_METHOD", "echo")
DEADLINE_S = float(os.environ.get("HA_LOADTEST_DEADLINE_S", "2.0"))
PAYLOAD = os.environ.get("HA_LOADTEST_PAYLOAD", '"ping"').encode()
USER_RATE = float(os.environ.get("HA_LOADTEST_USER_RATE") or 0)
"""Calls per second per user as a Poisson process; 0: a call 20 ms after the last."""
SHARED_CLIENT = os.environ.get("HA_LOADTEST_SHARED_CLIENT") == "1"


class _Shared:
    """Process-wide state of this Locust run (one process, many greenlets)."""

    addresses: ClassVar[list[str]] = []
    generation = 0
    discovery: Discovery | None = None
    pending: ClassVar[list[str]] = []
    raw: Path | None = None
    tls: TlsFiles | None = None
    """The stack's CA when it speaks TLS (HA_SERVING_TLS_CA)."""
    client: Client | None = None
    """The users' one Client with HA_LOADTEST_SHARED_CLIENT=1."""


def _adopt(endpoints: list[EndpointInfo]) -> None:
    _Shared.addresses = [e.address for e in endpoints]
    _Shared.generation += 1


@events.test_start.add_listener
def _start(**_: Any) -> None:
    keepers = [k for k in os.environ.get("HA_LOADTEST_KEEPERS", "").split(",") if k]
    settings = Settings.from_env()
    _Shared.tls = files(settings.tls.ca_file)
    _Shared.discovery = Discovery(
        SERVICE, keepers, token=settings.keeper.token, on_change=_adopt, tls=_Shared.tls
    ).start()
    raw = os.environ.get("HA_LOADTEST_RAW")
    if raw:
        _Shared.raw = Path(raw)
        _Shared.raw.parent.mkdir(parents=True, exist_ok=True)
        gevent.spawn(_flusher)


def _flush() -> None:
    if _Shared.raw is None or not _Shared.pending:
        return
    lines, _Shared.pending = _Shared.pending, []
    with _Shared.raw.open("a") as f:
        f.write("\n".join(lines) + "\n")


def _flusher() -> None:
    while True:
        gevent.sleep(1.0)
        _flush()


@events.quitting.add_listener
def _quit(**_: Any) -> None:
    _flush()
    if _Shared.client is not None:
        _Shared.client.close()
    if _Shared.discovery is not None:
        _Shared.discovery.stop()


class ServingUser(User):
    def wait_time(self) -> float:
        """A steady stream per user (the runner or the shape sets the user count): a call
        20 ms after the last, or with ``USER_RATE`` the next start of a Poisson process
        of that rate (a user behind its schedule catches up by one gap at most)."""
        if USER_RATE <= 0:
            return 0.02
        now = time.monotonic()
        gap = random.expovariate(USER_RATE)
        self._due = max(self._due, now - 1 / USER_RATE) + gap
        return max(0.0, self._due - now)

    def on_start(self) -> None:
        while not _Shared.addresses:
            gevent.sleep(0.05)
        if SHARED_CLIENT:
            if _Shared.client is None:
                _Shared.client = Client(_Shared.addresses, timeout_s=DEADLINE_S, tls=_Shared.tls)
            self.client = _Shared.client
        else:
            self.client = Client(_Shared.addresses, timeout_s=DEADLINE_S, tls=_Shared.tls)
        self._generation = _Shared.generation
        self._due = time.monotonic()
        if USER_RATE > 0:  # a user started now does not call in step with the others
            gevent.sleep(random.expovariate(USER_RATE))
            self._due = time.monotonic()

    def on_stop(self) -> None:
        if not SHARED_CLIENT:
            self.client.close()

    @task
    def call(self) -> None:
        if self._generation != _Shared.generation:
            self.client.set_addresses(_Shared.addresses)
            self._generation = _Shared.generation
        started = time.time()
        t0 = time.perf_counter()
        cluster = ""
        error: Exception | None = None
        try:
            reply = self.client.call_raw(SERVICE, METHOD, PAYLOAD, timeout=DEADLINE_S)
            outcome, cluster, size = "OK", reply.cluster, len(reply.payload)
        except CallError as exc:
            outcome, size, error = exc.code, 0, exc
        latency_ms = (time.perf_counter() - t0) * 1000
        _Shared.pending.append(
            json.dumps([round(started, 4), round(latency_ms, 3), outcome, cluster])
        )
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"{SERVICE}.{METHOD}",
            response_time=latency_ms,
            response_length=size,
            exception=error,
            context={},
        )

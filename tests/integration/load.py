"""Constant client load for integration tests: every request ends in a recorded outcome.

``Load`` runs a few threads calling a service through the client SDK until stopped.
Endpoints are re-read from the store's discovery table twice a second, as a client of
the (later) Keeper discovery would. Each request is recorded as OK or its gRPC status
name, so a test can assert that nothing was lost: issued == recorded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ha_serving._errors import CallError
from ha_serving.client import Client
from ha_serving.store import Store
from ha_serving.util.tls import TlsFiles


@dataclass
class Outcomes:
    issued: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    replies: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def recorded(self) -> int:
        return sum(self.codes.values())

    @property
    def failures(self) -> int:
        return self.recorded - self.codes["OK"]


class Load:
    def __init__(
        self,
        store: Store,
        service: str,
        *,
        method: str = "echo",
        payload: object = "ping",
        threads: int = 4,
        timeout_s: float = 5.0,
        keep_replies: int = 50,
        tls: TlsFiles | None = None,
    ) -> None:
        self.store, self.service, self.method, self.payload = store, service, method, payload
        self.timeout_s = timeout_s
        self.keep_replies = keep_replies
        self.out = Outcomes()
        self._stop = threading.Event()
        self._client = Client(self._addresses(), timeout_s=timeout_s, tls=tls)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._refresher = threading.Thread(target=self._refresh, daemon=True)

    def _addresses(self) -> list[str]:
        return [e.address for e in self.store.list_endpoints(self.service)]

    def _refresh(self) -> None:
        while not self._stop.wait(0.5):
            addresses = self._addresses()
            if addresses:  # keep the last list if discovery answers empty
                self._client.set_addresses(addresses)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.out.lock:
                self.out.issued += 1
            try:
                reply = self._client.call(
                    self.service, self.method, self.payload, timeout=self.timeout_s
                )
                code = "OK"
            except CallError as exc:
                reply, code = None, exc.code
            with self.out.lock:
                self.out.codes[code] += 1
                if reply is not None:
                    self.out.replies.append(reply)
                    del self.out.replies[: -self.keep_replies]

    def __enter__(self) -> Load:
        self._refresher.start()
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, requests: int, timeout_s: float = 30.0) -> None:
        """Block until ``requests`` more outcomes are recorded (load really flows)."""
        target = self.out.recorded + requests
        deadline = time.monotonic() + timeout_s
        while self.out.recorded < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load stalled at {self.out.recorded}: {self.out.codes}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)
        self._refresher.join(timeout=5)
        self._client.close()

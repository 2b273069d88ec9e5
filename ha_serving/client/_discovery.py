"""Client-side discovery: a service's endpoints from the Keepers, cached so that
clients keep working while every Keeper or the DB is down.

A background thread holds a ``Watch`` stream to one Keeper and fails over to the next
when it breaks. Every non-empty list is kept in memory and written to a small JSON file
(atomically), which seeds the next start. An empty answer is ignored while the cache is
non-empty: "no endpoints" from a Keeper that lost its DB must not empty the clients.
Endpoints are ranked nearest first (same cluster, then same zone, then the rest); the
client uses the nearest healthy tier, spills over by health, and shares traffic within a
tier by the clusters' traffic weights (from the service's placement).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.util.tls import TlsFiles
from ha_serving.util.tls import channel as tls_channel

log = logging.getLogger("ha_serving.client.discovery")


@dataclass(frozen=True)
class EndpointInfo:
    address: str
    cluster: str
    zone: str = ""
    weight: int = 100
    """The cluster's traffic weight (placement): its share when clients spill over."""


def rank(
    endpoints: Sequence[EndpointInfo], *, cluster: str | None, zone: str | None
) -> dict[str, int]:
    """Tier per address: 0 same cluster, 1 same zone, 2 anything else."""
    tiers = {}
    for e in endpoints:
        if cluster and e.cluster == cluster:
            tiers[e.address] = 0
        elif zone and e.zone == zone:
            tiers[e.address] = 1
        else:
            tiers[e.address] = 2
    return tiers


class Discovery:
    def __init__(
        self,
        service: str,
        keepers: Sequence[str],
        *,
        token: str | None,
        on_change: Callable[[list[EndpointInfo]], None],
        cache_dir: Path | None = None,
        retry_s: float = 0.5,
        silence_s: float = 6.0,
        tls: TlsFiles | None = None,
    ) -> None:
        if not keepers:
            raise ValueError("discovery needs at least one Keeper address")
        self.service = service
        self.keepers = list(keepers)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._tls = tls
        """The CA the Keepers' certificate must be signed by; None: plaintext."""
        self._on_change = on_change
        self._cache = cache_dir / f"{service}.endpoints.json" if cache_dir else None
        self._retry_s = retry_s
        self._silence_s = silence_s
        """A Watch stream silent this long is left for the next Keeper (Keepers resend
        the list every ``watch_keepalive_s``): a paused or partitioned Keeper keeps its
        TCP connection open, so only silence shows it."""
        self._stop = threading.Event()
        self._current: list[EndpointInfo] = self._load_cache()
        self._call: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"discovery-{service}", daemon=True)
        self.updates = 0
        self.ignored_empty = 0

    @property
    def endpoints(self) -> list[EndpointInfo]:
        return list(self._current)

    def start(self) -> Discovery:
        if self._current:
            self._on_change(self.endpoints)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            keeper = self.keepers[index % len(self.keepers)]
            try:
                self._watch(keeper)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = exc.code() if hasattr(exc, "code") else None
                log.info("watch on %s ended (%s); trying the next Keeper", keeper, code)
            index += 1
            self._stop.wait(self._retry_s)

    def _watch(self, keeper: str) -> None:
        with tls_channel(keeper, self._tls) as channel:
            stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Watch(
                keeper_pb2.ResolveRequest(service=self.service), metadata=self._metadata
            )
            with self._lock:
                self._call = call
            heard = [time.monotonic()]
            ended = threading.Event()

            def watchdog() -> None:
                while not ended.wait(min(0.5, self._silence_s / 4)):
                    if time.monotonic() - heard[0] > self._silence_s:
                        log.info("watch on %s silent for %.0fs: next", keeper, self._silence_s)
                        call.cancel()
                        return

            threading.Thread(target=watchdog, name=f"watchdog-{self.service}", daemon=True).start()
            try:
                self._receive(call, heard)
            finally:
                ended.set()

    def _receive(self, call: Any, heard: list[float]) -> None:
        for message in call:
            heard[0] = time.monotonic()
            self._offer(
                [
                    EndpointInfo(
                        e.address,
                        e.cluster,
                        e.labels.get("zone", ""),
                        _int(e.labels.get("weight"), 100),
                    )
                    for e in message.endpoints
                ]
            )
            if self._stop.is_set():
                return

    def _offer(self, endpoints: list[EndpointInfo]) -> None:
        if not endpoints and self._current:
            self.ignored_empty += 1
            return
        if endpoints == self._current:
            return
        self._current = endpoints
        self.updates += 1
        self._save_cache()
        self._on_change(self.endpoints)

    def _load_cache(self) -> list[EndpointInfo]:
        if self._cache is None or not self._cache.exists():
            return []
        try:
            data = json.loads(self._cache.read_text())
            return [EndpointInfo(**e) for e in data["endpoints"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable discovery cache %s: %s", self._cache, exc)
            return []

    def _save_cache(self) -> None:
        if self._cache is None:
            return
        self._cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._cache.with_suffix(".tmp")
        payload = {"service": self.service, "endpoints": [e.__dict__ for e in self._current]}
        tmp.write_text(json.dumps(payload))
        tmp.replace(self._cache)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default

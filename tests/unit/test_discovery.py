"""Discovery through a real Keeper gRPC server (in-process, SQLite store): Resolve,
Watch, client-side caching on disk, Keeper failover, nearest-first ranking, auth."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ha_serving.client import Discovery, EndpointInfo
from ha_serving.client._discovery import rank
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import Store
from tests.unit.fixtures.control import TOKEN, free_address, running_keeper


@pytest.fixture
def keeper(store: Store) -> Iterator[str]:
    with running_keeper(store, free_address("127.0.102.1")) as k:
        yield k.address


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


class Seen:
    def __init__(self) -> None:
        self.lists: list[list[EndpointInfo]] = []

    def __call__(self, endpoints: list[EndpointInfo]) -> None:
        self.lists.append(endpoints)

    @property
    def last(self) -> list[str]:
        return [e.address for e in self.lists[-1]] if self.lists else []


def test_resolve_lists_live_endpoints_and_requires_the_token(store: Store, keeper: str) -> None:
    """Resolve answers the unexpired endpoints; without the token: UNAUTHENTICATED."""
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {"zone": "z1"}, ttl_s=30)
    with grpc.insecure_channel(keeper) as channel:
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Resolve(
            keeper_pb2.ResolveRequest(service="echo"),
            metadata=[("authorization", f"Bearer {TOKEN}")],
        )
        assert [(e.address, e.cluster, e.labels["zone"]) for e in reply.endpoints] == [
            ("127.0.1.2:5000", "a", "z1")
        ]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Resolve(keeper_pb2.ResolveRequest(service="echo"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_watch_pushes_changes_and_an_empty_answer_never_empties_the_cache(
    store: Store, keeper: str, tmp_path: Path
) -> None:
    """New endpoints arrive through the stream; when all lapse, the client keeps its list."""
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {}, ttl_s=30)
    seen = Seen()
    d = Discovery("echo", [keeper], token=TOKEN, on_change=seen, cache_dir=tmp_path).start()
    try:
        _wait("first list", lambda: seen.last == ["127.0.1.2:5000"])
        store.upsert_endpoint("echo", "b", "127.0.2.2:5000", {}, ttl_s=30)
        _wait("second endpoint", lambda: len(seen.last) == 2)
        store.remove_endpoints("echo", "a")
        store.remove_endpoints("echo", "b")
        _wait("empty answer ignored", lambda: d.ignored_empty >= 1)
        assert seen.last == ["127.0.1.2:5000", "127.0.2.2:5000"]
    finally:
        d.stop()


def test_disk_cache_serves_a_restart_while_no_keeper_answers(
    store: Store, keeper: str, tmp_path: Path
) -> None:
    """A client restarted while every Keeper is down starts from its on-disk list."""
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {}, ttl_s=30)
    seen = Seen()
    d = Discovery("echo", [keeper], token=TOKEN, on_change=seen, cache_dir=tmp_path).start()
    _wait("first list", lambda: bool(seen.lists))
    d.stop()
    later = Seen()
    dead = ["127.0.102.9:9450"]
    d2 = Discovery("echo", dead, token=TOKEN, on_change=later, cache_dir=tmp_path).start()
    try:
        assert later.last == ["127.0.1.2:5000"]
    finally:
        d2.stop()


def test_watch_fails_over_to_the_next_keeper(store: Store, keeper: str) -> None:
    """The first Keeper address answers nothing: the stream moves to the next one."""
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {}, ttl_s=30)
    seen = Seen()
    keepers = ["127.0.102.9:9450", keeper]
    d = Discovery("echo", keepers, token=TOKEN, on_change=seen, retry_s=0.05).start()
    try:
        _wait("list via the second keeper", lambda: seen.last == ["127.0.1.2:5000"])
    finally:
        d.stop()


def test_nearest_first_ranking() -> None:
    """Same cluster ranks 0, same zone 1, the rest 2."""
    eps = [
        EndpointInfo("127.0.1.2:1", "a", "z1"),
        EndpointInfo("127.0.2.2:1", "b", "z1"),
        EndpointInfo("127.0.3.2:1", "c", "z2"),
    ]
    assert rank(eps, cluster="a", zone="z1") == {
        "127.0.1.2:1": 0,
        "127.0.2.2:1": 1,
        "127.0.3.2:1": 2,
    }


def test_client_prefers_the_nearest_healthy_tier_and_spills_over() -> None:
    """Calls go to tier 0 while it is healthy; when it is marked down, to tier 1."""
    from ha_serving.client import Client

    client = Client(["127.0.102.1:1", "127.0.102.2:1", "127.0.102.3:1"])
    try:
        tiers = {"127.0.102.1:1": 0, "127.0.102.2:1": 1, "127.0.102.3:1": 1}
        client.set_addresses(list(tiers), tiers=tiers)
        core = client._core
        deadline = core.deadline(5)
        picks = set()
        for _ in range(20):
            ep, _ = core.begin(set(), deadline, 1)
            core.end(ep)
            picks.add(ep.address)
        assert picks == {"127.0.102.1:1"}
        core.endpoints["127.0.102.1:1"].down_until = core.clock() + 60
        spill = set()
        for _ in range(40):
            ep, _ = core.begin(set(), deadline, 1)
            core.end(ep)
            spill.add(ep.address)
        assert spill == {"127.0.102.2:1", "127.0.102.3:1"}
    finally:
        client.close()


class SilentKeeper(keeper_pb2_grpc.KeeperServicer):
    """Answers a Watch once, then says nothing with the stream left open: what a paused
    (SIGSTOPed) or partitioned Keeper looks like to a client."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Watch(self, request: object, context: object) -> Iterator[keeper_pb2.Endpoints]:  # noqa: N802, ARG002 - gRPC's names
        yield keeper_pb2.Endpoints(
            service="echo", endpoints=[keeper_pb2.Endpoint(address="127.0.9.9:1", cluster="z")]
        )
        self.release.wait(30)


def test_a_silent_keeper_is_left_for_the_next_one(store: Store, keeper: str) -> None:
    """The first Keeper's Watch goes silent with its connection open; after silence_s
    the client moves to the next Keeper and gets the live list from it."""
    from concurrent import futures

    silent = SilentKeeper()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    keeper_pb2_grpc.add_KeeperServicer_to_server(silent, server)  # type: ignore[no-untyped-call]
    silent_address = free_address("127.0.102.7")
    server.add_insecure_port(silent_address)
    server.start()
    try:
        store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {}, ttl_s=30)
        seen = Seen()
        d = Discovery(
            "echo", [silent_address, keeper], token=TOKEN, on_change=seen, silence_s=1.0
        ).start()
        try:
            _wait("the silent Keeper's one answer", lambda: seen.last == ["127.0.9.9:1"])
            started = time.monotonic()
            _wait("the next Keeper's list", lambda: seen.last == ["127.0.1.2:5000"])
            assert 0.9 < time.monotonic() - started < 5
        finally:
            d.stop()
    finally:
        silent.release.set()
        server.stop(0)


def test_traffic_weights_share_a_tier_and_zero_weight_is_a_last_resort() -> None:
    """Within one tier, picks follow the clusters' weights (3:1); a weight-0 endpoint is
    used only when no weighted one is healthy."""
    import random

    from ha_serving.client import Client

    addresses = ["127.0.102.1:1", "127.0.102.2:1", "127.0.102.3:1"]
    client = Client(addresses, rng=random.Random(7))  # noqa: S311 - a seeded test RNG
    try:
        weights = {addresses[0]: 300, addresses[1]: 100, addresses[2]: 0}
        client.set_addresses(addresses, weights=weights)
        core = client._core
        deadline = core.deadline(5)
        counts = dict.fromkeys(addresses, 0)
        for _ in range(4000):
            ep, _ = core.begin(set(), deadline, 1)
            core.end(ep)
            counts[ep.address] += 1
        assert counts[addresses[2]] == 0
        assert 2.6 < counts[addresses[0]] / counts[addresses[1]] < 3.4
        for a in addresses[:2]:
            core.endpoints[a].down_until = core.clock() + 60
        ep, _ = core.begin(set(), deadline, 1)
        assert ep.address == addresses[2]
    finally:
        client.close()


def test_a_drained_nearest_cluster_sends_its_clients_to_the_next_tier() -> None:
    """The client's own cluster at weight 0 (drained before it is rolled) is skipped for
    the next tier, and used again only if nothing weighted is healthy."""
    import random

    from ha_serving.client import Client

    near, far = "127.0.102.1:1", "127.0.102.2:1"
    client = Client([near, far], rng=random.Random(3))  # noqa: S311 - a seeded test RNG
    try:
        client.set_addresses([near, far], tiers={near: 0, far: 1}, weights={near: 0, far: 100})
        core = client._core
        deadline = core.deadline(5)
        picks = set()
        for _ in range(200):
            ep, _ = core.begin(set(), deadline, 1)
            core.end(ep)
            picks.add(ep.address)
        assert picks == {far}
        core.endpoints[far].down_until = core.clock() + 60
        ep, _ = core.begin(set(), deadline, 1)
        assert ep.address == near
    finally:
        client.close()


def test_discovery_reads_the_weight_label(store: Store, keeper: str) -> None:
    """An endpoint's ``weight`` label (set by its AppMaster from the placement) arrives."""
    store.upsert_endpoint("echo", "a", "127.0.1.2:5000", {"weight": "25"}, ttl_s=30)
    seen = Seen()
    d = Discovery("echo", [keeper], token=TOKEN, on_change=seen).start()
    try:
        _wait("weighted list", lambda: bool(seen.lists))
        assert seen.lists[-1][0].weight == 25
    finally:
        d.stop()

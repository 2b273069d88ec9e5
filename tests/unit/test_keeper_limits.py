"""The Keeper's gRPC limits and paged Operations, on a real in-process KeeperServer."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ha_serving._settings import MAX_PACKAGE_BYTES, KeeperSettings
from ha_serving.backend import make_package
from ha_serving.cli._common import follow_op
from ha_serving.keeper import KeeperClient, KeeperRefused, KeeperServer
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import ClusterRecord, OperationRecord, Store
from ha_serving.util.clock import FakeClock


class KeeperThread:
    """A KeeperServer on its own event loop in a background thread, on a free port."""

    def __init__(self, store: Store, settings: KeeperSettings) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{probe.getsockname()[1]}"
        self.server = KeeperServer(store, "k-test", self.address, settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store.connect(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    try:
        yield s
    finally:
        s.close()


def _keeper(store: Store, **settings: Any) -> KeeperThread:
    return KeeperThread(store, KeeperSettings(lease_ttl_s=3.0, insecure=True, **settings))


def test_the_message_limit_is_sized_from_the_package_limit() -> None:
    limit = KeeperSettings().max_message_bytes
    assert limit >= MAX_PACKAGE_BYTES + 8 * 1024 * 1024


def test_a_package_over_grpcs_default_4_mib_is_deployed(store: Store, tmp_path: Path) -> None:
    """Before: the server kept gRPC's 4 MiB receive limit, so a Deploy of any package
    over it failed with RESOURCE_EXHAUSTED although packages may be 50 MiB."""
    store.register_cluster(ClusterRecord("a", "127.0.1.1:1", None, "z1"))
    code = tmp_path / "code"
    code.mkdir()
    (code / "echo.py").write_text("class Echo: ...\n")
    (code / "weights.bin").write_bytes(os.urandom(6 * 1024 * 1024))  # does not compress
    package = make_package(code).data
    assert len(package) > 6 * 1024 * 1024
    spec = {"name": "echo", "version": "v1", "code": {"dir": "x", "import_path": "echo:Echo"}}
    keeper = _keeper(store)
    try:
        client = KeeperClient([keeper.address], token=None, timeout_s=20)
        op_id = client.deploy(json.dumps(spec), package, kind="deploy")
    finally:
        keeper.stop()
    digest = store.get_operation(op_id).plan["package"]
    assert store.get_package(digest) == package


def test_calls_beyond_max_concurrent_rpcs_are_refused(store: Store) -> None:
    """Before: no bound, so every stream and call a Keeper was sent it held at once."""
    keeper = _keeper(store, max_concurrent_rpcs=1, watch_period_s=0.05)
    try:
        with grpc.insecure_channel(keeper.address) as channel:
            stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
            watch = stub.Watch(keeper_pb2.ResolveRequest(service="echo"))
            next(watch)  # the stream is open and holds the one slot
            with pytest.raises(grpc.RpcError) as refused:
                stub.Status(keeper_pb2.StatusRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            watch.cancel()
    finally:
        keeper.stop()


def _ops(store: Store, clock: FakeClock, n: int, service: str = "echo") -> list[str]:
    ids = []
    for i in range(n):
        op_id = f"{service}-{i:02d}"
        store.create_operation(OperationRecord(op_id, service, "deploy", {"clusters": []}))
        clock.advance(1)
        ids.append(op_id)
    return ids


def test_operations_come_a_page_at_a_time(store: Store, clock: FakeClock) -> None:
    """Before: every call returned the whole history."""
    ids = _ops(store, clock, 7) + _ops(store, clock, 2, service="other")
    keeper = _keeper(store, operations_page_size=3)
    try:
        with grpc.insecure_channel(keeper.address) as channel:
            stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
            first = stub.Operations(keeper_pb2.OperationsRequest(service="echo"), timeout=5)
            assert [o.op_id for o in first.operations] == ids[:3]
            assert first.next_page_token
            asked = keeper_pb2.OperationsRequest(
                service="echo", limit=2, page_token=first.next_page_token
            )
            second = stub.Operations(asked, timeout=5)
            assert [o.op_id for o in second.operations] == ids[3:5]
            # an old client's request (ServiceRequest) reads as the first page
            raw = keeper_pb2.ServiceRequest(service="echo").SerializeToString()
            old = keeper_pb2.OperationsRequest.FromString(raw)
            assert [o.op_id for o in stub.Operations(old).operations] == ids[:3]
        client = KeeperClient([keeper.address], token=None)
        assert [o["op_id"] for o in client.operations("echo")] == ids[:7]
        assert [o["op_id"] for o in client.operations()] == ids
        one = client.operation("echo-05")
        assert one is not None
        assert (one["op_id"], one["status"]) == ("echo-05", "pending")
        assert client.operation("nope") is None
        with pytest.raises(KeeperRefused, match="INVALID_ARGUMENT: invalid page_token"):
            client._call("Operations", keeper_pb2.OperationsRequest(page_token="garbage"))  # noqa: S106
    finally:
        keeper.stop()


class _OneOpKeeper:
    """Answers ``operation(op_id)`` only: the whole history is not to be polled."""

    def __init__(self) -> None:
        self.polls = 0

    def operation(self, op_id: str) -> dict[str, Any]:
        self.polls += 1
        status = "running" if self.polls < 2 else "succeeded"
        plan = {"clusters": [{"name": "a"}]}
        return {"op_id": op_id, "status": status, "step": 1, "plan": plan, "error": ""}

    def operations(self, service: str = "") -> list[dict[str, Any]]:
        raise AssertionError(f"the whole history of {service!r} was polled")


def test_following_an_operation_polls_that_operation_alone() -> None:
    """Before: the CLI fetched every operation of the service twice a second."""
    keeper = _OneOpKeeper()
    follow_op(keeper, "echo", "deploy-1", timeout=10)  # type: ignore[arg-type]
    assert keeper.polls == 2

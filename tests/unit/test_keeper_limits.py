"""The Keeper's gRPC limits and paged Operations, on a real in-process KeeperServer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import pytest

from ha_serving._settings import MAX_PACKAGE_BYTES, KeeperSettings
from ha_serving.backend import make_package
from ha_serving.cli._common import follow_op
from ha_serving.keeper import KeeperClient, KeeperRefused
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import ClusterRecord, OperationRecord, Store
from ha_serving.util.clock import FakeClock
from tests.unit.fixtures.control import KeeperThread, running_keeper, sqlite_store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    with sqlite_store(tmp_path, clock=clock) as s:
        yield s


def _keeper(store: Store, **settings: Any) -> AbstractContextManager[KeeperThread]:
    """An insecure Keeper on a free port, with ``settings``."""
    return running_keeper(
        store, settings=KeeperSettings(lease_ttl_s=3.0, insecure=True, **settings)
    )


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
    with _keeper(store) as keeper:
        client = KeeperClient([keeper.address], token=None, timeout_s=20)
        op_id = client.deploy(json.dumps(spec), package, kind="deploy")
    digest = store.get_operation(op_id).plan["package"]
    assert store.get_package(digest) == package


def test_calls_beyond_max_concurrent_rpcs_are_refused(store: Store) -> None:
    """Before: no bound, so every stream and call a Keeper was sent it held at once."""
    with (
        _keeper(store, max_concurrent_rpcs=1, watch_period_s=0.05) as keeper,
        grpc.insecure_channel(keeper.address) as channel,
    ):
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        watch = stub.Watch(keeper_pb2.ResolveRequest(service="echo"))
        next(watch)  # the stream is open and holds the one slot
        with pytest.raises(grpc.RpcError) as refused:
            stub.Status(keeper_pb2.StatusRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watch.cancel()


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
    with _keeper(store, operations_page_size=3) as keeper:
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

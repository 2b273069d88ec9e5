"""Fuzzing the Keeper's control API with request messages built from random fields:
each RPC answers, or aborts with the status of the project's own error (a caller's
mistake: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION...), never with an
unexpected exception (INTERNAL/UNKNOWN) and always in one line."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, example, given, settings

from ha_serving._settings import KeeperSettings
from ha_serving.backend import make_package
from ha_serving.keeper import KeeperServer
from ha_serving.proto import keeper_pb2
from ha_serving.store import ClusterRecord, Store
from tests.unit.fixtures.control import sqlite_store
from tests.unit.strategies import dump, json_values, mutated_yaml, names, valid_specs

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = TypeVar("T")
KINDS = ["deploy", "config", "code", "scale", "canary", "blue_green"]


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


class FakeContext:
    """What a handler may call on its context: abort (which raises, as gRPC's does)."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)


class Keeper:
    """A KeeperServer's handlers on an event loop of their own thread (no network)."""

    def __init__(self, store: Store) -> None:
        settings = KeeperSettings(operations_page_size=5)
        self.server = KeeperServer(store, "k-fuzz", "127.0.0.1:1", settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def call(self, method: str, request: Any) -> Any:
        """The reply, or the Aborted; any other exception fails the test."""
        try:
            return self.run(getattr(self.server, method)(request, FakeContext()))
        except Aborted as exc:
            aborted = exc
        assert aborted.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), aborted
        assert "\n" not in aborted.details
        assert len(aborted.details) < 2000
        return aborted

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def keeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keeper]:
    folder = tmp_path_factory.mktemp("fuzz_keeper")
    clusters = [ClusterRecord(name, f"127.0.9.{len(name)}:1", None, "z1") for name in "ab"]
    with sqlite_store(folder, clusters=clusters) as store:
        keeper = Keeper(store)
        try:
            yield keeper
        finally:
            keeper.close()


PACKAGE = make_package(Path(__file__).parent / "fixtures" / "echo_v1").data

texts = st.text(max_size=80)


@st.composite
def spec_jsons(draw: st.DrawFn) -> str:
    """A valid spec's JSON, one with random fields mangled, or any text at all."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(texts)
    if choice == 1:
        return draw(mutated_yaml())  # YAML is mostly not JSON: a parse error
    spec: dict[str, Any] = draw(valid_specs())
    spec["placement"] = {"clusters": [{"name": "a"}]}
    if choice == 3:
        key = draw(st.sampled_from([*sorted(spec), "extra"]))
        spec[key] = draw(json_values)
    return json.dumps(spec)


options_jsons = st.one_of(
    st.just(""),
    texts,
    st.dictionaries(
        st.sampled_from(["drain", "steps", "pause_s", "canary_instances", "analysis", "x"]),
        json_values,
        max_size=3,
    ).map(json.dumps),
)

deploy_requests = st.builds(
    keeper_pb2.DeployRequest,
    spec_json=spec_jsons(),
    package=st.sampled_from([PACKAGE, b""]) | st.binary(max_size=64),
    op_id=st.just("") | texts,
    kind=st.sampled_from(KINDS) | texts,
    options_json=options_jsons,
)


@FUZZ
@given(deploy_requests)
@example(keeper_pb2.DeployRequest(spec_json="[" * 100_000, kind="deploy"))
@example(keeper_pb2.DeployRequest(spec_json='{"name": NaN}', kind="deploy"))
@example(keeper_pb2.DeployRequest(spec_json="{}", options_json="[" * 10_000, kind="canary"))
def test_deploy_answers_or_refuses_clearly(
    keeper: Keeper, request: keeper_pb2.DeployRequest
) -> None:
    reply = keeper.call("Deploy", request)
    event(f"deploy: {reply.code.name if isinstance(reply, Aborted) else 'accepted'}")
    assert request == keeper_pb2.DeployRequest.FromString(request.SerializeToString())
    if isinstance(reply, keeper_pb2.DeployReply):
        assert reply.op_id
        again = keeper.call("Operations", keeper_pb2.OperationsRequest(op_id=reply.op_id))
        assert [o.op_id for o in again.operations] == [reply.op_id]


@FUZZ
@given(
    st.builds(
        keeper_pb2.OperationsRequest,
        service=st.just("") | names | texts,
        op_id=st.just("") | texts,
        limit=st.integers(-(2**31), 2**31 - 1),
        page_token=st.just("") | texts | st.binary(max_size=40).map(lambda b: b.hex()),
    )
)
@example(keeper_pb2.OperationsRequest(page_token="MS4wIA=="))  # noqa: S106 - "1.0 ", no op_id
@example(keeper_pb2.OperationsRequest(page_token="aW5mIHg="))  # noqa: S106 - "inf x"
def test_operations_answers_or_refuses_clearly(
    keeper: Keeper, request: keeper_pb2.OperationsRequest
) -> None:
    reply = keeper.call("Operations", request)
    if isinstance(reply, keeper_pb2.OperationsReply):
        assert len(reply.operations) <= 5


@FUZZ
@given(
    st.one_of(
        st.builds(keeper_pb2.CommandRequest, op_id=texts, command=texts),
        st.builds(
            keeper_pb2.CommandRequest,
            op_id=texts,
            command=st.sampled_from(["promote", "pause", "resume", "abort"]),
        ),
    )
)
def test_command_answers_or_refuses_clearly(
    keeper: Keeper, request: keeper_pb2.CommandRequest
) -> None:
    keeper.call("Command", request)


@FUZZ
@given(
    st.one_of(
        st.builds(keeper_pb2.ServiceRequest, service=texts).map(lambda r: ("GetService", r)),
        st.builds(keeper_pb2.ResolveRequest, service=texts).map(lambda r: ("Resolve", r)),
        st.builds(keeper_pb2.StatusRequest).map(lambda r: ("Status", r)),
    )
)
def test_reads_answer_or_refuse_clearly(keeper: Keeper, call: tuple[str, Any]) -> None:
    keeper.call(*call)


def test_yaml_is_no_spec_json(keeper: Keeper) -> None:
    """A spec sent as YAML (a client's slip) is refused as not JSON."""
    reply = keeper.call("Deploy", keeper_pb2.DeployRequest(spec_json=dump({"name": "x"})))
    assert isinstance(reply, Aborted)
    assert reply.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not JSON" in reply.details

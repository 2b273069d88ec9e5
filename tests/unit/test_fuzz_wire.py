"""Fuzzing what crosses the data plane: routing-table records round-trip, and anything
else decodes to InvalidRecord; a call's payload, whatever its bytes, is answered with a
CallResult (INVALID_ARGUMENT before user code for bad JSON), never an exception."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, example, given, settings

from ha_serving._errors import CallError, InvalidRecord
from ha_serving._wire import CallResult, RoutingTable
from ha_serving.backend import InstanceHost
from ha_serving.client._client import _decode
from ha_serving.proto import serving_pb2
from tests.unit.fixtures.dataplane import ECHO, package
from tests.unit.strategies import json_values, routing_tables

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = TypeVar("T")


@FUZZ
@given(routing_tables())
def test_routing_tables_round_trip_through_their_json_record(table: RoutingTable) -> None:
    record = json.loads(json.dumps(table.to_record()))
    assert RoutingTable.from_record(record) == table


@st.composite
def mangled_records(draw: st.DrawFn) -> object:
    """A table's record with a field dropped or swapped for any JSON value, an entry
    mangled likewise, or no record at all."""
    if draw(st.integers(0, 5)) == 0:
        return draw(json_values)
    record: dict[str, Any] = draw(routing_tables()).to_record()
    entries: list[dict[str, Any]] = record["entries"]
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(entries)) if entries and draw(st.booleans()) else record
        key = draw(st.sampled_from([*sorted(target), "extra"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    if entries and record.get("entries") is entries and draw(st.booleans()):
        entries.append(dict(entries[0]))  # a repeated id
    return record


@FUZZ
@given(mangled_records())
@example({"service": "s", "version": True, "entries": []})
@example({"service": "s", "version": 1, "entries": [{"instance_id": "i"}]})
@example({"service": "s", "version": 1, "entries": "abc"})
@example({"service": "s", "version": 1, "entries": [], "candidate_weight": 101})
def test_any_other_record_is_invalid_record(record: Any) -> None:
    try:
        table = RoutingTable.from_record(record)
    except InvalidRecord as exc:
        message = str(exc)
    else:  # what it accepts is a table that round-trips
        assert RoutingTable.from_record(table.to_record()) == table
        return
    assert message.startswith("invalid routing table record: ")
    assert "\n" not in message


Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@contextmanager
def _echo_host() -> Iterator[tuple[InstanceHost, Runner]]:
    """An InstanceHost with the echo fixture, on an event loop of its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def start() -> InstanceHost:
        host = InstanceHost(call_threads=4, health_timeout_s=1.0)
        await host.add_instance("i1", package("echo_v1"), ECHO, "v1", None)
        return host

    host = run(start())
    try:
        yield host, run
    finally:
        run(host.close(grace_s=5))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


payloads = (
    st.binary(max_size=256)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 3000).map(_nested)
)


def test_any_payload_gets_a_call_result_never_an_exception() -> None:
    """Before: a payload nested ~1000 deep (or deeper) raised RecursionError out of the
    host (decoding it, or encoding the echo of it) instead of answering the call."""
    with _echo_host() as (host, run):

        @FUZZ
        @given(payloads)
        @example(_nested(100_000))
        @example(_nested(995))
        @example(b"NaN")
        @example(b"\xff\xfe")
        def check(payload: bytes) -> None:
            result = run(host.call("i1", "echo", payload))
            assert isinstance(result, CallResult)
            assert result.code in ("OK", "INVALID_ARGUMENT", "UNKNOWN"), result
            if result.code == "INVALID_ARGUMENT":
                assert not result.reached_user_code
            if result.ok:  # the client decodes the reply, or says it cannot
                reply = serving_pb2.CallReply(payload=result.payload, instance_id="i1")
                try:
                    _decode(reply)
                except CallError as exc:
                    decoded = exc.code
                else:
                    decoded = "OK"
                assert decoded in ("OK", "INTERNAL")

        check()

"""Client SDK: endpoint choice, safe retries only, retry budget, deadlines."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ha_serving._settings import ClientSettings
from ha_serving._wire import RETRY_SAFE_KEY
from ha_serving.client import AsyncClient, CallError, Client, RetryBudget
from ha_serving.client._client import _Core, _Pause, _retry_safe, _Try, _Wait
from ha_serving.proto.serving_pb2 import CallReply
from tests.unit.fixtures.control import free_address
from tests.unit.fixtures.dataplane import Stack, running_stack, seeded

DEAD = "127.0.77.254:1"  # nothing listens on port 1: connection refused, never sent
FAST = ClientSettings(retry_backoff_s=0.0)


def answered(stack: Stack, code: str | None = None) -> float:
    """Calls the proxy answered (with ``code``, or any code)."""
    text = stack.server.metrics.metrics_text()
    prefix = "ha_serving_proxy_requests_total{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and (code is None or f'code="{code}"' in line)
    )


@pytest.fixture
def serving() -> Iterator[Stack]:
    with running_stack() as stack:
        stack.add("i1")
        yield stack


@pytest.fixture
def empty() -> Iterator[Stack]:
    """A proxy with no instance: answers UNAVAILABLE, retry-safe."""
    with running_stack() as stack:
        yield stack


@pytest.mark.parametrize(
    ("code", "trailers", "safe"),
    [
        (grpc.StatusCode.UNAVAILABLE, ((RETRY_SAFE_KEY, "1"),), True),
        (grpc.StatusCode.UNAVAILABLE, ((RETRY_SAFE_KEY, "0"),), False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ((RETRY_SAFE_KEY, "1"),), True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),  # oversize: same everywhere
        (grpc.StatusCode.NOT_FOUND, ((RETRY_SAFE_KEY, "1"),), False),  # pointless to retry
        (grpc.StatusCode.UNKNOWN, ((RETRY_SAFE_KEY, "0"),), False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, False),
    ],
)
def test_only_calls_that_cannot_have_run_user_code_are_retry_safe(
    code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...] | None, safe: bool
) -> None:
    assert _retry_safe(code, trailers) is safe


@pytest.mark.parametrize(
    ("details", "safe"),
    [
        ("failed to connect to all addresses; last error: Connection refused", True),
        ("DNS resolution failed for nowhere:1", True),
        ("Socket closed", False),  # the proxy died holding the request
        ("recvmsg:Connection reset by peer", False),
        ("GOAWAY received", False),
        ("", False),
    ],
)
def test_a_transport_unavailable_is_retry_safe_only_if_the_connection_was_never_made(
    details: str, safe: bool
) -> None:
    assert _retry_safe(grpc.StatusCode.UNAVAILABLE, None, details) is safe


PROXY_THAT_HANGS = """
import sys, time, grpc
from concurrent import futures
from ha_serving._wire import SERVING_SERVICE
from ha_serving.proto.serving_pb2 import CallReply, CallRequest

def call(request, context):
    with open(sys.argv[2], "a") as f:
        f.write("ran\\n")  # user code ran
    time.sleep(60)
    return CallReply()

server = grpc.server(futures.ThreadPoolExecutor(4))
handler = grpc.unary_unary_rpc_method_handler(
    call, request_deserializer=CallRequest.FromString,
    response_serializer=CallReply.SerializeToString)
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler(SERVING_SERVICE, {"Call": handler}),))
server.add_insecure_port(sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination(90)
"""


def test_a_proxy_killed_holding_a_call_is_not_retried_so_user_code_runs_once(
    serving: Stack, tmp_path: Path
) -> None:
    """A proxy process SIGKILLed after its backend started the call: the client sees
    UNAVAILABLE with no trailer on a connection that was made, and must not send the
    call to the healthy second proxy."""
    ran = tmp_path / "ran"
    address = free_address("127.0.77.253")
    proxy = subprocess.Popen(
        [sys.executable, "-c", PROXY_THAT_HANGS, address, str(ran)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.stdout is not None
        assert proxy.stdout.readline().strip() == "ready"
        with Client([address, serving.address], settings=FAST, rng=seeded(0)) as client:
            client.set_addresses([address])  # the first attempt goes to the doomed proxy
            errors: list[CallError] = []

            def call() -> None:
                try:
                    client.call("echo", "echo", 1, timeout=20)
                except CallError as exc:
                    errors.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            deadline = time.monotonic() + 20
            while not ran.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            client.set_addresses([address, serving.address])  # a retry would go here
            proxy.kill()
            caller.join(20)
        assert not caller.is_alive()
        assert [e.code for e in errors] == ["UNAVAILABLE"], errors
        assert ran.read_text() == "ran\n"
        assert serving.caller.calls == [], "the call ran a second time on another proxy"
    finally:
        proxy.kill()
        proxy.wait(10)


def test_call_encodes_and_decodes_json(serving: Stack) -> None:
    with Client([serving.address]) as client:
        reply = client.call("echo", "echo", {"n": [1, 2]})
        assert isinstance(reply, dict)
        assert reply["echo"] == {"n": [1, 2]}
        raw = client.call_raw("echo", "version", b"null")
        assert (raw.instance_id, raw.version, raw.cluster) == ("i1", "v1", "c1")


def test_retry_safe_unavailable_moves_on_and_marks_the_endpoint_down(
    serving: Stack, empty: Stack
) -> None:
    with Client([empty.address, serving.address], settings=FAST, rng=seeded(5)) as client:
        for _ in range(20):
            assert client.call("echo", "version") == "v1"
    assert answered(empty) == 1  # tried once, then skipped while marked down
    assert answered(serving) == 20


def test_transport_failure_before_sending_is_retried(serving: Stack) -> None:
    with Client([DEAD, serving.address], settings=FAST, rng=seeded(1)) as client:
        assert [client.call("echo", "version") for _ in range(5)] == ["v1"] * 5


def test_call_that_reached_user_code_is_not_retried(serving: Stack, empty: Stack) -> None:
    empty.add("i1")  # two healthy proxies: a retry would have somewhere to go
    with Client([serving.address, empty.address], settings=FAST) as client:
        with pytest.raises(CallError) as info:
            client.call("echo", "fail", 1)
        assert info.value.code == "UNKNOWN"
        assert "ValueError: bad value 1" in info.value.message
        assert len(serving.caller.calls) + len(empty.caller.calls) == 1


def test_backend_lost_mid_call_is_not_retried(serving: Stack, empty: Stack) -> None:
    """UNAVAILABLE with ha-retry-safe: 0 (the worker died while running it) stays failed."""
    empty.add("i1")
    for stack in (serving, empty):
        stack.caller.down["w1"] = True
    with Client([serving.address, empty.address], settings=FAST) as client:
        with pytest.raises(CallError) as info:
            client.call("echo", "echo", 1)
        assert info.value.code == "UNAVAILABLE"
        assert len(serving.caller.calls) + len(empty.caller.calls) == 1


def test_retry_budget_stops_a_retry_storm(empty: Stack) -> None:
    """50 calls to a proxy that always fails retry-safe: 5 attempts each would be 250,
    the budget (20% of requests + a floor of 2) allows at most 50 + 10 + 2."""
    budget = RetryBudget(ratio=0.2, floor=2, clock=lambda: 0.0)  # time stands still
    settings = ClientSettings(max_attempts=5, retry_backoff_s=0.0, endpoint_down_s=0.0)
    with Client([empty.address], retry_budget=budget, settings=settings) as client:
        for _ in range(50):
            with pytest.raises(CallError, match="no instance in service"):
                client.call("echo", "echo", 1)
    assert 50 < answered(empty, "UNAVAILABLE") <= 62


def test_retry_budget_allows_ratio_of_requests_plus_floor_per_second() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.5, floor=1.0, clock=lambda: now[0])
    assert budget.try_retry()  # starts full (the floor)
    assert not budget.try_retry()
    budget.on_request()
    assert not budget.try_retry()  # half a token
    budget.on_request()
    assert budget.try_retry()
    now[0] += 10.0  # refills by the floor per second, capped at max(floor, 1)
    assert budget.try_retry()
    assert not budget.try_retry()


def test_overall_deadline_bounds_retries(empty: Stack) -> None:
    settings = ClientSettings(max_attempts=10_000, retry_backoff_s=0.01, endpoint_down_s=0)
    budget = RetryBudget(ratio=0, floor=10_000)
    with Client([empty.address], timeout_s=0.3, retry_budget=budget, settings=settings) as c:
        started = time.monotonic()
        with pytest.raises(CallError) as info:
            c.call("echo", "echo", 1)
        assert info.value.code in {"DEADLINE_EXCEEDED", "UNAVAILABLE"}
        assert time.monotonic() - started < 1.0


def test_endpoints_are_replaceable_and_an_empty_list_fails_clearly(serving: Stack) -> None:
    with Client([DEAD], settings=FAST) as client:
        with pytest.raises(CallError) as info:
            client.call("echo", "version")
        assert info.value.code == "UNAVAILABLE"
        client.set_addresses([serving.address])
        assert client.call("echo", "version") == "v1"
        client.set_addresses([])
        with pytest.raises(CallError, match="no endpoint"):
            client.call("echo", "version", timeout=0.2)


def test_a_call_before_discovery_answers_waits_for_the_first_endpoints(
    serving: Stack,
) -> None:
    """A client made empty (discovery not answered yet) waits within the call's deadline
    for its first endpoints instead of failing at once; so does the async one."""
    with Client([], settings=FAST) as client:
        threading.Timer(0.3, client.set_addresses, args=([serving.address],)).start()
        started = time.monotonic()
        assert client.call("echo", "version", timeout=5) == "v1"
        assert 0.25 < time.monotonic() - started < 3

    async def scenario() -> object:
        async with AsyncClient([], settings=FAST) as client:

            async def discovered() -> None:
                await asyncio.sleep(0.3)
                await client.set_addresses([serving.address])

            later = asyncio.ensure_future(discovered())
            answer = await client.call("echo", "version", timeout=5)
            await later
            return answer

    assert asyncio.run(scenario()) == "v1"


def test_async_client_retries_safe_failures_like_the_blocking_one(
    serving: Stack, empty: Stack
) -> None:
    async def scenario() -> list[object]:
        addresses = [DEAD, empty.address, serving.address]
        async with AsyncClient(addresses, settings=FAST, rng=seeded(3)) as client:
            answers = [await client.call("echo", "version") for _ in range(10)]
            with pytest.raises(CallError) as info:
                await client.call("echo", "fail", 2)
            assert info.value.code == "UNKNOWN"
            await client.set_addresses([serving.address])
            answers.append(await client.call("echo", "version"))
            return answers

    assert asyncio.run(scenario()) == ["v1"] * 11
    assert len(serving.caller.calls) == 12


# --- the call loop, decided without I/O -----------------------------------------------


class Failed:
    """A failed try as gRPC reports it: a code, its details, the proxy's trailers."""

    def __init__(self, code: grpc.StatusCode, details: str, safe: str | None = None) -> None:
        self._code, self._details = code, details
        self._trailers = () if safe is None else ((RETRY_SAFE_KEY, safe),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


def _core(addresses: list[str]) -> _Core[None]:
    return _Core(
        addresses,
        settings=FAST,
        timeout_s=None,
        retry_budget=None,
        rng=seeded(1),
        open_channel=lambda _address: (None, None),
    )


def test_the_call_loop_tries_another_endpoint_after_a_safe_failure_without_any_io() -> None:
    """The loop both clients drive: a retry-safe failure pauses, then tries an endpoint
    not tried yet; the reply ends the loop as its value and marks the endpoint up."""
    core = _core(["a:1", "b:1"])
    loop = core.attempts(core.deadline(5.0))
    first = next(loop)
    assert isinstance(first, _Try)
    assert 4.0 < first.timeout <= 5.0
    core.end(first.endpoint)
    refused = Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    pause = loop.send(refused)
    assert isinstance(pause, _Pause)
    assert core.endpoints[first.endpoint.address].down_until > core.clock()
    second = loop.send(None)
    assert isinstance(second, _Try)
    assert second.endpoint.address != first.endpoint.address
    reply = CallReply(payload=b'"ok"', instance_id="i1")
    with pytest.raises(StopIteration) as done:
        loop.send(reply)
    assert done.value.value is reply


def test_the_call_loop_hands_an_unsafe_failure_to_the_caller_at_once() -> None:
    """A failure that may have reached user code is the caller's CallError, never a
    pause and another try."""
    core = _core(["a:1", "b:1"])
    loop = core.attempts(core.deadline(5.0))
    step = next(loop)
    assert isinstance(step, _Try)
    with pytest.raises(CallError) as caught:
        loop.send(Failed(grpc.StatusCode.UNKNOWN, "boom in user code", safe="0"))
    assert caught.value.code == "UNKNOWN"


def test_the_call_loop_waits_for_a_first_endpoint_within_its_deadline() -> None:
    core = _core([])
    loop = core.attempts(core.deadline(2.0))
    wait = next(loop)
    assert isinstance(wait, _Wait)
    assert 1.5 < wait.seconds <= 2.0
    core.replace(["a:1"])
    step = loop.send(None)
    assert isinstance(step, _Try)
    assert step.endpoint.address == "a:1"


def test_an_event_loop_waiting_for_endpoints_is_woken_from_another_thread() -> None:
    """AsyncClient waits for discovery's first answer on its own loop: the answer, set
    from discovery's thread, wakes it through that loop; no answer times it out."""
    core = _core([])

    async def scenario() -> tuple[bool, float, bool]:
        threading.Timer(0.2, core.replace, args=(["a:1"],)).start()
        started = time.monotonic()
        woken = await core.has_endpoints.wait_async(5.0)
        took = time.monotonic() - started
        core.replace([])
        timed_out = await core.has_endpoints.wait_async(0.05)
        return woken, took, timed_out

    woken, took, timed_out = asyncio.run(scenario())
    assert woken
    assert 0.15 < took < 1.0
    assert not timed_out

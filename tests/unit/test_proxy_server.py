"""ProxyServer over real gRPC on loopback, with in-process hosts as backends."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ha_serving._settings import ProxySettings
from ha_serving._wire import CALL_METHOD, RETRY_SAFE_KEY, CallResult
from ha_serving.client import AsyncClient, CallError
from ha_serving.proto.serving_pb2 import CallReply, CallRequest
from tests.unit.fixtures.dataplane import Stack, package, running_stack

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def raw(
    stack: Stack,
    method: str,
    payload: bytes = b"1",
    *,
    service: str = "echo",
    timeout: float | None = 5.0,
) -> tuple[str, str, dict[str, str], CallReply | None]:
    """One call with no client logic: (status name, details, trailers, reply)."""
    stub = _channel(stack.address).unary_unary(
        CALL_METHOD,
        request_serializer=CallRequest.SerializeToString,
        response_deserializer=CallReply.FromString,
    )
    request = CallRequest(service=service, method=method, payload=payload)
    try:
        reply = stub(request, timeout=timeout)
    except grpc.RpcError as err:
        if not isinstance(err, grpc.Call):
            raise
        trailers = {k: str(v) for k, v in err.trailing_metadata() or ()}
        return err.code().name, err.details() or "", trailers, None
    return "OK", "", {}, reply


@functools.cache
def _channel(address: str) -> grpc.Channel:
    """One channel per proxy address (each test's proxy has its own address)."""
    return grpc.insecure_channel(address)


def health(stack: Stack, service: str = "") -> int:
    with grpc.insecure_channel(stack.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


def test_call_is_answered_by_an_instance_named_in_the_reply() -> None:
    with running_stack(cluster="c7") as stack:
        stack.add("i1")
        code, _, _, reply = raw(stack, "echo", b'{"a": 1}')
        assert code == "OK"
        assert reply is not None
        assert (reply.instance_id, reply.version, reply.cluster) == ("i1", "v1", "c7")
        assert json.loads(reply.payload)["echo"] == {"a": 1}


@pytest.mark.parametrize(
    ("service", "method", "payload", "code", "message"),
    [
        ("nosuch", "echo", b"1", "NOT_FOUND", "unknown service 'nosuch'"),
        ("echo", "", b"1", "INVALID_ARGUMENT", "method is empty"),
        ("echo", "nosuch", b"1", "NOT_FOUND", "no method 'nosuch'"),
        ("echo", "echo", b"{oops", "INVALID_ARGUMENT", "not valid JSON"),
    ],
)
def test_bad_input_gets_a_clear_status_that_is_marked_retry_safe(
    service: str, method: str, payload: bytes, code: str, message: str
) -> None:
    """Answers made before user code ran carry ha-retry-safe: 1."""
    with running_stack() as stack:
        stack.add("i1")
        got, details, trailers, _ = raw(stack, method, payload, service=service)
        assert (got, trailers) == (code, {RETRY_SAFE_KEY: "1"})
        assert message in details


def test_oversize_request_is_resource_exhausted_and_the_proxy_keeps_serving() -> None:
    with running_stack(settings=ProxySettings(max_message_bytes=64 * 1024)) as stack:
        stack.add("i1")
        code, details, _, _ = raw(stack, "echo", json.dumps("x" * 100_000).encode())
        assert code == "RESOURCE_EXHAUSTED"
        assert "larger than max" in details
        assert raw(stack, "echo")[0] == "OK"


def test_user_exception_is_unknown_with_its_message_not_retry_safe_and_serving_goes_on() -> None:
    with running_stack() as stack:
        stack.add("i1")
        code, details, trailers, _ = raw(stack, "fail", b"3")
        assert (code, details, trailers) == (
            "UNKNOWN",
            "ValueError: bad value 3",
            {RETRY_SAFE_KEY: "0"},
        )
        assert raw(stack, "echo")[0] == "OK"


def test_every_instance_at_its_cap_is_backpressure_resource_exhausted() -> None:
    with running_stack() as stack:
        stack.add("i1", max_concurrency=1)

        async def scenario() -> tuple[Any, ...]:
            async with AsyncClient([stack.address], timeout_s=5) as client:
                slow = asyncio.ensure_future(client.call("echo", "aslow", 0.5))
                await asyncio.sleep(0.1)
                refused = await asyncio.to_thread(raw, stack, "echo")
                return await slow, refused

        slow, (code, details, trailers, _) = stack.run(scenario())
        assert slow == 0.5
        assert code == "RESOURCE_EXHAUSTED"
        assert "concurrency cap" in details
        assert trailers == {RETRY_SAFE_KEY: "1"}


@pytest.mark.parametrize("direct", [False, True])
def test_an_instance_its_worker_holds_at_its_cap_is_refused_unrun_and_served_by_another(
    direct: bool,
) -> None:
    """Another caller (a direct client) holds instance a's whole cap of 1 on its worker;
    the proxy's own count of a is 0, so it still routes there: the worker refuses unrun
    and the proxy retries on b, of the same worker (the instance is full, not the
    worker), which it does not eject. Through Ray or the direct path alike."""
    with running_stack(direct=direct) as stack:
        stack.add("a", worker="w1", host_cap=1)
        stack.add("b", worker="w1", host_cap=1)
        held = stack.hold("w1", "a", "aslow", 2.0)
        answered = []
        for _ in range(20):
            code, _, _, reply = raw(stack, "echo")
            assert code == "OK"
            assert reply is not None
            answered.append(reply.instance_id)
        assert stack.host("w1").inflight("a") == 1  # held all along
        assert answered == ["b"] * 20
        routed = stack.server.routed()
        assert routed["a"] >= 1  # tried, refused, and each time retried on b
        assert routed["b"] == 20
        assert not stack.server.router.ejected("w1")
        assert held.result(5).ok


def test_the_only_instance_at_its_workers_cap_answers_resource_exhausted_retry_safe() -> None:
    with running_stack() as stack:
        stack.add("a", worker="w1", host_cap=1)
        held = stack.hold("w1", "a", "aslow", 1.0)
        code, details, trailers, _ = raw(stack, "echo")
        assert (code, trailers) == ("RESOURCE_EXHAUSTED", {RETRY_SAFE_KEY: "1"})
        assert "'a' is at its max_concurrency" in details
        assert stack.caller.calls == [("w1", "a")]  # not sent to it twice
        assert held.result(5).ok
        assert raw(stack, "echo")[0] == "OK"


def test_a_proxy_within_its_share_is_never_refused_by_a_worker() -> None:
    """Alone, the proxy's share is the whole cap: 12 calls at once on 2 instances of cap
    4 run 8 and the proxy itself sheds 4; every call it sends runs (no refusal by a
    worker, no retry)."""
    with running_stack() as stack:
        stack.add("a", worker="w1", max_concurrency=4, host_cap=4)
        stack.add("b", worker="w2", max_concurrency=4, host_cap=4)

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(lambda _: raw(stack, "aslow", b"1.0"), range(12)))
        shed = [o for o in outcomes if o[0] != "OK"]
        assert 1 <= len(shed) <= 4  # 4 when the 12 overlap, as they do but on a slow machine
        assert all(o[0] == "RESOURCE_EXHAUSTED" and "concurrency cap" in o[1] for o in shed)
        assert len(stack.caller.calls) == 12 - len(shed)  # the shed calls were never sent


def test_no_instance_in_service_is_unavailable_and_retry_safe() -> None:
    with running_stack() as stack:
        code, details, trailers, _ = raw(stack, "echo")
        assert (code, trailers) == ("UNAVAILABLE", {RETRY_SAFE_KEY: "1"})
        assert "no instance in service" in details


def test_client_deadline_is_honoured_with_deadline_exceeded() -> None:
    with running_stack() as stack:
        stack.add("i1")
        assert raw(stack, "slow", b"0.3", timeout=0.1)[0] == "DEADLINE_EXCEEDED"


def test_proxy_default_timeout_ends_calls_without_a_deadline_not_retry_safe() -> None:
    with running_stack(settings=ProxySettings(default_timeout_s=0.1)) as stack:
        stack.add("i1")
        code, details, trailers, _ = raw(stack, "aslow", b"0.3", timeout=None)
        assert (code, trailers) == ("DEADLINE_EXCEEDED", {RETRY_SAFE_KEY: "0"})
        assert "did not answer within" in details


def test_worker_unreachable_before_sending_is_retried_once_on_another_worker() -> None:
    with running_stack() as stack:
        stack.add("a", worker="w1")
        stack.add("b", worker="w2")
        stack.caller.down["w1"] = False  # dead, and the call provably never ran
        for _ in range(10):
            code, _, _, reply = raw(stack, "echo")
            assert code == "OK"
            assert reply is not None
            assert reply.instance_id == "b"
        assert ("w1", "a") in stack.caller.calls  # w1 was tried, then skipped


def test_failure_after_the_call_may_have_run_is_not_retried() -> None:
    with running_stack() as stack:
        stack.add("a", worker="w1")
        stack.caller.down["w1"] = True  # died while running the call
        code, details, trailers, _ = raw(stack, "echo")
        assert (code, trailers) == ("UNAVAILABLE", {RETRY_SAFE_KEY: "0"})
        assert "actor died" in details
        assert stack.caller.calls == [("w1", "a")]


def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_worker_that_died_is_ejected_at_once_and_readmitted_when_its_ping_answers() -> None:
    """After one call fails on a dead worker, no further call is routed there: the next
    ones all go to the other worker and succeed. Once the worker answers a ping again it
    is readmitted and takes calls again."""
    settings = ProxySettings(eject_probe_s=0.05, eject_probe_max_s=0.1)
    with running_stack(settings=settings) as stack:
        stack.add("a", worker="w1")
        stack.add("b", worker="w2")
        stack.caller.down["w1"] = True  # died while running a call
        outcomes = [raw(stack, "echo")[0] for _ in range(30)]
        to_w1 = [c for c in stack.caller.calls if c[0] == "w1"]
        assert len(to_w1) == 1, f"calls still routed to the dead worker: {to_w1}"
        assert outcomes.count("UNAVAILABLE") <= 1
        assert outcomes.count("OK") >= 29
        assert stack.server.router.ejected("w1")
        until(lambda: "w1" in stack.caller.probes)  # probed while still down: stays out
        assert stack.server.router.ejected("w1")
        del stack.caller.down["w1"]  # restarted: answers pings again
        until(lambda: not stack.server.router.ejected("w1"))
        for _ in range(30):
            raw(stack, "echo")
        assert len([c for c in stack.caller.calls if c[0] == "w1"]) > 1


def test_every_worker_ejected_is_unavailable_and_retry_safe() -> None:
    settings = ProxySettings(eject_probe_s=5.0)
    with running_stack(settings=settings) as stack:
        stack.add("a", worker="w1")
        stack.caller.down["w1"] = True
        raw(stack, "echo")
        code, details, trailers, _ = raw(stack, "echo")
        assert (code, trailers) == ("UNAVAILABLE", {RETRY_SAFE_KEY: "1"})
        assert "ejected" in details


def test_unexpected_backend_caller_error_is_unavailable_and_not_retry_safe() -> None:
    class Broken:
        async def call(self, *_: object, **__: object) -> CallResult:
            raise RuntimeError("connection reset")

    with running_stack() as stack:
        stack.add("a")
        stack.server._caller = Broken()
        code, details, trailers, _ = raw(stack, "echo")
        assert (code, trailers) == ("UNAVAILABLE", {RETRY_SAFE_KEY: "0"})
        assert "RuntimeError: connection reset" in details


def test_draining_instance_gets_no_new_calls_while_its_inflight_calls_finish() -> None:
    with running_stack() as stack:
        stack.add("old")

        async def scenario() -> tuple[list[Any], list[CallReply], dict[str, int]]:
            async with AsyncClient([stack.address], timeout_s=5) as client:
                slow = [asyncio.ensure_future(client.call("echo", "aslow", 0.5)) for _ in range(3)]
                await asyncio.sleep(0.1)
                await asyncio.to_thread(stack.add, "new")
                await asyncio.to_thread(stack.unroute, "old")  # the drain starts here
                during = stack.server.inflight()
                fast = [await client.call_raw("echo", "echo", b"1") for _ in range(20)]
                return await asyncio.gather(*slow), fast, during

        slow, fast, during = stack.run(scenario())
        assert slow == [0.5, 0.5, 0.5]
        assert {r.instance_id for r in fast} == {"new"}
        assert during == {"old": 3, "new": 0}
        assert stack.server.inflight() == {"new": 0}


def test_in_place_code_update_under_traffic_has_zero_failures() -> None:
    with running_stack() as stack:
        stack.add("i1")
        stack.add("i2", worker="w2")

        async def scenario() -> list[CallReply]:
            async with AsyncClient([stack.address], timeout_s=5) as client:
                sem = asyncio.Semaphore(8)

                async def one() -> CallReply:
                    async with sem:
                        return await client.call_raw("echo", "version", b"null")

                traffic = [asyncio.ensure_future(one()) for _ in range(150)]
                await asyncio.sleep(0.02)
                for worker, iid in (("w1", "i1"), ("w2", "i2")):
                    host = stack.host(worker)
                    await host.load_code(iid, package("echo_v2"), "echo:Echo", "v2")
                traffic += [asyncio.ensure_future(one()) for _ in range(50)]
                return await asyncio.gather(*traffic)

        replies = stack.run(scenario())
        assert len(replies) == 200  # gather raised nothing: zero failures
        assert all(json.loads(r.payload) == r.version for r in replies)
        assert {r.version for r in replies[-50:]} == {"v2"}


def test_reconfigure_in_place_is_seen_by_the_next_calls() -> None:
    with running_stack() as stack:
        stack.add("i1", config={"prefix": "a"})
        first = json.loads(raw(stack, "echo")[3].payload)  # type: ignore[union-attr]
        stack.run(stack.host("w1").reconfigure("i1", {"prefix": "b"}))
        second = json.loads(raw(stack, "echo")[3].payload)  # type: ignore[union-attr]
        assert (first["prefix"], second["prefix"]) == ("a", "b")
        assert first["obj"] == second["obj"]


def test_health_is_serving_only_while_the_table_has_instances() -> None:
    with running_stack() as stack:
        assert (health(stack), health(stack, "echo")) == (NOT_SERVING, NOT_SERVING)
        stack.add("i1")
        assert (health(stack), health(stack, "echo")) == (SERVING, SERVING)
        stack.unroute("i1")
        assert (health(stack), health(stack, "echo")) == (NOT_SERVING, NOT_SERVING)


def test_graceful_stop_turns_health_not_serving_and_finishes_inflight_calls() -> None:
    with running_stack() as stack:
        stack.add("i1")

        async def scenario() -> tuple[list[int], object]:
            async with AsyncClient([stack.address], timeout_s=5) as client:
                channel = grpc.aio.insecure_channel(stack.address)
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="echo")
                )
                seen = [(await watch.read()).status]
                slow = asyncio.ensure_future(client.call("echo", "aslow", 0.3))
                await asyncio.sleep(0.1)
                stopping = asyncio.ensure_future(stack.server.stop(grace_s=5))
                seen.append((await watch.read()).status)
                answer = await slow
                await stopping
                await channel.close()
                return seen, answer

        seen, answer = stack.run(scenario())
        assert seen == [SERVING, NOT_SERVING]
        assert answer == 0.3  # the in-flight call finished during the grace period
        code = raw(stack, "echo", timeout=1)[0]
        assert code == "UNAVAILABLE"  # the stopped proxy refuses, it does not hang


def test_metrics_are_exported_over_http_and_as_text() -> None:
    with running_stack() as stack:
        stack.add("i1")
        for method in ("echo", "echo", "fail"):
            raw(stack, method)
        host = stack.address.rsplit(":", 1)[0]
        port = stack.server.metrics.start_http(host, 0)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in (
            'ha_serving_proxy_requests_total{code="OK",group="stable",method="echo",'
            'service="echo",version="v1"} 2.0',
            'ha_serving_proxy_requests_total{code="UNKNOWN",group="stable",method="fail",'
            'service="echo",version="v1"} 1.0',
            'ha_serving_proxy_request_duration_seconds_bucket{group="stable",le="0.001",'
            'method="echo"',
            'ha_serving_proxy_inflight{instance="i1",service="echo"} 0.0',
            'ha_serving_proxy_routed_instances{service="echo"} 1.0',
        ):
            assert line in text


def test_garbage_method_names_do_not_grow_the_metric_labels() -> None:
    with running_stack() as stack:
        stack.add("i1")
        for n in range(5):
            raw(stack, f"junk{n}")
        raw(stack, "echo", service="junk")
        text = stack.server.metrics.metrics_text()
        assert "junk" not in text
        assert (
            'code="NOT_FOUND",group="stable",method="<other>",service="echo",version="v1"} 5.0'
            in text
        )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    service=st.sampled_from(["echo", "", "x" * 300, "ech\u00f6"]),
    method=st.text(max_size=40),
    payload=st.binary(max_size=200),
)
def test_arbitrary_requests_always_get_a_status_and_never_break_the_proxy(
    shared_stack: Stack, service: str, method: str, payload: bytes
) -> None:
    code, _, _, _ = raw(shared_stack, method, payload, service=service)
    assert code in {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "UNKNOWN", "DEADLINE_EXCEEDED"}
    assert raw(shared_stack, "echo")[0] == "OK"


@pytest.fixture(scope="module")
def shared_stack() -> Any:
    with running_stack() as stack:
        stack.add("i1")
        yield stack


def test_routes_are_spread_over_instances() -> None:
    """Power of two choices across real calls: every instance takes part. At most 6
    calls at once, within the 3 x 8 slots: 30 at once could outrun the caps and the
    retry budget on a loaded machine (CI saw RESOURCE_EXHAUSTED), which is not what
    this test is about."""
    with running_stack() as stack:
        for n in range(3):
            stack.add(f"i{n}", worker=f"w{n}")

        async def scenario() -> list[CallReply]:
            async with AsyncClient([stack.address], timeout_s=5) as client:
                slots = asyncio.Semaphore(6)

                async def one() -> CallReply:
                    async with slots:
                        return await client.call_raw("echo", "aslow", b"0.02")

                return list(await asyncio.gather(*(one() for _ in range(30))))

        counts = Counter(r.instance_id for r in stack.run(scenario()))
        assert set(counts) == {"i0", "i1", "i2"}


def test_call_error_reaches_async_clients_with_the_status_name() -> None:
    with running_stack() as stack:
        stack.add("i1")

        async def scenario() -> CallError:
            async with AsyncClient([stack.address], timeout_s=5) as client:
                with pytest.raises(CallError) as info:
                    await client.call("echo", "fail", 1)
                return info.value

        err = stack.run(scenario())
        assert (err.code, err.message.split(" (via")[0]) == ("UNKNOWN", "ValueError: bad value 1")


def test_ray_backend_caller_caches_handles_and_says_which_failures_are_retry_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lookup failures never reached user code (safe, remembered briefly); a worker dying
    under a call may have run it (unsafe) and its handle is dropped."""
    import ray
    import ray.exceptions

    from ha_serving._errors import BackendUnavailable
    from ha_serving.proxy import RayBackendCaller

    alive = {"w1": True}
    lookups: list[str] = []

    class Method:
        def remote(self, instance_id: str, _method: str, payload: bytes) -> Any:
            async def answer() -> CallResult:
                if not alive["w1"]:
                    raise ray.exceptions.ActorDiedError()
                return CallResult.success(payload, instance_id=instance_id, version="v1")

            return answer()

    class Handle:
        call = Method()

    def get_actor(name: str, namespace: str) -> Handle:
        lookups.append(name)
        if name != "w1":
            raise ValueError(f"Failed to look up actor with name {name!r}")
        return Handle()

    monkeypatch.setattr(ray, "get_actor", get_actor)
    caller = RayBackendCaller("ns")

    async def scenario() -> None:
        for _ in range(2):
            assert (await caller.call("w1", "i1", "echo", b"1", 1.0)).ok
        for _ in range(2):
            with pytest.raises(BackendUnavailable) as missing:
                await caller.call("ghost", "i9", "echo", b"1", 1.0)
            assert not missing.value.reached_user_code
        alive["w1"] = False
        with pytest.raises(BackendUnavailable) as died:
            await caller.call("w1", "i1", "echo", b"1", 1.0)
        assert died.value.reached_user_code
        alive["w1"] = True  # e.g. restarted by Ray: found again by name
        assert (await caller.call("w1", "i1", "echo", b"1", 1.0)).ok

    asyncio.run(scenario())
    # cached handle, remembered miss, and a fresh lookup after the death
    assert lookups == ["w1", "ghost", "w1"]


def test_only_a_call_ray_never_sent_to_a_dead_worker_counts_as_never_sent() -> None:
    """The two ways Ray 2.60 fails a call on a SIGKILLed actor, as measured: held back
    while the actor restarts (never sent: safe to retry), or pushed before the death."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from ha_serving.proxy._actor import never_sent

    held = ActorUnavailableError(
        "The actor is temporarily unavailable: IOError: The actor is restarting", None
    )
    pushed = ActorUnavailableError(
        "The actor is temporarily unavailable: RpcError: RPC error: Socket closed", None
    )
    assert never_sent(held)
    assert not never_sent(pushed)
    assert not never_sent(ActorDiedError())
    assert not never_sent(RuntimeError("The actor is restarting"))

"""InstanceHost and BackendWorker: calls, in-place updates, health and draining."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ha_serving import cheap
from ha_serving._errors import InvalidSpec, UnknownInstance, UserCodeError
from ha_serving._marks import is_cheap
from ha_serving._wire import CallResult
from ha_serving.backend import BackendWorker, InstanceHost, backend_actor_options
from tests.unit.fixtures.dataplane import ECHO, package


def run(test: Callable[[InstanceHost], Awaitable[None]]) -> None:
    async def main() -> None:
        host = InstanceHost(call_threads=8, health_timeout_s=0.2)
        try:
            await test(host)
        finally:
            await host.close(grace_s=5)

    asyncio.run(main())


async def call(host: InstanceHost, method: str, value: Any = None, iid: str = "i1") -> CallResult:
    return await host.call(iid, method, json.dumps(value).encode())


@asynccontextmanager
async def echo(host: InstanceHost, iid: str = "i1", **config: Any) -> AsyncIterator[None]:
    await host.add_instance(iid, package("echo_v1"), ECHO, "v1", config or None)
    yield


def test_calls_run_sync_and_async_methods_and_return_json() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            ok = await call(host, "echo", {"x": [1, 2]})
            assert ok.ok
            assert ok.code == "OK"
            assert ok.reached_user_code
            assert (ok.instance_id, ok.version) == ("i1", "v1")
            assert json.loads(ok.payload)["echo"] == {"x": [1, 2]}
            assert json.loads((await call(host, "aslow", 0.01)).payload) == 0.01

    run(scenario)


def test_malformed_json_is_invalid_argument_before_user_code() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            for payload in (b"{nope", b"", b"\xff\xfe"):
                result = await host.call("i1", "echo", payload)
                assert result.code == "INVALID_ARGUMENT"
                assert not result.reached_user_code
                assert "not valid JSON" in result.message

    run(scenario)


@pytest.mark.parametrize("method", ["nope", "_private", "__init__", "reconfigure", "check_health"])
def test_unknown_private_and_platform_methods_are_not_found(method: str) -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            result = await call(host, method, 1)
            assert result.code == "NOT_FOUND"
            assert not result.reached_user_code
            assert repr(method) in result.message

    run(scenario)


def test_unknown_instance_is_unavailable_and_did_not_reach_user_code() -> None:
    async def scenario(host: InstanceHost) -> None:
        result = await call(host, "echo", 1, iid="ghost")
        assert result.code == "UNAVAILABLE"
        assert not result.reached_user_code

    run(scenario)


def test_user_exception_is_unknown_with_type_and_message_and_host_keeps_serving() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            failed = await call(host, "fail", 7)
            assert failed.code == "UNKNOWN"
            assert failed.reached_user_code
            assert failed.message == "ValueError: bad value 7"
            assert (await call(host, "echo", 1)).ok
            unjsonable = await call(host, "not_json")
            assert unjsonable.code == "UNKNOWN"
            assert "not JSON" in unjsonable.message

    run(scenario)


def test_reconfigure_changes_the_same_object_in_place() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host, prefix="a"):
            before = json.loads((await call(host, "echo", 1)).payload)
            await host.reconfigure("i1", {"prefix": "b"})
            after = json.loads((await call(host, "echo", 1)).payload)
            assert (before["prefix"], after["prefix"]) == ("a", "b")
            assert before["obj"] == after["obj"]  # same object, not a new one

    run(scenario)


def test_bad_config_or_constructor_is_reported_and_adds_nothing() -> None:
    async def scenario(host: InstanceHost) -> None:
        odd = package("oddities")
        with pytest.raises(UserCodeError, match="RuntimeError: cannot start"):
            await host.add_instance("a", odd, "odd:Boom", "v1")
        with pytest.raises(InvalidSpec, match="no reconfigure"):
            await host.add_instance("b", odd, "odd:NoReconfigure", "v1", {"k": 1})
        with pytest.raises(UserCodeError, match="KeyError"):
            await host.add_instance("c", odd, "odd:BadReconfigure", "v1", {"need": "x"})
        with pytest.raises(UnknownInstance):
            await host.reconfigure("a", {"k": 1})
        assert host.stats() == {}
        assert not [m for m in sys.modules if m.startswith("_hasrv_") and "_a_" in m]

    run(scenario)


def test_add_instance_is_idempotent_for_the_same_code_and_refuses_other_code() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            obj = json.loads((await call(host, "echo", 1)).payload)["obj"]
            await host.add_instance("i1", package("echo_v1"), ECHO, "v1")
            assert json.loads((await call(host, "echo", 1)).payload)["obj"] == obj
            with pytest.raises(InvalidSpec, match="use load_code"):
                await host.add_instance("i1", package("echo_v2"), ECHO, "v2")

    run(scenario)


def test_load_code_swaps_versions_in_place_while_calls_flow_with_zero_failures() -> None:
    """In-flight calls finish on the old object; new calls see the new version; the old
    namespace is unloaded once its last call ended."""

    async def scenario(host: InstanceHost) -> None:
        before = set(sys.modules)
        async with echo(host):
            old_ns = {m for m in set(sys.modules) - before if m.startswith("_hasrv_")}
            assert old_ns
            slow_old = asyncio.ensure_future(call(host, "aslow", 0.2))
            traffic = [asyncio.ensure_future(call(host, "version")) for _ in range(50)]
            await asyncio.sleep(0.01)
            await host.load_code("i1", package("echo_v2"), ECHO, "v2", {"prefix": "p"})
            traffic += [asyncio.ensure_future(call(host, "version")) for _ in range(50)]
            results = await asyncio.gather(slow_old, *traffic)
            assert all(r.ok for r in results)
            assert results[0].version == "v1"  # began before the swap, ended on v1
            assert {json.loads(r.payload) for r in results[-50:]} == {"v2"}
            assert host.stats()["i1"]["version"] == "v2"
            assert json.loads((await call(host, "echo", 1)).payload)["prefix"] == "p"
            assert not old_ns & set(sys.modules)

    run(scenario)


def test_failed_load_code_keeps_the_old_code_serving() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            with pytest.raises(UserCodeError, match="cannot start"):
                await host.load_code("i1", package("oddities"), "odd:Boom", "v2")
            with pytest.raises(InvalidSpec, match="No module named"):
                await host.load_code("i1", package("echo_v2"), "missing:Echo", "v2")
            result = await call(host, "version")
            assert result.ok
            assert json.loads(result.payload) == "v1"
            assert host.stats()["i1"]["version"] == "v1"

    run(scenario)


@pytest.mark.parametrize(
    ("mode", "healthy"), [("ok", True), ("false", False), ("raise", False), ("hang", False)]
)
def test_check_health_is_false_on_false_error_or_timeout(mode: str, healthy: bool) -> None:
    async def scenario(host: InstanceHost) -> None:
        await host.add_instance("h", package("oddities"), "odd:Health", "v1", {"mode": mode})
        assert await host.check_health("h") is healthy
        assert host.stats()["h"]["healthy"] is healthy

    run(scenario)


def test_check_health_defaults_to_true_and_is_false_for_unknown_instances() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            assert await host.check_health("i1")
            assert not await host.check_health("ghost")

    run(scenario)


def test_wait_idle_returns_when_inflight_calls_finish_and_false_on_timeout() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            assert await host.wait_idle("i1", 0.01)
            calls = [asyncio.ensure_future(call(host, "slow", 0.3)) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert host.inflight("i1") == 3
            assert host.stats()["i1"]["inflight"] == 3
            assert not await host.wait_idle("i1", 0.01)
            assert await host.wait_idle("i1", 5)
            assert host.inflight("i1") == 0
            assert all(r.ok for r in await asyncio.gather(*calls))

    run(scenario)


def test_removed_instance_finishes_inflight_calls_and_refuses_new_ones() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            running = asyncio.ensure_future(call(host, "aslow", 0.1))
            await asyncio.sleep(0.02)
            await host.remove_instance("i1")
            refused = await call(host, "echo", 1)
            assert refused.code == "UNAVAILABLE"
            assert not refused.reached_user_code
            assert (await running).ok
            await host.remove_instance("i1")  # idempotent

    run(scenario)


def test_cancelled_caller_leaves_the_inflight_count_true_until_user_code_ends() -> None:
    async def scenario(host: InstanceHost) -> None:
        async with echo(host):
            waiter = asyncio.ensure_future(call(host, "slow", 0.3))
            await asyncio.sleep(0.03)
            waiter.cancel()
            await asyncio.sleep(0.01)
            assert host.inflight("i1") == 1  # the thread still runs the user's code
            assert await host.wait_idle("i1", 5)

    run(scenario)


def test_worker_returns_control_errors_as_values_not_exceptions() -> None:
    async def scenario() -> None:
        worker = BackendWorker("w1", call_threads=4)
        pkg = package("echo_v1")
        args = {"package": pkg.data, "import_path": ECHO, "version": "v1"}
        bad = await worker.add_instance("i1", digest="0" * 64, **args)
        assert (bad.ok, bad.code) == (False, "INVALID_ARGUMENT")
        assert (await worker.add_instance("i1", digest=pkg.digest, **args)).ok
        missing = await worker.reconfigure("ghost", {"a": 1})
        assert (missing.ok, missing.code) == (False, "NOT_FOUND")
        assert (await worker.call("i1", "echo", b"1")).ok
        assert await worker.check_health_all() == {"i1": True}
        assert (await worker.stats())["i1"] == {
            "inflight": 0,
            "version": "v1",
            "healthy": True,
            "max_concurrency": None,
        }
        assert await worker.ping() == "w1"
        assert (await worker.remove_instance("i1")).ok
        assert await worker.shutdown(grace_s=1)

    asyncio.run(scenario())


def test_backend_actor_options_name_and_detach_the_worker_and_forbid_task_retries() -> None:
    opts = backend_actor_options("svc-w1", namespace="ns", num_cpus=0.5)
    assert opts["name"] == "svc-w1"
    assert opts["namespace"] == "ns"
    assert opts["lifetime"] == "detached"
    assert opts["max_task_retries"] == 0
    assert "lifetime" not in backend_actor_options("x", namespace="ns", detached=False)


def test_sync_methods_marked_cheap_run_on_the_loop_and_the_others_in_the_pool(
    tmp_path: Path,
) -> None:
    """``ha_serving.cheap`` (or the attribute set by hand) skips the thread hop; results,
    errors and in-flight counts are as for any call."""

    async def scenario(host: InstanceHost) -> None:
        config = {"ledger": str(tmp_path / "ledger")}
        await host.add_instance("c", package("counter"), "counter:Counter", "v1", config)
        loop_thread = threading.current_thread().name
        pooled = json.loads((await call(host, "thread", iid="c")).payload)
        assert pooled.startswith("ha-call")
        for method in ("cheap_thread", "marked_by_hand"):
            assert json.loads((await call(host, method, iid="c")).payload) == loop_thread
        assert json.loads((await call(host, "cheap_async", [1], iid="c")).payload) == [1]
        failed = await call(host, "cheap_fail", 2, iid="c")
        assert (failed.code, failed.message, failed.reached_user_code) == (
            "UNKNOWN",
            "ValueError: cheap and wrong: 2",
            True,
        )
        assert host.inflight("c") == 0

    run(scenario)


def test_only_a_true_mark_makes_a_method_cheap() -> None:
    class Odd:
        def __call__(self) -> None: ...

        def __getattr__(self, name: str) -> object:
            raise RuntimeError("no attributes here")

    def plain() -> None: ...

    truthy = cheap(lambda: None)
    assert is_cheap(truthy)
    assert not is_cheap(plain)
    assert not is_cheap(Odd())  # an attribute lookup that raises is no mark
    plain.__ha_serving_cheap__ = "yes"  # type: ignore[attr-defined]
    assert not is_cheap(plain)


# --- the cap: max_concurrency across every caller ----------------------------------------

COUNTER = "counter:Counter"


async def add_counter(host: InstanceHost, ledger: Path, cap: int | None, iid: str = "i1") -> None:
    """A counter instance (each run of its user code is a line of ``ledger``), capped."""
    config = {"ledger": str(ledger)}
    await host.add_instance(iid, package("counter"), COUNTER, "v1", config, max_concurrency=cap)


async def until_inflight(host: InstanceHost, n: int, iid: str = "i1") -> None:
    while host.inflight(iid) != n:
        await asyncio.sleep(0.005)


def runs(ledger: Path) -> int:
    return len(ledger.read_text().splitlines()) if ledger.exists() else 0


def test_the_call_beyond_the_cap_is_refused_retry_safe_before_user_code_runs(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger"

    async def scenario(host: InstanceHost) -> None:
        await add_counter(host, ledger, cap=2)
        held = [asyncio.ensure_future(call(host, "awork", 0.3)) for _ in range(2)]
        await until_inflight(host, 2)
        refused = await call(host, "awork", 0)
        assert (refused.ok, refused.code, refused.reached_user_code) == (
            False,
            "RESOURCE_EXHAUSTED",
            False,
        )
        assert (refused.instance_id, refused.version) == ("i1", "v1")
        assert "max_concurrency (2 calls in flight)" in refused.message
        assert host.inflight("i1") == 2  # a refusal is not counted
        assert [r.ok for r in await asyncio.gather(*held)] == [True, True]
        assert runs(ledger) == 2  # the refused call never ran
        assert (await call(host, "awork", 0)).ok  # room again once they ended
        assert runs(ledger) == 3

    run(scenario)


def test_calls_arriving_together_are_counted_as_they_enter_so_the_cap_holds(
    tmp_path: Path,
) -> None:
    """Three calls sent at once on a cap of 2: one is refused, though none had started
    running when the third arrived."""
    ledger = tmp_path / "ledger"

    async def scenario(host: InstanceHost) -> None:
        await add_counter(host, ledger, cap=2)
        results = await asyncio.gather(*(call(host, "awork", 0.05) for _ in range(3)))
        assert sorted(r.code for r in results) == ["OK", "OK", "RESOURCE_EXHAUSTED"]
        assert runs(ledger) == 2

    run(scenario)


def test_a_cap_change_applies_to_the_calls_that_start_after_it(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"

    async def scenario(host: InstanceHost) -> None:
        await add_counter(host, ledger, cap=2)
        held = [asyncio.ensure_future(call(host, "awork", 0.3)) for _ in range(2)]
        await until_inflight(host, 2)
        host.set_max_concurrency("i1", 1)  # lowered under two running calls: they run on
        assert host.stats()["i1"]["max_concurrency"] == 1
        assert (await call(host, "awork", 0)).code == "RESOURCE_EXHAUSTED"
        host.set_max_concurrency("i1", 3)
        assert (await call(host, "awork", 0)).ok  # the third slot
        host.set_max_concurrency("i1", None)  # no cap
        more = await asyncio.gather(*(call(host, "awork", 0) for _ in range(5)))
        assert all(r.ok for r in more)
        assert [r.ok for r in await asyncio.gather(*held)] == [True, True]
        assert runs(ledger) == 8
        with pytest.raises(UnknownInstance):
            host.set_max_concurrency("ghost", 1)
        with pytest.raises(InvalidSpec, match="below 1"):
            host.set_max_concurrency("i1", 0)
        with pytest.raises(InvalidSpec, match="below 1"):
            await add_counter(host, ledger, cap=0, iid="i2")
        assert "i2" not in host.stats()

    run(scenario)


def test_a_capped_instance_still_drains_and_counts_a_cancelled_callers_call(
    tmp_path: Path,
) -> None:
    """Refusals leave the in-flight count and ``wait_idle`` as they were; a call whose
    caller was cancelled holds its slot until its user code ends."""
    ledger = tmp_path / "ledger"

    async def scenario(host: InstanceHost) -> None:
        await add_counter(host, ledger, cap=1)
        waiter = asyncio.ensure_future(call(host, "awork", 0.3))
        await until_inflight(host, 1)
        waiter.cancel()
        assert (await call(host, "awork", 0)).code == "RESOURCE_EXHAUSTED"
        assert host.stats()["i1"]["inflight"] == 1
        assert not await host.wait_idle("i1", 0.01)
        assert await host.wait_idle("i1", 5)
        assert host.inflight("i1") == 0
        assert (await call(host, "awork", 0)).ok
        assert runs(ledger) == 2

    run(scenario)


def test_a_worker_takes_the_cap_with_the_instance_and_changes_it_as_a_control_call() -> None:
    """``add_instance`` without ``max_concurrency`` (callers that predate the cap) caps
    nothing; a repeated add sets the cap it carries; errors come back as values."""

    async def scenario() -> None:
        worker = BackendWorker("w1", call_threads=4)
        pkg = package("echo_v1")
        args = {"package": pkg.data, "digest": pkg.digest, "import_path": ECHO, "version": "v1"}
        assert (await worker.add_instance("old", **args)).ok
        assert (await worker.add_instance("i1", **args, max_concurrency=4)).ok
        caps = {i: s["max_concurrency"] for i, s in (await worker.stats()).items()}
        assert caps == {"old": None, "i1": 4}
        assert (await worker.add_instance("i1", **args, max_concurrency=6)).ok  # a re-add
        assert (await worker.set_max_concurrency("old", 2)).ok
        caps = {i: s["max_concurrency"] for i, s in (await worker.stats()).items()}
        assert caps == {"old": 2, "i1": 6}
        missing = await worker.set_max_concurrency("ghost", 2)
        assert (missing.ok, missing.code) == (False, "NOT_FOUND")
        bad = await worker.set_max_concurrency("i1", 0)
        assert (bad.ok, bad.code) == (False, "INVALID_ARGUMENT")
        assert (await worker.stats())["i1"]["max_concurrency"] == 6
        await worker.shutdown(grace_s=0)

    asyncio.run(scenario())

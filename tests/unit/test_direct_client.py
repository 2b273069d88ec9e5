"""The SDK's direct mode (issue 14's "direct client -> worker, the proxy a directory"):
real ``Client``/``AsyncClient``s in ``mode="direct"`` against a real ``ProxyServer`` (the
directory, ``Serving.Routes``, and the fallback) and real ``DirectServer``s over gRPC on
loopback, with in-process hosts. No Ray. Executions are counted by the ``counter``
fixture service's ledger, which every run of its user code appends to."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from ha_serving._errors import CallError, InvalidSpec
from ha_serving._settings import ClientSettings, Settings
from ha_serving._wire import ROUTES_METHOD, RouteEntry
from ha_serving.client import AsyncClient, Client, DirectStats
from ha_serving.proto.serving_pb2 import RoutesReply, RoutesRequest
from ha_serving.util.tls import TlsFiles, issue, make_ca
from infra.ports import node_address
from infra.stack import make_certificates
from infra.topology import Database, Topology
from tests.unit.fixtures.dataplane import Stack, running_stack, seeded
from tests.unit.test_direct import (
    add_counter,
    dead_address,
    host_of,
    ledger_lines,
    readdress,
    worker_process,
)
from tests.unit.test_proxy_server import until

__all__ = ["worker_process"]  # a fixture, imported for the kill test

FAST = ClientSettings(routes_refresh_s=0.05, retry_backoff_s=0.0)
"""Routes refetched every 50 ms, so a test sees a table change quickly."""


def direct_client(
    stack: Stack, settings: ClientSettings = FAST, *, tls: TlsFiles | None = None
) -> Client:
    return Client([stack.address], mode="direct", settings=settings, rng=seeded(7), tls=tls)


def current(client: Client) -> DirectStats:
    stats = client.direct_stats()
    assert stats is not None
    return stats


def proxied(stack: Stack) -> int:
    """Calls the proxy ever routed (0: every call went direct)."""
    return sum(stack.server.routed().values())


def routes(stack: Stack, service: str = "echo") -> RoutesReply:
    channel = grpc.insecure_channel(stack.address)
    try:
        fetch = channel.unary_unary(
            ROUTES_METHOD,
            request_serializer=RoutesRequest.SerializeToString,
            response_deserializer=RoutesReply.FromString,
        )
        reply: RoutesReply = fetch(RoutesRequest(service=service), timeout=5)
        return reply
    finally:
        channel.close()


# --- the directory --------------------------------------------------------------------


def test_the_directory_lists_only_entries_with_a_direct_address_by_worker() -> None:
    with running_stack(direct=True, cluster="c7") as stack:
        stack.add("a", worker="w1", max_concurrency=3)
        stack.add("b", worker="w1", version="v2")
        stack.add("c", worker="w2", direct=False)  # no direct server: proxy only
        stack.entries["b"] = dataclasses.replace(stack.entries["b"], group="candidate")
        version = stack.publish(candidate_weight=25)
        reply = routes(stack)
        assert (reply.service, reply.version, reply.cluster) == ("echo", version, "c7")
        assert reply.candidate_weight == 25
        assert [(w.worker, w.address) for w in reply.workers] == [
            ("w1", stack.servers["w1"].address)
        ]
        got = [
            (i.instance_id, i.version, i.group, i.max_concurrency)
            for i in reply.workers[0].instances
        ]
        assert got == [("a", "v1", "stable", 3), ("b", "v2", "candidate", 8)]
        with pytest.raises(grpc.RpcError) as other:
            routes(stack, service="nope")
        assert other.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


# --- the direct path ------------------------------------------------------------------


def test_calls_go_to_the_workers_and_never_through_the_proxy() -> None:
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1")
        stack.add("b", worker="w2")
        with direct_client(stack) as client:
            answered = Counter(
                client.call_raw("echo", "echo", b'"x"').instance_id for _ in range(40)
            )
            stats = client.direct_stats()
        assert set(answered) == {"a", "b"}
        assert proxied(stack) == 0
        assert stack.caller.calls == []
        assert stats is not None
        assert (stats.direct, stats.proxied, stats.fallbacks) == (40, 0, 0)
        assert stats.refreshes >= 1


def test_the_async_client_calls_the_workers_directly_too() -> None:
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1", max_concurrency=32)

        async def scenario() -> tuple[list[object], DirectStats | None]:
            async with AsyncClient(
                [stack.address], mode="direct", settings=FAST, rng=seeded(1)
            ) as client:
                await client.call("echo", "echo", 0)  # fetches the routes
                out = await asyncio.gather(*(client.call("echo", "echo", k) for k in range(20)))
                return [o["echo"] for o in out], client.direct_stats()  # type: ignore[index]

        echoed, stats = stack.run(scenario())
        assert echoed == list(range(20))
        assert proxied(stack) == 0
        assert stats is not None
        assert (stats.direct, stats.fallbacks) == (21, 0)


def test_version_groups_share_calls_by_the_tables_weight() -> None:
    with running_stack(direct=True) as stack:
        stack.add("s1", worker="w1", max_concurrency=64)
        stack.add("c1", worker="w2", max_concurrency=64, version="v2")
        stack.entries["c1"] = dataclasses.replace(stack.entries["c1"], group="candidate")
        stack.publish(candidate_weight=20)
        with direct_client(stack) as client:
            versions = Counter(client.call_raw("echo", "echo", b"1").version for _ in range(400))
        assert proxied(stack) == 0
        assert 0.13 < versions["v2"] / 400 < 0.27, versions


def test_at_its_cap_the_client_answers_resource_exhausted_and_sends_nothing() -> None:
    """Two calls hold the only instance's cap of 2: a third is refused at once with
    RESOURCE_EXHAUSTED, neither queued nor sent through the proxy (which would add its
    own share on the saturated instance)."""
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1", max_concurrency=2)
        host = stack.host("w1")

        async def scenario() -> tuple[str, list[object], DirectStats | None]:
            async with AsyncClient([stack.address], mode="direct", settings=FAST) as client:
                await client.call("echo", "echo", 0)  # the routes are held from here
                slow = [asyncio.ensure_future(client.call("echo", "aslow", 0.5)) for _ in range(2)]
                while host.inflight("a") < 2:
                    await asyncio.sleep(0.005)
                with pytest.raises(CallError) as full:
                    await client.call("echo", "echo", 1)
                return full.value.code, await asyncio.gather(*slow), client.direct_stats()

        code, slow, stats = stack.run(scenario())
        assert code == "RESOURCE_EXHAUSTED"
        assert slow == [0.5, 0.5]
        assert proxied(stack) == 0
        assert stats is not None
        assert stats.fallbacks == 0


def test_an_instance_its_worker_holds_at_its_cap_is_refused_unrun_and_the_call_runs_on_another(
    tmp_path: Path,
) -> None:
    """The worker counts every caller: another caller (a proxy) holds a's cap of 1,
    which this client's own count does not see. a's worker refuses the calls routed
    there unrun and the client tries b, directly; with b held too, the call is
    RESOURCE_EXHAUSTED after trying both, never sent through the proxy."""
    first, second = tmp_path / "w1.ledger", tmp_path / "w2.ledger"
    with running_stack(direct=True) as stack:
        add_counter(stack, "a", "w1", first, host_cap=1)
        add_counter(stack, "b", "w2", second, host_cap=1)
        with direct_client(stack) as client:
            client.call("echo", "thread", 0)  # the routes are held from here (no run noted)
            held_a = stack.hold("w1", "a", "awork", 2.0)
            answered = [client.call_raw("echo", "work", b"0").instance_id for _ in range(20)]
            assert stack.host("w1").inflight("a") == 1  # held all along
            held_b = stack.hold("w2", "b", "awork", 1.0)
            with pytest.raises(CallError) as full:
                client.call("echo", "work", 0)
            stats = current(client)
        assert answered == ["b"] * 20
        assert full.value.code == "RESOURCE_EXHAUSTED"
        assert "at its max_concurrency" in str(full.value)
        assert "every instance tried is at its cap" in str(full.value)
        assert held_a.result(5).ok
        assert held_b.result(5).ok
        assert ledger_lines(first) == ["ran"]  # only the held call ran on a
        assert ledger_lines(second) == ["ran"] * 21  # and the held call
        assert proxied(stack) == 0
        assert (stats.direct, stats.fallbacks, stats.ejections) == (22, 0, 0)  # and "thread"


def test_the_deadline_is_carried_to_the_worker_and_a_late_call_is_not_retried() -> None:
    """The call ends at the client's deadline with DEADLINE_EXCEEDED, not retried
    anywhere: the user code may be (and is) still running on the worker."""
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1")
        stack.add("b", worker="w2")
        with direct_client(stack) as client:
            client.call("echo", "echo", 0)
            started = time.monotonic()
            with pytest.raises(CallError) as late:
                client.call("echo", "aslow", 1.0, timeout=0.2)
            elapsed = time.monotonic() - started
        assert late.value.code == "DEADLINE_EXCEEDED"
        assert 0.15 < elapsed < 0.8
        assert proxied(stack) == 0
        busy = {w: stack.host(w).inflight(i) for w, i in (("w1", "a"), ("w2", "b"))}
        assert sorted(busy.values()) == [0, 1]  # running once, on one worker


# --- failures -------------------------------------------------------------------------


def test_a_worker_that_cannot_be_reached_is_ejected_and_the_call_runs_once_elsewhere(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "w1.ledger", tmp_path / "w2.ledger"
    with running_stack(direct=True) as stack:
        add_counter(stack, "a", "w1", first)
        add_counter(stack, "b", "w2", second)
        readdress(stack, "a", dead_address(host_of(stack)))
        settings = FAST.model_copy(update={"routes_refresh_s": 30.0, "direct_eject_s": 30.0})
        with direct_client(stack, settings) as client:
            answered = [client.call_raw("echo", "work", b"0").instance_id for _ in range(10)]
            stats = client.direct_stats()
        assert answered == ["b"] * 10
        assert ledger_lines(second) == ["ran"] * 10  # each call ran exactly once
        assert ledger_lines(first) == []
        assert proxied(stack) == 0  # the retry went to the other worker, directly
        assert stats is not None
        assert stats.ejections == 1  # once ejected, w1 was not tried again
        assert stats.direct == 10


def test_a_call_that_reached_its_worker_and_failed_is_not_retried(
    tmp_path: Path,
) -> None:
    """Each worker holds one slow call (cap 1); w1's direct server stops under its call.
    That call fails UNAVAILABLE: it ran once on w1 and is run nowhere else, neither on w2
    nor through the proxy, though either could take it."""
    first, second = tmp_path / "w1.ledger", tmp_path / "w2.ledger"
    with running_stack(direct=True) as stack, ThreadPoolExecutor(2) as pool:
        add_counter(stack, "a", "w1", first, max_concurrency=1)
        add_counter(stack, "b", "w2", second, max_concurrency=1)
        with direct_client(stack) as client:
            client.call("echo", "thread", 0)  # the routes are held from here (no run noted)
            runs = [pool.submit(client.call_raw, "echo", "work", b"0.6") for _ in range(2)]
            until(lambda: ledger_lines(first) == ["ran"] and ledger_lines(second) == ["ran"])
            stack.run(stack.servers["w1"].stop(0))
            outcomes = []
            for run in runs:
                try:
                    outcomes.append(run.result(timeout=10).instance_id)
                except CallError as err:
                    outcomes.append(err.code)
            stats = client.direct_stats()
        assert sorted(outcomes) == ["UNAVAILABLE", "b"]
        assert stack.run(stack.host("w1").wait_idle("a", 5))
        assert ledger_lines(first) == ["ran"]
        assert ledger_lines(second) == ["ran"]  # no second run of the failed call
        assert proxied(stack) == 0
        assert stats is not None
        assert (stats.ejections, stats.fallbacks) == (1, 0)


def test_a_worker_killed_mid_call_gives_an_explicit_error_and_never_a_second_run(
    worker_process: tuple[subprocess.Popen[str], str, Path], tmp_path: Path
) -> None:
    proc, address, ledger = worker_process
    other = tmp_path / "w2.ledger"
    with running_stack(direct=True) as stack, ThreadPoolExecutor(1) as pool:
        stack.entries["k"] = RouteEntry("k", "wk", "v1", 8, address=address)
        stack.publish()
        with direct_client(stack) as client:
            running = pool.submit(client.call_raw, "echo", "work", b"30", timeout=20)
            until(lambda: ledger_lines(ledger) == ["ran"], timeout_s=10)
            add_counter(stack, "b", "w2", other)  # somewhere a retry could go
            proc.kill()
            proc.wait(timeout=10)
            with pytest.raises(CallError) as killed:
                running.result(timeout=10)
            assert killed.value.code == "UNAVAILABLE"
            assert "may have run" in killed.value.message
            assert ledger_lines(ledger) == ["ran"]
            assert ledger_lines(other) == []
            until(lambda: client.call_raw("echo", "work", b"0").instance_id == "b")
            assert ledger_lines(ledger) == ["ran"]


# --- routes: refresh and fallback -----------------------------------------------------


def test_without_direct_routes_calls_go_through_the_proxy() -> None:
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1", direct=False)  # the proxy reaches it its own way
        with direct_client(stack) as client:
            for _ in range(5):
                assert client.call_raw("echo", "echo", b"1").instance_id == "a"
            stats = client.direct_stats()
        assert proxied(stack) == 5
        assert stats is not None
        assert (stats.direct, stats.proxied, stats.fallbacks) == (0, 5, 5)


def test_the_client_follows_a_worker_change_through_the_directory() -> None:
    """a (on w1) leaves the table and b (on w2) enters: within a few refresh periods the
    client's calls go to b, still directly."""
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1")
        with direct_client(stack) as client:
            assert client.call_raw("echo", "echo", b"1").instance_id == "a"
            stack.add("b", worker="w2")
            stack.unroute("a")
            until(lambda: client.call_raw("echo", "echo", b"1").instance_id == "b")
            assert {client.call_raw("echo", "echo", b"1").instance_id for _ in range(10)} == {"b"}
            stats = client.direct_stats()
        assert proxied(stack) == 0
        assert stats is not None
        assert stats.refreshes >= 2


def test_an_instance_removed_before_the_client_refreshed_is_refused_unrun_and_served_elsewhere(
    tmp_path: Path,
) -> None:
    """Routes held for 30 s still list a drained and removed instance: its worker
    refuses the call unrun ("not hosted"), which goes to the proxy (the client knows no
    other instance), runs once there, and marks the routes stale: the next calls, after
    a fetch, go directly to the new instance."""
    first, second = tmp_path / "w1.ledger", tmp_path / "w2.ledger"
    with running_stack(direct=True) as stack:
        add_counter(stack, "a", "w1", first)
        settings = FAST.model_copy(update={"routes_refresh_s": 30.0})
        with direct_client(stack, settings) as client:
            assert client.call_raw("echo", "work", b"0").instance_id == "a"
            add_counter(stack, "b", "w2", second)
            stack.unroute("a")
            stack.run(stack.host("w1").remove_instance("a"))
            calls = 0

            def direct_again() -> bool:
                nonlocal calls
                calls += 1
                assert client.call_raw("echo", "work", b"0").instance_id == "b"
                return current(client).direct == 2

            until(direct_again)  # within MIN_REFRESH_GAP_S of the first refusal
            stats = current(client)
        assert ledger_lines(first) == ["ran"]
        assert ledger_lines(second) == ["ran"] * calls  # each call ran exactly once
        assert proxied(stack) == stats.fallbacks == calls - 1 >= 1
        assert (stats.direct, stats.ejections) == (2, 0)  # "not hosted" ejects no worker


def test_a_directory_that_does_not_answer_is_asked_at_most_once_per_refresh_period() -> None:
    dead = dead_address("127.0.77.251")
    settings = FAST.model_copy(
        update={"routes_refresh_s": 30.0, "max_attempts": 1, "timeout_s": 1.0}
    )
    with Client([dead], mode="direct", settings=settings) as client:
        for _ in range(5):
            with pytest.raises(CallError) as failed:
                client.call("echo", "echo", 1)
            assert failed.value.code == "UNAVAILABLE"
        stats = client.direct_stats()
    assert stats is not None
    assert (stats.refreshes, stats.refresh_failures, stats.fallbacks) == (0, 1, 5)


# --- TLS ------------------------------------------------------------------------------


def test_under_tls_direct_mode_needs_a_client_certificate_and_then_speaks_mutual_tls(
    tmp_path: Path,
) -> None:
    d = tmp_path / "tls"
    d.mkdir(mode=0o700)
    ca = make_ca(d)
    host = "127.0.77.253"
    proxy_cert = issue(ca, d, "proxy", hosts=[host], server=True, client=True)
    with pytest.raises(InvalidSpec, match="needs a client certificate"):
        Client([f"{host}:1"], mode="direct", tls=TlsFiles(ca.ca))
    with pytest.raises(InvalidSpec, match="needs a client certificate"):
        AsyncClient([f"{host}:1"], mode="direct", tls=TlsFiles(ca.ca))
    mine = issue(ca, d, "sdk-client", hosts=["sdk"], server=False, client=True)
    with running_stack(direct=True, tls=proxy_cert, bind=host) as stack:
        stack.add("a", worker="w1")
        with direct_client(stack, tls=mine) as client:
            assert client.call("echo", "echo", {"x": 1})["echo"] == {"x": 1}  # type: ignore[index]
            stats = client.direct_stats()
        assert proxied(stack) == 0
        assert stats is not None
        assert stats.direct == 1


def test_the_client_certificate_up_issues_is_taken_by_the_workers_direct_servers(
    tmp_path: Path,
) -> None:
    """The certificates of a TLS stack as `up` makes them: proxy and direct servers show
    ``proxy.pem`` on a node's address and want a client certificate of the stack's CA;
    an SDK client given ``Topology.direct_client_tls()`` (``client.pem``) calls the
    workers directly, and the proxy routes nothing."""
    paths = make_certificates(Settings(), tmp_path / "tls")
    topo = Topology(
        run_dir=tmp_path,
        run_id="r1",
        created_at=0.0,
        clusters=[],
        db=Database(kind="sqlite", public_url=f"sqlite:///{tmp_path}/x.db"),
        redis=None,
        tls=paths,
    )
    mine = topo.direct_client_tls()
    assert mine is not None
    assert mine.cert == str(paths.client_cert)
    with running_stack(direct=True, tls=topo.proxy_tls(), bind=node_address(9, 8)) as stack:
        stack.add("a", worker="w1")
        stack.add("b", worker="w2")
        with direct_client(stack, tls=mine) as client:
            for k in range(6):
                assert client.call("echo", "echo", k)["echo"] == k  # type: ignore[index]
            stats = current(client)
    assert proxied(stack) == 0
    assert (stats.direct, stats.proxied, stats.ejections) == (6, 0, 0)

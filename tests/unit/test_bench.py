"""The bench without Ray: its bare direct client (``drive_direct``) and its readiness
check against real ``DirectServer``s on loopback, the SDK's sides (``drive_sdk`` in
proxy and direct mode, plaintext and TLS with the certificates `up` makes, and the check
that the direct side really goes direct) against a real proxy, which arguments it
refuses, and the report's ratios and table on synthetic sides."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from bench.grpc_vs_serve import BARE, DIRECT, OURS, SERVE, _parser, print_table, refused, report
from bench.harness import SERVICE, Side, direct_code, drive, wait_answering, wait_direct
from ha_serving._settings import Settings
from ha_serving.util.tls import TlsFiles
from infra.ports import node_address
from infra.stack import make_certificates
from tests.unit.fixtures.dataplane import Stack, running_stack


def test_the_direct_client_calls_every_route_and_counts_only_echoes_as_ok() -> None:
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1")
        stack.add("b", worker="w2")
        routes = [(stack.servers[w].address, w, i) for w, i in (("w1", "a"), ("w2", "b"))]
        wait_direct(routes, timeout_s=5)
        out = drive([], [], 4, 0.0, 0.3, routes=routes)
    assert out["errors"] == {}
    assert len(out["latencies"]) == out["all_calls"] > 0
    assert out["client_cpu_s"] > 0


def test_the_direct_client_takes_a_route_per_call_in_turn() -> None:
    """One task, a good route and one naming another worker (refused unrun): per-call
    round-robin alternates them, so each takes half the calls (a route per task would
    give all to the first)."""
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1")
        address = stack.servers["w1"].address
        out = drive([], [], 1, 0.0, 0.3, routes=[(address, "w1", "a"), (address, "w9", "a")])
    ok, refused = len(out["latencies"]), out["errors"]["FAILED_PRECONDITION"]
    assert set(out["errors"]) == {"FAILED_PRECONDITION"}
    assert ok > 0
    assert abs(ok - refused) <= 1


def test_a_worker_error_answer_counts_under_its_code_and_fails_the_readiness_check() -> None:
    with running_stack(direct=True) as stack:
        stack.add("a", worker="w1")
        route = (stack.servers["w1"].address, "w1", "no-such-instance")
        out = drive([], [], 2, 0.0, 0.2, routes=[route])
        with pytest.raises(RuntimeError, match="no-such-instance answered"):
            wait_direct([route], timeout_s=5)
    assert out["latencies"] == []
    assert sum(out["errors"].values()) == out["all_calls"] > 0
    assert not {"OK", "BAD_REPLY", "NOT_OK"} & set(out["errors"])


def test_direct_code() -> None:
    assert direct_code(True, "", b'{"echo": "ping"}') == "OK"
    assert direct_code(True, "", b"{}") == "BAD_REPLY"
    assert direct_code(False, "USER_ERROR", b"") == "USER_ERROR"
    assert direct_code(False, "", b"") == "NOT_OK"


# --- the SDK's sides (--sdk) ------------------------------------------------------------


def routed(stack: Stack) -> int:
    """Calls the proxy routed (0: none took the proxy path)."""
    return sum(stack.server.routed().values())


def test_the_sdk_in_proxy_mode_calls_through_the_proxy_and_counts_only_echoes_as_ok() -> None:
    with running_stack(SERVICE) as stack:
        stack.add("a", worker="w1")
        out = drive([stack.address], [], 4, 0.0, 0.3, sdk="proxy")
        assert routed(stack) == out["all_calls"] + 1 > 1  # + the call priming the client
    assert out["errors"] == {}
    assert len(out["latencies"]) == out["all_calls"]
    assert out["direct_stats"] == {}  # proxy mode has none


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_the_sdk_in_direct_mode_calls_the_workers_and_never_the_proxy(
    tmp_path: Path, tls: bool
) -> None:
    """Under TLS with the certificates `up` makes: the proxy and the direct servers show
    ``proxy.pem`` and the SDK shows ``client.pem``, as the bench's direct side does."""
    direct = Side(DIRECT, [], [], sdk="direct")
    server_tls = None
    if tls:
        paths = make_certificates(Settings(), tmp_path / "tls")
        direct.ca, direct.client_cert, direct.client_key = (
            str(paths.ca),
            str(paths.client_cert),
            str(paths.client_key),
        )
        server_tls = TlsFiles(str(paths.ca), str(paths.proxy_cert), str(paths.proxy_key))
    with running_stack(SERVICE, direct=True, tls=server_tls, bind=node_address(9, 8)) as stack:
        stack.add("a", worker="w1")
        stack.add("b", worker="w2")
        direct.targets = [stack.address]
        wait_answering(direct, timeout_s=5)
        out = drive(
            direct.targets,
            [],
            4,
            0.0,
            0.3,
            ca=direct.ca,
            sdk=direct.sdk,
            client_cert=direct.client_cert,
            client_key=direct.client_key,
        )
        assert routed(stack) == 0
    assert out["errors"] == {}
    assert len(out["latencies"]) == out["all_calls"] > 0
    stats = out["direct_stats"]
    assert (stats["direct"], stats["proxied"], stats["ejections"]) == (out["all_calls"], 0, 0)


def test_the_direct_sides_readiness_check_refuses_a_client_that_only_reaches_the_proxy() -> None:
    """No direct route (the worker has no direct address): the SDK answers through the
    proxy, its fallback, and the check says so rather than let the bench measure the
    proxy path under the direct side's name."""
    with running_stack(SERVICE, direct=True) as stack:
        stack.add("a", worker="w1", direct=False)
        direct = Side(DIRECT, [stack.address], [], sdk="direct")
        with pytest.raises(RuntimeError, match="reached no worker directly"):
            wait_answering(direct, timeout_s=0.5)
        assert routed(stack) > 0


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        ([], None),
        (["--direct-client"], None),
        (["--tls"], None),
        (["--sdk"], None),
        (["--sdk", "--direct-client", "--tls"], None),
        (["--direct-client", "--tls"], "bare --direct-client calls the workers in plaintext"),
        (["--ours-cluster", "b"], "must differ"),
    ],
)
def test_only_the_bare_direct_client_is_refused_tls(argv: list[str], problem: str | None) -> None:
    found = refused(_parser().parse_args(argv))
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def side(name: str, rps: float, latency_ms: float, proxies: int = 1) -> Side:
    """A side that served ``rps`` for 2 s, every call taking ``latency_ms``."""
    s = Side(name, [f"127.0.0.1:{k}" for k in range(proxies)], [])
    s.latencies = [latency_ms / 1000] * int(rps * 2)
    s.seconds, s.calls, s.rounds = 2.0, int(rps * 2), [rps]
    s.cpu_s.update({"client": 0.5, "replicas": 1.0, "machine": 2.0})
    return s


ARGS = argparse.Namespace(replicas=2, concurrency=16, duration=4.0, rounds=2, warmup=1.0)


def table(out: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> str:
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    print_table(out)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_the_report_gives_the_direct_side_over_ours_whatever_the_order_of_sides() -> None:
    sides = [side(OURS, 1000, 4), side(DIRECT, 1500, 2, 0), side(SERVE, 200, 20)]
    out = report([*sides, side(BARE, 800, 5)], ARGS)
    ratios = out["ratios"]
    assert ratios["throughput_ours_over_serve"] == 5.0
    assert ratios["p99_serve_over_ours"] == 5.0
    assert ratios["throughput_ours_over_bare"] == 1.25
    assert ratios["throughput_direct_over_ours"] == 1.5
    assert ratios["p99_direct_over_ours"] == 0.5
    assert [r["proxies"] for r in out["results"]] == [1, 0, 1, 1]


def test_without_the_direct_side_the_report_has_no_direct_ratios() -> None:
    out = report([side(OURS, 1000, 4), side(SERVE, 200, 20)], ARGS)
    assert set(out["ratios"]) == {"throughput_ours_over_serve", "p99_serve_over_ours"}


@pytest.mark.parametrize(
    ("rps", "latency_ms", "verdict"),
    [(1500, 2, "the direct client wins"), (1500, 5, "does not win"), (900, 2, "does not win")],
)
def test_the_table_says_whether_the_direct_client_wins(
    monkeypatch: pytest.MonkeyPatch, rps: float, latency_ms: float, verdict: str
) -> None:
    out = report([side(OURS, 1000, 4), side(SERVE, 200, 20), side(DIRECT, rps, latency_ms)], ARGS)
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    print_table(out)
    line = next(x for x in buffer.getvalue().splitlines() if x.startswith("direct/ours"))
    assert verdict in line
    assert f"{DIRECT}:" in buffer.getvalue()


def test_a_run_whose_calls_failed_exits_1_and_claims_no_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A side whose every call failed (a TLS client against plaintext proxies) once gave
    "67x": failed calls still count as requests, so such a run must not pass as one."""
    import bench.grpc_vs_serve as bench

    failing = side(OURS, 1000, 4)
    failing.errors.update({"UNAVAILABLE": 50})
    monkeypatch.setattr(
        bench, "run", lambda _args, _log: report([failing, side(SERVE, 200, 20)], ARGS)
    )
    assert bench.main([]) == 1
    assert "error: calls failed (ha_serving proxy: 50 of 2,050)" in capsys.readouterr().err
    monkeypatch.setattr(
        bench, "run", lambda _args, _log: report([side(OURS, 1000, 4), side(SERVE, 200, 20)], ARGS)
    )
    assert bench.main([]) == 0


def test_with_the_sdk_the_table_says_who_drove_which_side_and_where_direct_calls_went(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, direct = side(OURS, 1000, 4), side(DIRECT, 1500, 2)
    ours.sdk, direct.sdk = "proxy", "direct"
    direct.direct_stats.update({"direct": 2990, "proxied": 10, "ejections": 1, "refreshes": 7})
    out = report([ours, side(SERVE, 200, 20), direct], ARGS)
    assert out["config"]["sdk"] is True
    clients = {r["system"]: r["client"] for r in out["results"]}
    assert clients == {
        OURS: "SDK AsyncClient, mode proxy",
        SERVE: "bare gRPC stub",
        DIRECT: "SDK AsyncClient, mode direct",
    }
    assert "direct_stats" not in out["results"][0]
    text = table(out, monkeypatch)
    assert "driven by the SDK (AsyncClient), Ray Serve's by a bare stub" in text
    assert "2990 calls direct, 10 through a proxy, 1 ejections, 7 route fetches" in text


def test_without_the_sdk_the_table_says_every_side_is_a_bare_stub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = report([side(OURS, 1000, 4), side(SERVE, 200, 20), side(DIRECT, 1500, 2)], ARGS)
    assert out["config"]["sdk"] is False
    text = table(out, monkeypatch)
    assert "every side driven by a bare gRPC stub" in text
    assert "round-robin" in text
    assert "calls direct" not in text

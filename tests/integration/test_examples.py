"""The examples deployed on a real stack: payment_strategy's fan-out and model_serving's
in-place weight swap under load."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ha_serving._errors import CallError
from ha_serving._spec import load_spec
from ha_serving.backend import InstanceHost, make_package
from ha_serving.cli._services import ServiceOps
from ha_serving.client import Client
from tests.integration.load import Load

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PAYMENT = "payment-strategy"
MODEL = "model-serving"


def _quiet(_: dict[str, Any]) -> None:
    return None


def _deploy(ops: ServiceOps, example: str, spec_file: str) -> dict[str, Any]:
    spec = load_spec(EXAMPLES / example / spec_file)
    ops.deploy(spec, EXAMPLES / example / "code")
    return ops.wait(spec.name, timeout_s=120, progress=_quiet)


def _client(ops: ServiceOps, service: str) -> Client:
    addresses = [e.address for e in ops.store.list_endpoints(service)]
    return Client(addresses, timeout_s=10, tls=ops.client_tls)


# --- payment_strategy ------------------------------------------------------------------


def _payment_request(banks: int, indicators: int, time: str = "2024-05-01T12:00") -> dict:
    names = [f"ind-{k}" for k in range(indicators)]
    return {"time": time, "banks": {f"bank-{b}": list(names) for b in range(banks)}}


@pytest.fixture(scope="module")
def payment(ops: ServiceOps) -> Iterator[Client]:
    view = _deploy(ops, "payment_strategy", "payment_strategy.yaml")
    assert [i["phase"] for i in view["instances"]] == ["serving"] * 2
    with _client(ops, PAYMENT) as client:
        yield client


def test_payment_strategy_20x10_is_ranked_merged_and_deterministic(payment: Client) -> None:
    """20 banks x 10 indicators: every bank ranked once by descending score, each with its
    10 indicators; the same request gives the same answer (except ``meta``) every time,
    whichever instance serves it; another time gives other values."""
    request = _payment_request(20, 10)
    replies = [payment.call(PAYMENT, "evaluate", request) for _ in range(6)]
    first = replies[0]
    assert isinstance(first, dict)
    ranking = first["ranking"]
    assert [r["rank"] for r in ranking] == list(range(1, 21))
    assert sorted(r["bank"] for r in ranking) == sorted(request["banks"])
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    for r in ranking:
        assert list(r["indicators"]) == [f"ind-{k}" for k in range(10)]
        values = [v["value"] for v in r["indicators"].values()]
        assert math.isclose(r["score"], sum(values) / 10, abs_tol=1e-6)
        assert r["weakest_indicator"] in r["indicators"]
    summary = first["summary"]
    assert summary["banks"] == 20
    assert summary["indicators"] == 200
    assert (summary["best"], summary["worst"]) == (ranking[0]["bank"], ranking[-1]["bank"])
    assert summary["score_max"] == scores[0]
    assert summary["score_min"] == scores[-1]
    # the dispatcher used its whole pool of indicator workers
    assert first["meta"]["dispatcher"]["workers"] == 8
    assert sum(first["meta"]["dispatcher"]["done"]) >= 200
    stripped = [{k: v for k, v in r.items() if k != "meta"} for r in replies]  # type: ignore[union-attr]
    assert all(s == stripped[0] for s in stripped[1:])
    other = payment.call(PAYMENT, "evaluate", _payment_request(20, 10, time="2024-05-01T12:01"))
    assert other["ranking"] != ranking  # type: ignore[index]


@pytest.mark.parametrize(
    ("request_value", "message"),
    [
        pytest.param({"time": "t"}, "'banks' is required", id="missing-banks"),
        pytest.param({"banks": {"b": ["x"]}}, "'time' is required", id="missing-time"),
        pytest.param(
            {"time": "t", "banks": {"bank-1": "ind-a"}},
            "banks['bank-1'] must be a list of indicator names, got str",
            id="indicators-not-a-list",
        ),
        pytest.param(_payment_request(101, 1), "too many banks: 101 > 100", id="101-banks"),
        pytest.param(["not", "an", "object"], "request must be an object", id="not-an-object"),
    ],
)
def test_payment_strategy_bad_input_is_an_explicit_error(
    payment: Client, request_value: object, message: str
) -> None:
    """Bad input ends in an explicit error carrying the service's ValueError message; the
    service keeps serving afterwards."""
    with pytest.raises(CallError) as caught:
        payment.call(PAYMENT, "evaluate", request_value)
    assert caught.value.code == "UNKNOWN"  # how the platform reports a user exception
    assert "ValueError" in str(caught.value)
    assert message in str(caught.value)
    reply = payment.call(PAYMENT, "evaluate", _payment_request(2, 2))
    assert reply["summary"]["banks"] == 2  # type: ignore[index]


# --- model_serving ---------------------------------------------------------------------

FEATURES = [1.0, 0.5, -1.0, 2.0]
V2 = {"weights_version": "v2", "weights": [-0.5, 0.25, 0.5, 1.5], "bias": -0.2}


def _expected_score(config: dict[str, Any]) -> float:
    z = config["bias"] + sum(w * x for w, x in zip(config["weights"], FEATURES, strict=True))
    return 1.0 / (1.0 + math.exp(-z))


def test_model_serving_reconfigure_mid_call_never_mixes_weights() -> None:
    """In one instance, a new config landing while 50 predictions are half computed (each
    yields between chunks of features): those finish on v1, later calls run on v2, and
    every score matches the weights its reply names. (The platform drains an instance
    before reconfiguring it; this checks the model does not depend on that.)"""
    spec = load_spec(EXAMPLES / "model_serving" / "model_serving.yaml")
    expected = {"v1": _expected_score(spec.config), "v2": _expected_score(V2)}
    payload = json.dumps({"features": FEATURES}).encode()

    async def scenario() -> tuple[list[Any], list[Any]]:
        host = InstanceHost()
        package = make_package(EXAMPLES / "model_serving" / "code")
        await host.add_instance("m0", package, spec.code.import_path, "1", spec.config)
        early = [asyncio.ensure_future(host.call("m0", "predict", payload)) for _ in range(50)]
        await asyncio.sleep(0)  # every early call is now past its first chunk
        await host.reconfigure("m0", V2)
        late = await asyncio.gather(*(host.call("m0", "predict", payload) for _ in range(50)))
        results = await asyncio.gather(*early), late
        await host.close()
        return results

    early, late = asyncio.run(scenario())
    for results, version in ((early, "v1"), (late, "v2")):
        assert all(r.ok for r in results), [r.message for r in results if not r.ok]
        replies = [json.loads(r.payload) for r in results]
        assert {r["weights_version"] for r in replies} == {version}
        assert all(math.isclose(r["score"], expected[version], rel_tol=1e-12) for r in replies)


def test_model_serving_weights_swap_under_load_zero_failures(ops: ServiceOps) -> None:
    """Weights v1 -> v2 by an in-place config update while 4 client threads call
    ``predict``: no request fails, every reply's score is exactly what the weights it
    names give (never a mix of v1 and v2 inside one call), and replies end up all v2."""
    _deploy(ops, "model_serving", "model_serving.yaml")
    v1 = load_spec(EXAMPLES / "model_serving" / "model_serving.yaml").config
    expected = {"v1": _expected_score(v1), "v2": _expected_score(V2)}
    with Load(
        ops.store,
        MODEL,
        method="predict",
        payload={"features": FEATURES},
        keep_replies=10**6,
        tls=ops.client_tls,
    ) as load:
        load.wait_for(100)
        # load_delay_s makes each instance's swap last a while: v1 and v2 serve side by side
        ops.change(MODEL, kind="config", config={**V2, "load_delay_s": 0.5})
        view = ops.wait(MODEL, timeout_s=120, progress=_quiet)
        settled_at = len(load.out.replies)
        load.wait_for(200)
    out = load.out
    assert out.issued == out.recorded, "a request neither succeeded nor failed explicitly"
    assert out.failures == 0, dict(out.codes)
    assert view["history"][-1]["status"] == "succeeded"
    versions = Counter(r["weights_version"] for r in out.replies)
    assert set(versions) == {"v1", "v2"}, versions
    for reply in out.replies:
        assert math.isclose(reply["score"], expected[reply["weights_version"]], rel_tol=1e-12)
    # a call answered after the rollout settled may have started just before: skip a few
    assert {r["weights_version"] for r in out.replies[settled_at + 20 :]} == {"v2"}
    assert len({r["weights_digest"] for r in out.replies}) == 2

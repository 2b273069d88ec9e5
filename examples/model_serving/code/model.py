"""LinearModel: a logistic-regression "model" whose weights are swapped in place.

The weights come from the service config (``weights_version``, ``weights``, ``bias``);
``reconfigure(config)`` validates them into an immutable ``Weights`` and replaces the
model's reference in one assignment. ``predict`` takes that reference once and computes
with it to the end, so every reply is computed entirely with the weights of the
``weights_version`` it reports, even though the computation yields to the event loop
between chunks (as a real model yields while it waits on an accelerator or a feature
store), which is when a new config can land.

Optional config ``load_delay_s`` stands in for fetching a large weights file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

CHUNK = 2
"""Features multiplied between two yields to the event loop."""


@dataclass(frozen=True)
class Weights:
    version: str
    coefficients: tuple[float, ...]
    bias: float
    digest: str
    """Short hash of (version, coefficients, bias): names exactly what computed a reply."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Weights:
        version = config.get("weights_version")
        coefficients = config.get("weights")
        bias = config.get("bias", 0.0)
        if not isinstance(version, str) or not version:
            raise ValueError("config.weights_version must be a non-empty string")
        if not isinstance(coefficients, list) or not coefficients:
            raise ValueError("config.weights must be a non-empty list of numbers")
        if not all(_is_number(c) for c in [*coefficients, bias]):
            raise ValueError("config.weights and config.bias must be numbers")
        values = (tuple(float(c) for c in coefficients), float(bias))
        raw = json.dumps([version, *values]).encode()
        return cls(version, *values, digest=hashlib.sha256(raw).hexdigest()[:12])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class LinearModel:
    def __init__(self) -> None:
        self._weights: Weights | None = None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        weights = Weights.from_config(config)  # validate before touching the model
        await asyncio.sleep(float(config.get("load_delay_s", 0)))
        self._weights = weights  # one assignment: calls see the old or the new, never a mix

    async def predict(self, request: object) -> dict[str, Any]:
        weights = self._weights  # this call's weights, whatever reconfigure does meanwhile
        if weights is None:
            raise RuntimeError("no weights loaded: deploy with config.weights")
        features = _features(request, len(weights.coefficients))
        z = weights.bias
        for start in range(0, len(features), CHUNK):
            z += sum(
                w * x
                for w, x in zip(
                    weights.coefficients[start : start + CHUNK],
                    features[start : start + CHUNK],
                    strict=True,
                )
            )
            await asyncio.sleep(0)  # let other calls (and a reconfigure) run
        return {
            "score": 1.0 / (1.0 + math.exp(-z)),
            "logit": z,
            "weights_version": weights.version,
            "weights_digest": weights.digest,
        }

    def check_health(self) -> bool:
        return self._weights is not None


def _features(request: object, size: int) -> list[float]:
    if not isinstance(request, dict) or "features" not in request:
        raise ValueError('request must be an object {"features": [number, ...]}')
    features = request["features"]
    if not isinstance(features, list) or not all(_is_number(x) for x in features):
        raise ValueError("features must be a list of finite numbers")
    if len(features) != size:
        raise ValueError(f"expected {size} features, got {len(features)}")
    return [float(x) for x in features]

"""One indicator of one bank at one time: a small, deterministic computation.

The input series stands in for what production reads from a feature store (success
rate of the bank's channel per minute); it is generated from a seed derived from
(time, bank, indicator) with a stable hash, so every process, every instance and every
run computes the same value. (Python's ``hash()`` is salted per process: not usable.)
"""

from __future__ import annotations

import hashlib
import math
import random


def seed_of(time_key: str, bank: str, indicator: str) -> int:
    key = f"{time_key}|{bank}|{indicator}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def series(time_key: str, bank: str, indicator: str, length: int) -> list[float]:
    """A success-rate-like series in [0, 1] around a level specific to the triple."""
    rng = random.Random(seed_of(time_key, bank, indicator))  # noqa: S311 - not crypto
    level = 0.90 + 0.09 * rng.random()
    drift = rng.uniform(-0.001, 0.001)
    noise = rng.random
    return [min(1.0, max(0.0, level + drift * i + 0.04 * (noise() - 0.5))) for i in range(length)]


def compute(values: list[float]) -> dict[str, float]:
    """EWMA (recent behaviour), volatility and trend (least-squares slope per point),
    folded into one value: a stable, rising, high series scores best."""
    n = len(values)
    ewma = values[0]
    for v in values[1:]:
        ewma = 0.8 * ewma + 0.2 * v
    mean = sum(values) / n
    volatility = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    x_mean = (n - 1) / 2
    denom = n * (n * n - 1) / 12  # sum of (i - x_mean)^2 for i in 0..n-1
    trend = sum((i - x_mean) * v for i, v in enumerate(values)) / denom
    value = ewma - 2.0 * volatility + 10.0 * trend
    return {
        "value": round(value, 6),
        "ewma": round(ewma, 6),
        "volatility": round(volatility, 6),
        "trend": round(trend, 8),
    }

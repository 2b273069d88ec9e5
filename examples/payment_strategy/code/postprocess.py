"""Merge per bank, then post-process the whole request: ranking and summary stats."""

from __future__ import annotations

import math
from typing import Any


def merge_bank(bank: str, names: tuple[str, ...], results: list[dict[str, float]]) -> dict:
    """One bank's indicators -> its score (mean value) and weakest indicator."""
    by_name = dict(zip(names, results, strict=True))
    score = math.fsum(r["value"] for r in results) / len(results)
    weakest = min(names, key=lambda n: (by_name[n]["value"], n))
    return {
        "bank": bank,
        "score": round(score, 6),
        "weakest_indicator": weakest,
        "indicators": by_name,
    }


def rank(time_key: str, merged: list[dict], min_score: float) -> dict[str, Any]:
    """Banks by score, best first (ties by id, so the order is total and stable)."""
    ordered = sorted(merged, key=lambda b: (-b["score"], b["bank"]))
    ranking = [{"rank": i, **b} for i, b in enumerate(ordered, start=1)]
    scores = [b["score"] for b in ordered]
    mean = math.fsum(scores) / len(scores)
    stdev = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / len(scores))
    return {
        "time": time_key,
        "ranking": ranking,
        "route_order": [b["bank"] for b in ordered if b["score"] >= min_score],
        "summary": {
            "banks": len(ordered),
            "indicators": sum(len(b["indicators"]) for b in ordered),
            "best": ordered[0]["bank"],
            "worst": ordered[-1]["bank"],
            "score_mean": round(mean, 6),
            "score_stdev": round(stdev, 6),
            "score_min": scores[-1],
            "score_max": scores[0],
            "below_min_score": sum(1 for s in scores if s < min_score),
        },
    }

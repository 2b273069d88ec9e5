"""Quantiles of a Prometheus histogram, read from its cumulative buckets.

One implementation for the Keeper's release analysis and the AppMaster's autoscaler:
a quantile is the upper bound of the bucket that holds it (what ``histogram_quantile``
would interpolate within; the bound is the conservative answer for an SLO check).
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def quantile_bound(buckets: Mapping[float, float], q: float) -> float | None:
    """Upper bound (the bucket's ``le``, in the histogram's unit) of the bucket holding
    quantile ``q`` of cumulative ``buckets`` (``+Inf`` included); None if no
    observations. ``math.inf`` when the quantile lies past the last finite bound."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    for le in bounds:
        if buckets[le] >= q * total:
            return le
    return math.inf

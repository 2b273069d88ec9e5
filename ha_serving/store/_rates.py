"""Each service's request-rate history per cluster: what the autoscaler's forecast is
fitted to. One row per (service, cluster, step start); writing a step again replaces
its rate (an AppMaster that restarted mid-step writes the step it finished)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ha_serving.store._control import _upsert
from ha_serving.store._schema import rate_samples

Cutoff = sa.ColumnElement[float]


def record_rate(conn: Connection, service: str, cluster: str, at: float, rate: float) -> None:
    c = rate_samples.c
    key = (c.service == service) & (c.cluster == cluster) & (c.at == at)
    _upsert(
        conn, rate_samples, key, {"service": service, "cluster": cluster, "at": at, "rate": rate}
    )


def list_rates(
    conn: Connection, service: str, cluster: str, since: float
) -> list[tuple[float, float]]:
    c = rate_samples.c
    rows = conn.execute(
        sa.select(c.at, c.rate)
        .where(c.service == service, c.cluster == cluster, c.at >= since)
        .order_by(c.at)
    ).all()
    return [(float(r.at), float(r.rate)) for r in rows]


def prune_rates(conn: Connection, cutoff: Cutoff, batch: int) -> int:
    """Rate samples of steps that started before ``cutoff``."""
    c = rate_samples.c
    doomed = conn.execute(
        sa.select(c.service, c.cluster, c.at).where(c.at < cutoff).order_by(c.at).limit(batch)
    ).all()
    total = 0
    for service, cluster, at in doomed:
        key = (c.service == service) & (c.cluster == cluster) & (c.at == at)
        total += int(conn.execute(sa.delete(rate_samples).where(key)).rowcount)
    return total

"""The Keeper leader's capacity floors: per (service, cluster), the fewest instances
that cluster's autoscaler may decide, with the reason (``keeper/_capacity.py:floors``).
One row per target; a floor of 0 is none. Written by the leader (fenced), read by the
target's AppMaster."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ha_serving.store._control import _upsert
from ha_serving.store._records import CapacityFloor
from ha_serving.store._schema import capacity_floors


def set_floor(conn: Connection, now: Any, record: CapacityFloor) -> None:
    """Write ``record`` (its ``updated_at`` ignored: the DB's ``now``)."""
    c = capacity_floors.c
    key = (c.service == record.service) & (c.cluster == record.cluster)
    row = {**record.__dict__, "updated_at": now}
    _upsert(conn, capacity_floors, key, row)


def list_floors(conn: Connection, service: str | None = None) -> list[CapacityFloor]:
    c = capacity_floors.c
    query = sa.select(capacity_floors).order_by(c.service, c.cluster)
    if service is not None:
        query = query.where(c.service == service)
    return [
        CapacityFloor(
            service=r.service,
            cluster=r.cluster,
            floor=int(r.floor),
            reason=r.reason,
            epoch=int(r.epoch),
            updated_at=float(r.updated_at),
        )
        for r in conn.execute(query).all()
    ]

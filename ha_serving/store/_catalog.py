"""Code packages and discovery endpoints: the two small catalogs of the store.

Packages are immutable and keyed by their SHA-256, so a put is idempotent and a
reader can verify what it got. Endpoints are leases: a row lives until ``expires_at``
(DB clock) unless its owner heartbeats it; readers ignore expired rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection

from ha_serving._errors import HAServingError
from ha_serving.store._schema import endpoints, packages


class UnknownPackage(HAServingError):
    grpc_status = "NOT_FOUND"

    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"no code package {digest[:12]}… in the store")


@dataclass(frozen=True)
class Endpoint:
    service: str
    cluster: str
    address: str
    labels: dict[str, Any]
    expires_at: float


def put_package(conn: Connection, now: sa.ColumnElement[float], data: bytes) -> str:
    """Store ``data`` once by digest. Putting it again refreshes ``created_at``, so a
    package about to be named by a new operation is never old enough to be pruned."""
    digest = hashlib.sha256(data).hexdigest()
    touched = conn.execute(
        sa.update(packages).where(packages.c.digest == digest).values(created_at=now)
    )
    if touched.rowcount == 0:
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(packages).values(
                        digest=digest, data=data, size=len(data), created_at=now
                    )
                )
        except exc.IntegrityError:
            pass  # a concurrent put of the same bytes won: same content, same key
    return digest


def get_package(conn: Connection, digest: str) -> bytes:
    data = conn.execute(
        sa.select(packages.c.data).where(packages.c.digest == digest)
    ).scalar_one_or_none()
    if data is None:
        raise UnknownPackage(digest)
    if hashlib.sha256(data).hexdigest() != digest:
        raise HAServingError(f"code package {digest[:12]}… is corrupt in the store")
    return bytes(data)


def upsert_endpoint(  # noqa: PLR0917 - the row's key and value, nothing to group
    conn: Connection,
    now: sa.ColumnElement[float],
    service: str,
    cluster: str,
    address: str,
    labels: dict[str, Any],
    ttl_s: float,
) -> None:
    key = (
        (endpoints.c.service == service)
        & (endpoints.c.cluster == cluster)
        & (endpoints.c.address == address)
    )
    values = {"labels": labels, "expires_at": now + ttl_s}
    if conn.execute(sa.update(endpoints).where(key).values(**values)).rowcount == 0:
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(endpoints).values(
                        service=service, cluster=cluster, address=address, **values
                    )
                )
        except exc.IntegrityError:
            conn.execute(sa.update(endpoints).where(key).values(**values))


def remove_endpoints(
    conn: Connection, service: str, cluster: str, keep: set[str] | None = None
) -> int:
    """Delete a service's endpoints on ``cluster``, except the addresses in ``keep``."""
    query = sa.delete(endpoints).where(
        (endpoints.c.service == service) & (endpoints.c.cluster == cluster)
    )
    if keep:
        query = query.where(endpoints.c.address.not_in(sorted(keep)))
    return conn.execute(query).rowcount


def remove_endpoint(conn: Connection, service: str, cluster: str, address: str) -> bool:
    """Delete one endpoint; False if it was not there (already removed or lapsed)."""
    query = sa.delete(endpoints).where(
        (endpoints.c.service == service)
        & (endpoints.c.cluster == cluster)
        & (endpoints.c.address == address)
    )
    return bool(conn.execute(query).rowcount)


def remove_cluster_endpoints(conn: Connection, cluster: str) -> int:
    """Withdraw every endpoint on ``cluster`` (it was declared lost)."""
    return int(conn.execute(sa.delete(endpoints).where(endpoints.c.cluster == cluster)).rowcount)


SERVICES_PER_STATEMENT = 1000
"""Most services one statement of ``list_endpoints_for`` asks for (the length of its
``IN`` list)."""


def list_endpoints(conn: Connection, now: sa.ColumnElement[float], service: str) -> list[Endpoint]:
    rows = conn.execute(
        sa.select(endpoints)
        .where((endpoints.c.service == service) & (endpoints.c.expires_at > now))
        .order_by(endpoints.c.cluster, endpoints.c.address)
    ).all()
    return [_endpoint(r) for r in rows]


def list_endpoints_for(
    conn: Connection, now: sa.ColumnElement[float], services: Iterable[str]
) -> dict[str, list[Endpoint]]:
    """For each service given, exactly what ``list_endpoints`` returns for it (the
    unexpired rows, by cluster then address), in one statement per
    ``SERVICES_PER_STATEMENT`` services (the caller's one transaction reads them all from
    one snapshot). Every service given is a key of the result, with ``[]`` if it has none."""
    found: dict[str, list[Endpoint]] = {s: [] for s in services}
    wanted = sorted(found)
    c = endpoints.c
    for start in range(0, len(wanted), SERVICES_PER_STATEMENT):
        chunk = wanted[start : start + SERVICES_PER_STATEMENT]
        rows = conn.execute(
            sa.select(endpoints)
            .where(c.service.in_(chunk) & (c.expires_at > now))
            .order_by(c.service, c.cluster, c.address)
        ).all()
        for r in rows:
            found[r.service].append(_endpoint(r))
    return found


def _endpoint(r: sa.Row[Any]) -> Endpoint:
    return Endpoint(r.service, r.cluster, r.address, dict(r.labels), float(r.expires_at))

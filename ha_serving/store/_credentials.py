"""Credentials the Keepers mint for AppMasters, kept as hashes.

A token is ``<id>.<secret>``: ``id`` finds the row, the sha256 of ``secret`` must match
its ``digest``. The DB never holds a secret, so reading it (a backup, an operator's
query) yields nothing that authenticates. A revoked row stays, so an audit can tell a
revoked token from one that never existed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ha_serving.store._schema import credentials

ID_BYTES = 8
ID_MAX = 32
"""Longest id the ``credentials.id`` column holds: longer ones are refused unread."""
SECRET_BYTES = 32


@dataclass(frozen=True)
class CredentialRecord:
    id: str
    scope: str
    cluster: str
    service: str
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """A fresh token: (token, its id, the digest to store)."""
    token_id = secrets.token_hex(ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{token_id}.{secret}", token_id, _digest(secret)


def _record(row: Any) -> CredentialRecord:
    revoked = None if row.revoked_at is None else float(row.revoked_at)
    return CredentialRecord(
        row.id, row.scope, row.cluster, row.service, float(row.created_at), revoked
    )


def add(  # noqa: PLR0917 - one row's fields
    conn: Connection, now: Any, token_id: str, digest: str, scope: str, cluster: str, service: str
) -> None:
    conn.execute(
        sa.insert(credentials).values(
            id=token_id,
            scope=scope,
            cluster=cluster,
            service=service,
            digest=digest,
            created_at=now,
            revoked_at=None,
        )
    )


def verify(conn: Connection, token: str) -> CredentialRecord | None:
    """The credential ``token`` proves (revoked or not), or None if it proves none."""
    token_id, dot, secret = token.partition(".")
    if not dot or not token_id or not secret or len(token_id) > ID_MAX:
        return None
    row = conn.execute(sa.select(credentials).where(credentials.c.id == token_id)).first()
    if row is None or not hmac.compare_digest(row.digest, _digest(secret)):
        return None
    return _record(row)


def revoke(
    conn: Connection, now: Any, *, cluster: str, service: str, keep: str | None = None
) -> int:
    """Revoke every live credential of (cluster, service) but ``keep``; how many."""
    where = (
        (credentials.c.cluster == cluster)
        & (credentials.c.service == service)
        & credentials.c.revoked_at.is_(None)
    )
    if keep is not None:
        where &= credentials.c.id != keep
    return int(conn.execute(sa.update(credentials).where(where).values(revoked_at=now)).rowcount)


def listed(conn: Connection, *, include_revoked: bool) -> list[CredentialRecord]:
    query = sa.select(credentials).order_by(credentials.c.created_at, credentials.c.id)
    if not include_revoked:
        query = query.where(credentials.c.revoked_at.is_(None))
    return [_record(r) for r in conn.execute(query).all()]

"""Pages of the ``Operations`` RPC: at most a page size of operations per reply, oldest
first, and an opaque token to go on after the last one (any replica honours it: it
names a position in the store, not in a replica's memory)."""

from __future__ import annotations

import base64
import binascii
import math

from ha_serving._errors import InvalidSpec
from ha_serving.store import OperationRecord, Store

MAX_TOKEN_CHARS = 512


def operations_page(
    store: Store,
    *,
    service: str = "",
    op_id: str = "",
    limit: int = 0,
    page_token: str = "",
    page_size: int,
) -> tuple[list[OperationRecord], str]:
    """Up to ``limit`` (``page_size`` when 0, negative or larger) operations after
    ``page_token``, and the token of the next page ("" when none follows). ``op_id``
    asks for that operation alone; InvalidSpec for a token this Keeper never gave."""
    size = limit if 0 < limit <= page_size else page_size
    ops = store.list_operations(
        service or None,
        op_id=op_id or None,
        after=decode_token(page_token) if page_token else None,
        limit=size + 1,
    )
    if len(ops) <= size:
        return ops, ""
    page = ops[:size]
    return page, encode_token(page[-1])


def encode_token(last: OperationRecord) -> str:
    """The token of the page that starts after ``last``."""
    raw = f"{last.created_at!r} {last.op_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str) -> tuple[float, str]:
    """``(created_at, op_id)`` of the operation a token's page starts after."""
    bad = InvalidSpec("page_token", ["not a page token this Keeper gave"])
    if len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        at, sep, op_id = base64.urlsafe_b64decode(token.encode()).decode().partition(" ")
        created_at = float(at)
    except (binascii.Error, UnicodeError, ValueError):
        raise bad from None
    if not sep or not op_id or not math.isfinite(created_at):
        raise bad
    return created_at, op_id

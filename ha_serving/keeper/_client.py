"""Asking a Keeper replica about itself (for `status`, drills and tests)."""

from __future__ import annotations

from typing import Any

import grpc

from ha_serving.proto import keeper_pb2, keeper_pb2_grpc


def keeper_status(address: str, *, token: str | None, timeout_s: float = 1.0) -> dict[str, Any]:
    """The replica's own view: id, leader flag, epoch, leader id. ``alive`` is False (and
    ``error`` says why) when it does not answer within ``timeout_s``."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply = stub.Status(keeper_pb2.StatusRequest(), timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "UNKNOWN"
            return {"address": address, "alive": False, "leader": False, "epoch": 0, "error": name}
    return {
        "id": reply.keeper_id,
        "address": address,
        "alive": True,
        "leader": reply.leader,
        "epoch": reply.epoch,
        "leader_id": reply.leader_id,
    }

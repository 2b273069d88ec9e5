"""Talking to the Keepers from outside: Status (for `status` and drills) and the
control API client (deploy, services, operations) with failover between replicas."""

from __future__ import annotations

import json
from typing import Any

import grpc

from ha_serving._errors import PlatformError, UserError
from ha_serving._settings import KeeperSettings
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.util.tls import TlsFiles, channel


def channel_options(settings: KeeperSettings | None = None) -> list[tuple[str, int]]:
    """gRPC options of a Keeper's server and of every channel to one: messages up to
    ``max_message_bytes`` (a Deploy carries a code package) both ways."""
    limit = (settings or KeeperSettings()).max_message_bytes
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


def keeper_status(
    address: str, *, token: str | None, timeout_s: float = 1.0, tls: TlsFiles | None = None
) -> dict[str, Any]:
    """The replica's own view: id, leader flag, epoch, leader id. ``alive`` is False (and
    ``error`` says why) when it does not answer within ``timeout_s``. With ``tls``, over
    TLS, the Keeper's certificate verified against ``tls.ca``."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with channel(address, tls, channel_options()) as ch:
        stub = keeper_pb2_grpc.KeeperStub(ch)  # type: ignore[no-untyped-call]
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


class KeeperClient:
    """The control API from a CLI or SDK: any replica will do; fails over on UNAVAILABLE."""

    def __init__(
        self,
        addresses: list[str],
        *,
        token: str | None,
        timeout_s: float = 30.0,
        settings: KeeperSettings | None = None,
        tls: TlsFiles | None = None,
    ):
        if not addresses:
            raise ValueError("no Keeper addresses")
        self.addresses = addresses
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.timeout_s = timeout_s
        self.options = channel_options(settings)
        self.tls = tls
        """The CA the Keepers' certificate must be signed by; None: plaintext."""

    def _call(self, method: str, request: Any) -> Any:
        last: grpc.RpcError | None = None
        for address in self.addresses:
            with channel(address, self.tls, self.options) as ch:
                stub = keeper_pb2_grpc.KeeperStub(ch)  # type: ignore[no-untyped-call]
                try:
                    return getattr(stub, method)(
                        request, timeout=self.timeout_s, metadata=self.metadata
                    )
                except grpc.RpcError as exc:
                    if exc.code() in _CALLER_FAULT:
                        raise KeeperRefused(exc.code().name, exc.details() or "") from None
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise KeeperError(exc.code().name, exc.details() or "") from None
                    last = exc
        detail = last.details() if last is not None else ""
        raise KeeperError("UNAVAILABLE", f"no Keeper answered ({detail})")

    def deploy(
        self,
        spec_json: str,
        package: bytes,
        *,
        kind: str,
        op_id: str = "",
        options: dict[str, Any] | None = None,
    ) -> str:
        """Record an operation (deploy, config, code, scale, canary, blue_green) with its
        ``options`` (see ``keeper.ReleaseOptions``); returns its op_id."""
        request = keeper_pb2.DeployRequest(
            spec_json=spec_json,
            package=package,
            kind=kind,
            op_id=op_id,
            options_json=json.dumps(options) if options else "",
        )
        return str(self._call("Deploy", request).op_id)

    def command(self, op_id: str, command: str) -> dict[str, Any]:
        """Promote, pause, resume or abort a release; returns the operation."""
        request = keeper_pb2.CommandRequest(op_id=op_id, command=command)
        return _operation(self._call("Command", request))

    def get_service(self, service: str) -> dict[str, Any]:
        reply = self._call("GetService", keeper_pb2.ServiceRequest(service=service))
        return {
            "spec": json.loads(reply.spec_json),
            "package": reply.package,
            "generation": reply.generation,
        }

    def operations(self, service: str = "") -> list[dict[str, Any]]:
        """Every operation (of ``service``, "" for all), oldest first, page by page."""
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            request = keeper_pb2.OperationsRequest(service=service, page_token=token)
            reply = self._call("Operations", request)
            out.extend(_operation(o) for o in reply.operations)
            token = reply.next_page_token
            if not token or not reply.operations:  # the last page (or a Keeper gone wrong)
                return out

    def operation(self, op_id: str) -> dict[str, Any] | None:
        """One operation, None if the Keepers know none by that id (what a CLI following
        it polls: one small reply, not the whole history)."""
        reply = self._call("Operations", keeper_pb2.OperationsRequest(op_id=op_id))
        # a Keeper from before op_id existed answers with every operation: pick it out
        return next((_operation(o) for o in reply.operations if o.op_id == op_id), None)


def _operation(o: Any) -> dict[str, Any]:
    return {
        "op_id": o.op_id,
        "kind": o.kind,
        "status": o.status,
        "step": o.step,
        "plan": json.loads(o.plan_json),
        "epoch": o.epoch,
        "error": o.error,
        "progress": json.loads(o.progress_json) if o.progress_json else None,
        "command": o.command or None,
    }


class KeeperError(PlatformError):
    """A Keeper call failed for a system reason; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class KeeperRefused(UserError):
    """A Keeper refused the request itself (invalid spec, unknown service, bad token)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


_CALLER_FAULT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

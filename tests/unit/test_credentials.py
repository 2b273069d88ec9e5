"""Scoped Keeper credentials (issue 11, item 2), through a real in-process Keeper gRPC
server on a SQLite store: a discovery credential reads endpoints and nothing else, an
operator credential does everything, an AppMaster's credential (minted, stored hashed,
revocable) speaks for its own target only, and a Keeper without credentials refuses to
start unless told ``insecure``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from ha_serving._errors import InvalidSpec, StoreUnavailable
from ha_serving._settings import KeeperSettings
from ha_serving.keeper import ALLOWED, AppMasterCredentials, Authenticator, Caller, KeeperServer
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import CredentialRecord, Store
from tests.unit.fixtures.control import (
    credential_settings,
    free_address,
    rpc_code,
    running_keeper,
)
from tests.unit.test_cluster_registry import cli

ADDRESS = free_address("127.0.104.5")
OPERATOR = "operator-" + "o" * 30
DISCOVERY = "discovery-" + "d" * 30


@pytest.fixture
def keeper(store: Store, tmp_path: Path) -> Iterator[keeper_pb2_grpc.KeeperStub]:
    settings = credential_settings(tmp_path, OPERATOR, DISCOVERY, watch_period_s=0.05)
    with running_keeper(store, ADDRESS, settings), grpc.insecure_channel(ADDRESS) as channel:
        yield keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]


def _as(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _requests() -> dict[str, tuple[str, Any]]:
    """One harmless request per RPC: (stub method, request)."""
    return {
        "Status": ("Status", keeper_pb2.StatusRequest()),
        "Resolve": ("Resolve", keeper_pb2.ResolveRequest(service="echo")),
        "Deploy": ("Deploy", keeper_pb2.DeployRequest(spec_json="{", kind="deploy")),
        "GetService": ("GetService", keeper_pb2.ServiceRequest(service="echo")),
        "Operations": ("Operations", keeper_pb2.OperationsRequest()),
        "Command": ("Command", keeper_pb2.CommandRequest(op_id="x", command="pause")),
        "Heartbeat": (
            "Heartbeat",
            keeper_pb2.HeartbeatRequest(cluster="a", service="echo", actor_name="echo-am"),
        ),
    }


def _unary(stub: Any, rpc: str, token: str | None) -> grpc.StatusCode:
    method, request = _requests()[rpc]
    return rpc_code(stub, method, request, token)


def test_every_rpc_of_the_keeper_has_its_scopes_stated() -> None:
    """A new RPC must be placed in the scope table (an unlisted one is refused to all)."""
    methods = keeper_pb2.DESCRIPTOR.services_by_name["Keeper"].methods
    assert {f"/ha_serving.v1.Keeper/{m.name}" for m in methods} == set(ALLOWED)
    assert all("operator" in scopes for scopes in ALLOWED.values())


def test_a_discovery_credential_resolves_but_cannot_deploy_or_read_the_control_plane(
    keeper: keeper_pb2_grpc.KeeperStub,
) -> None:
    assert _unary(keeper, "Status", DISCOVERY) == grpc.StatusCode.OK
    assert _unary(keeper, "Resolve", DISCOVERY) == grpc.StatusCode.OK
    watch = keeper.Watch(keeper_pb2.ResolveRequest(service="echo"), metadata=_as(DISCOVERY))
    assert next(watch).service == "echo"
    watch.cancel()
    for rpc in ("Deploy", "GetService", "Operations", "Command", "Heartbeat"):
        assert _unary(keeper, rpc, DISCOVERY) == grpc.StatusCode.PERMISSION_DENIED, rpc
    link = keeper.Instructions(
        keeper_pb2.InstructionsRequest(cluster="a", service="echo"), metadata=_as(DISCOVERY)
    )
    assert _code(lambda: next(link)) == grpc.StatusCode.PERMISSION_DENIED


def test_the_operator_credential_may_call_everything_and_no_credential_nothing(
    keeper: keeper_pb2_grpc.KeeperStub,
) -> None:
    """The operator's calls reach the handlers (which judge the requests themselves);
    without a token, or with a wrong one, nothing but the health service answers."""
    expected = {
        "Status": grpc.StatusCode.OK,
        "Resolve": grpc.StatusCode.OK,
        "Deploy": grpc.StatusCode.INVALID_ARGUMENT,  # "{" is no spec: the handler said so
        "GetService": grpc.StatusCode.NOT_FOUND,
        "Operations": grpc.StatusCode.OK,
        "Command": grpc.StatusCode.NOT_FOUND,
        "Heartbeat": grpc.StatusCode.OK,
    }
    assert {rpc: _unary(keeper, rpc, OPERATOR) for rpc in expected} == expected
    for token in (None, "wrong", f"{OPERATOR}x", "abcd.efgh"):
        for rpc in expected:
            assert _unary(keeper, rpc, token) == grpc.StatusCode.UNAUTHENTICATED, (rpc, token)


# --- an AppMaster's own credential ------------------------------------------------------


def test_an_appmaster_credential_is_minted_once_kept_as_a_hash_and_reused(
    store: Store, tmp_path: Path
) -> None:
    issuer = AppMasterCredentials(store, tmp_path / "appmasters")
    path = issuer.ensure("a", "echo")
    token = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert issuer.ensure("a", "echo") == path
    assert path.read_text() == token  # still honoured: not minted again
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM credentials")).all()]
    engine.dispose()
    assert len(rows) == 1
    secret = token.partition(".")[2]
    assert all(secret not in str(value) for value in rows[0])
    with pytest.raises(InvalidSpec, match="not a file name"):
        issuer.file_for("a", "../../etc")


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 8.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_an_appmaster_credential_speaks_for_its_own_target_until_revoked(
    keeper: keeper_pb2_grpc.KeeperStub, store: Store, tmp_path: Path
) -> None:
    """Heartbeats for its own (cluster, service) only; nothing of the operator's; once
    revoked, refused within the cache period (2 s); the leader's next ``ensure`` mints
    a new one, and the old one stays refused."""
    issuer = AppMasterCredentials(store, tmp_path / "appmasters")
    token = issuer.ensure("a", "echo").read_text()

    def beat(cluster: str, service: str, tok: str) -> grpc.StatusCode:
        request = keeper_pb2.HeartbeatRequest(cluster=cluster, service=service, actor_name="x")
        return _code(lambda: keeper.Heartbeat(request, metadata=_as(tok), timeout=5))

    assert beat("a", "echo", token) == grpc.StatusCode.OK
    assert beat("b", "echo", token) == grpc.StatusCode.PERMISSION_DENIED
    assert beat("a", "other", token) == grpc.StatusCode.PERMISSION_DENIED
    assert _unary(keeper, "Status", token) == grpc.StatusCode.OK
    for rpc in ("Deploy", "Resolve", "Operations", "GetService", "Command"):
        assert _unary(keeper, rpc, token) == grpc.StatusCode.PERMISSION_DENIED, rpc

    assert store.revoke_credentials("a", "echo") == 1
    _wait("revoked", lambda: beat("a", "echo", token) == grpc.StatusCode.UNAUTHENTICATED)
    renewed = issuer.ensure("a", "echo").read_text()
    assert renewed != token
    assert beat("a", "echo", renewed) == grpc.StatusCode.OK
    assert beat("a", "echo", token) == grpc.StatusCode.UNAUTHENTICATED


def test_a_revoked_appmasters_link_is_cut_not_left_open(
    keeper: keeper_pb2_grpc.KeeperStub, store: Store, tmp_path: Path
) -> None:
    """The Instructions stream re-checks its credential each period: revoking it ends
    the stream with UNAUTHENTICATED, so the AppMaster reconnects and reads its file."""
    token = AppMasterCredentials(store, tmp_path / "am").ensure("a", "echo").read_text()
    stream = keeper.Instructions(
        keeper_pb2.InstructionsRequest(cluster="a", service="echo", actor_name="echo-am"),
        metadata=_as(token),
        timeout=20,
    )
    assert next(stream).id == 0  # a beat: the link is open
    store.revoke_credentials("a", "echo")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as ended:
        for _ in stream:
            pass
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 5


def test_a_store_outage_keeps_a_known_appmaster_in_and_an_unknown_one_waiting() -> None:
    """While the store does not answer, a token checked before keeps its last answer (a
    link must outlive a DB outage); an unknown one gets StoreUnavailable (UNAVAILABLE
    at the interceptor), not a refusal it could not justify."""
    now = [0.0]

    class Flaky:
        down = False

        def verify_credential(self, token: str) -> Any:
            if self.down:
                raise StoreUnavailable("down")
            token_id = token.split(".", maxsplit=1)[0]
            return CredentialRecord(token_id, "appmaster", "a", "echo", 0.0, None)

    flaky = Flaky()
    auth = Authenticator([], flaky, monotonic=lambda: now[0])  # type: ignore[arg-type]
    known = asyncio.run(auth.identify("k1.secret"))
    assert known == Caller("appmaster", "a", "echo")
    flaky.down = True
    now[0] = 100.0
    assert asyncio.run(auth.identify("k1.secret")) == known
    with pytest.raises(StoreUnavailable):
        asyncio.run(auth.identify("k2.secret"))


# --- a Keeper without credentials -------------------------------------------------------


def test_a_keeper_without_credentials_refuses_to_start_unless_insecure(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    address = free_address("127.0.104.5")
    bare = KeeperServer(store, "k-bare", address, KeeperSettings())
    with pytest.raises(InvalidSpec, match="no credentials"):
        asyncio.run(bare.start())
    caplog.set_level(logging.WARNING)
    with running_keeper(store, address, KeeperSettings(insecure=True)):
        assert any("INSECURE" in r.getMessage() for r in caplog.records)
        with grpc.insecure_channel(address) as channel:
            stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
            assert _unary(stub, "Operations", None) == grpc.StatusCode.OK


# --- the operator's commands ------------------------------------------------------------


def test_keeper_revoke_and_credentials_commands(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HA_SERVING_DB_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("HA_SERVING_RUN_DIR", str(tmp_path / "run"))
    issuer = AppMasterCredentials(store, tmp_path / "am")
    token = issuer.ensure("a", "echo").read_text()
    code, out, _ = cli("keeper", "credentials", "--json")
    assert code == 0
    [listed] = json.loads(out)
    assert listed["cluster"] == "a"
    assert listed["revoked_at"] is None
    assert token.partition(".")[2] not in out  # the secret is nowhere to show
    code, out, _ = cli("keeper", "revoke", "--cluster", "a", "--service", "echo")
    assert (code, "revoked 1 credential") == (0, out[: len("revoked 1 credential")])
    code, _, error = cli("keeper", "revoke", "--cluster", "a", "--service", "echo")
    assert code == 2
    assert "no live credential for echo on a" in error
    code, out, _ = cli("keeper", "credentials", "--all", "--json")
    assert json.loads(out)[0]["revoked_at"] is not None

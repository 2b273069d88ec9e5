"""The Keeper's control API and AppMaster link, checked for integrity (issue 11): op_id
validation, idempotent and atomic Deploy, retries under one op_id from the CLI,
heartbeats only from what the AppMaster sends, and direct deploys that never touch a
Keeper-managed service."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from ha_serving._errors import ConflictError, InvalidSpec
from ha_serving.appmaster._link import KeeperLink
from ha_serving.backend import make_package
from ha_serving.cli._app import app
from ha_serving.cli._common import submit_op
from ha_serving.cli._services import ServiceOps
from ha_serving.keeper import KeeperClient, KeeperError, KeeperRefused
from ha_serving.keeper._control_api import (
    MAX_OP_ID,
    OpIdReused,
    check_op_id,
    deploy,
)
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import ClusterRecord, Store, StoreRef, UnknownPackage
from ha_serving.store._schema import CLUSTER, OP_ID
from ha_serving.util.secrets import write_secret
from tests.unit.fixtures.control import (
    FIXTURES,
    TOKEN,
    fake_core,
    free_address,
    running_keeper,
    spec,
)

ADDRESS = free_address("127.0.103.1")
ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"


@pytest.fixture
def store(store: Store) -> Store:
    """The test's store, with cluster a registered."""
    store.register_cluster(ClusterRecord("a", "127.0.103.250:1", None, "z1"))
    return store


@pytest.fixture
def keeper(store: Store) -> Iterator[str]:
    with running_keeper(store, ADDRESS) as k:
        yield k.address


def _spec_json(**changes: Any) -> str:
    return json.dumps(spec(**{"instances": 1, **changes}).model_dump(mode="json"))


PACKAGE = make_package(FIXTURES / "echo_v1").data


# --- op_id and kind -------------------------------------------------------------------


def test_op_ids_are_checked_so_that_every_id_made_from_them_fits_the_store(
    store: Store,
) -> None:
    """An op_id too long for the store's columns (once the leader has made instruction
    ids from it, e.g. ``<op_id>#restore@<cluster>``) or with the separators '#'/'@' is
    refused with one line, before anything is written."""
    longest_derived = MAX_OP_ID + len("#restore@") + 31  # 31: a placement's cluster name
    assert OP_ID.length is not None
    assert CLUSTER.length is not None
    assert longest_derived <= OP_ID.length
    for bad in ("x" * (MAX_OP_ID + 1), "x" * 200, "a@b", "a#1", "-a", "a b", "é", "a\n"):
        with pytest.raises(InvalidSpec) as refused:
            deploy(store, _spec_json(), PACKAGE, op_id=bad, kind="deploy")
        message = str(refused.value)
        assert message.startswith("invalid op_id: ")
        assert "\n" not in message
        assert len(message) < 200
    assert store.list_operations() == []
    check_op_id("blue_green-0123456789ab")  # what the Keeper and the CLI make up
    op_id, duplicate = deploy(store, _spec_json(), PACKAGE, op_id="a" * MAX_OP_ID)
    assert (op_id, duplicate) == ("a" * MAX_OP_ID, False)


def test_a_kind_the_appmasters_cannot_carry_out_is_refused(store: Store) -> None:
    """A Deploy of kind "release" (an AppMaster instruction, not an operation) once made
    an operation whose instruction wedged the AppMaster's link; now it is refused."""
    deploy(store, _spec_json(), PACKAGE, kind="deploy")
    for kind in ("release", "promote", "traffic", "resize"):
        with pytest.raises(InvalidSpec, match="is not one of deploy, config, code, scale"):
            deploy(store, _spec_json(), PACKAGE, kind=kind)
    assert len(store.list_operations()) == 1


# --- idempotent, atomic Deploy ----------------------------------------------------------


def test_a_repeated_op_id_is_answered_with_its_operation(store: Store) -> None:
    """The same request again (a retry after a lost answer) returns the operation it
    made, without a second operation or service write; another request under that
    op_id is refused (ALREADY_EXISTS), even after the first has moved on."""
    assert deploy(store, _spec_json(), PACKAGE, op_id="d-1") == ("d-1", False)
    assert deploy(store, _spec_json(), PACKAGE, op_id="d-1") == ("d-1", True)
    assert store.get_service("echo").spec_version == 1
    config = _spec_json(config={"prefix": "x"})
    assert deploy(store, config, b"", op_id="c-1", kind="config") == ("c-1", False)
    assert deploy(store, config, b"", op_id="c-1", kind="config") == ("c-1", True)
    assert store.get_service("echo").spec_version == 2
    assert [o.op_id for o in store.list_operations()] == ["d-1", "c-1"]
    for other in (
        {"spec_json": _spec_json(config={"prefix": "y"}), "package": b"", "kind": "config"},
        {"spec_json": config, "package": b"", "kind": "code"},
        {"spec_json": config, "package": PACKAGE, "kind": "config"},
    ):
        with pytest.raises(OpIdReused, match="c-1 names an operation made from another"):
            deploy(store, other.pop("spec_json"), other.pop("package"), op_id="c-1", **other)
    assert OpIdReused("c-1").grpc_status == "ALREADY_EXISTS"
    assert store.get_service("echo").spec_version == 2
    assert len(store.list_operations()) == 2


class RacingStore:
    """The real store, where another deploy of the service lands right after ``deploy``
    has read the service record (between its read and its writes)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def list_clusters(self) -> Any:
        if not self.raced:
            self.raced = True
            current = self._store.get_service("echo")
            self._store.update_service("echo", current.spec, expected_version=current.version)
        return self._store.list_clusters()


def test_a_deploy_that_loses_a_race_leaves_no_operation_behind(store: Store) -> None:
    """The operation and the service record are one transaction: a Deploy answered
    ABORTED (the service changed under it) has recorded nothing, and its retry under the
    same op_id records it once, against the service as it is now."""
    deploy(store, _spec_json(), PACKAGE, op_id="d-1")
    racing = RacingStore(store)
    config = _spec_json(config={"prefix": "x"})
    with pytest.raises(ConflictError) as aborted:
        deploy(racing, config, b"", op_id="c-1", kind="config")  # type: ignore[arg-type]
    assert aborted.value.grpc_status == "ABORTED"
    assert [o.op_id for o in store.list_operations()] == ["d-1"]
    assert store.get_service("echo").spec["spec"]["config"] == {}
    assert deploy(racing, config, b"", op_id="c-1", kind="config") == ("c-1", False)  # type: ignore[arg-type]
    op = store.get_operation("c-1")
    service = store.get_service("echo")
    assert op.plan["generation"] == service.spec["generation"] == service.spec_version == 3
    assert service.spec["spec"]["config"] == {"prefix": "x"}


def test_deploy_answers_invalid_argument_and_already_exists_over_grpc(
    store: Store, keeper: str
) -> None:
    client = KeeperClient([keeper], token=TOKEN, timeout_s=10)
    with pytest.raises(KeeperRefused) as long_id:
        client.deploy(_spec_json(), PACKAGE, kind="deploy", op_id="x" * 65)
    assert long_id.value.code == "INVALID_ARGUMENT"
    assert "invalid op_id" in str(long_id.value)
    assert client.deploy(_spec_json(), PACKAGE, kind="deploy", op_id="d-1") == "d-1"
    assert client.deploy(_spec_json(), PACKAGE, kind="deploy", op_id="d-1") == "d-1"
    with pytest.raises(KeeperRefused) as reused:
        client.deploy(_spec_json(instances=2), PACKAGE, kind="deploy", op_id="d-1")
    assert reused.value.code == "ALREADY_EXISTS"
    assert [o.op_id for o in store.list_operations()] == ["d-1"]


# --- the CLI retries under one op_id ----------------------------------------------------


class FlakyKeepers:
    """A KeeperClient whose first ``failures`` Deploys fail with ``code``."""

    def __init__(self, failures: int, code: str = "UNAVAILABLE") -> None:
        self.failures = failures
        self.code = code
        self.op_ids: list[str] = []

    def deploy(self, spec_json: str, package: bytes, **kw: Any) -> str:  # noqa: ARG002
        self.op_ids.append(kw["op_id"])
        if len(self.op_ids) <= self.failures:
            raise KeeperError(self.code, "no Keeper answered (test)")
        return str(kw["op_id"])


def test_the_cli_retries_a_deploy_under_the_op_id_it_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`deploy` through the Keepers survives a failover mid-request: it sends an op_id
    of its own and retries with the same one, so the Keeper that answers the retry
    finds the operation the first attempt may have recorded (never a second one)."""
    flaky = FlakyKeepers(failures=2)
    monkeypatch.setattr("ha_serving.cli._app.keepers", lambda _run_dir: flaky)
    result = CliRunner().invoke(app, ["deploy", str(ECHO / "echo.yaml"), "--no-wait"])
    assert result.exit_code == 0, result.output
    assert len(flaky.op_ids) == 3
    assert len(set(flaky.op_ids)) == 1
    check_op_id(flaky.op_ids[0])
    assert flaky.op_ids[0].startswith("deploy-")
    again = FlakyKeepers(failures=0)
    submit_op(again, "{}", b"", kind="deploy")  # type: ignore[arg-type]
    assert again.op_ids[0] != flaky.op_ids[0]  # one op_id per command


def test_only_failures_that_may_have_recorded_nothing_yet_are_retried() -> None:
    naps: list[float] = []
    for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"):
        flaky = FlakyKeepers(failures=1, code=code)
        submit_op(flaky, "{}", b"", kind="scale", sleep=naps.append)  # type: ignore[arg-type]
        assert len(flaky.op_ids) == 2
    refused = FlakyKeepers(failures=1, code="FAILED_PRECONDITION")
    with pytest.raises(KeeperError):
        submit_op(refused, "{}", b"", kind="scale", sleep=naps.append)  # type: ignore[arg-type]
    assert len(refused.op_ids) == 1


# --- heartbeats come from the AppMaster -------------------------------------------------


def test_an_open_stream_alone_does_not_keep_an_appmaster_fresh(store: Store, keeper: str) -> None:
    """Opening the link registers the AppMaster; after that, only its Heartbeat calls
    refresh it, however long the Keeper's own loop keeps streaming beats to it (a
    paused AppMaster, or any token holder, keeps a stream open)."""
    metadata = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(keeper) as channel:
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        request = keeper_pb2.InstructionsRequest(
            cluster="a", service="echo", actor_name="echo-appmaster", epoch_seen=0
        )
        stream = stub.Instructions(request, metadata=metadata, timeout=30)
        first = next(stream)
        assert first.id == 0
        [registered] = store.list_appmasters("echo")
        beats = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # ~5 Keeper loops (link_period_s 0.3)
            assert next(stream).id == 0
            beats += 1
        assert beats >= 3
        [now] = store.list_appmasters("echo")
        assert now.heartbeat_at == registered.heartbeat_at
        beat = keeper_pb2.HeartbeatRequest(
            cluster="a", service="echo", actor_name="echo-appmaster", epoch_seen=3
        )
        stub.Heartbeat(beat, metadata=metadata, timeout=5)
        [fresh] = store.list_appmasters("echo")
        assert fresh.heartbeat_at > registered.heartbeat_at
        assert fresh.epoch_seen == 3
        stream.cancel()


def test_a_live_appmasters_link_keeps_its_heartbeat_fresh(
    store: Store, keeper: str, tmp_path: Path
) -> None:
    """The link answers the Keeper's beats (every 0.3 s) with Heartbeats: the record
    stays well within the leader's staleness bounds (1.5 s for cluster loss, 5 s for a
    resubmission) while it runs, and goes stale once it stops."""

    core = fake_core(store)
    link = KeeperLink(core, [keeper], str(write_secret(tmp_path / "am.token", TOKEN)))

    async def scenario() -> list[float]:
        task = asyncio.create_task(link.run())
        ages: list[float] = []
        try:
            await asyncio.sleep(1.0)
            for _ in range(15):
                await asyncio.sleep(0.1)
                [am] = await asyncio.to_thread(store.list_appmasters, "echo")
                ages.append(store.now() - am.heartbeat_at)
        finally:
            task.cancel()
        return ages

    ages = asyncio.run(scenario())
    assert max(ages) < 1.0, ages
    time.sleep(1.5)
    [am] = store.list_appmasters("echo")
    assert store.now() - am.heartbeat_at > 1.0


# --- a direct deploy never touches a Keeper-managed service -----------------------------


def test_a_direct_deploy_of_a_keeper_managed_service_is_refused_before_any_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deploy/update/scale --cluster` drive one cluster's AppMaster by hand; for a
    service the Keepers manage they are refused before the record (or a package) is
    written, so the Keepers keep their record; a directly deployed service still works."""
    deploy(store, _spec_json(), PACKAGE, op_id="d-1")
    before = store.get_service("echo")
    ops = ServiceOps(store, StoreRef("sqlite:///unused"), "a", "127.0.0.1:1", "127.0.0.1")
    applied: list[str] = []

    def apply(_spec: Any, _digest: str, kind: str) -> dict[str, Any]:
        applied.append(kind)
        return {}

    monkeypatch.setattr(ops, "_apply", apply)
    v2 = spec(version="v2", instances=1)
    with pytest.raises(InvalidSpec, match="deployed through the Keepers"):
        ops.deploy(v2, FIXTURES / "echo_v2")
    with pytest.raises(InvalidSpec, match="deployed through the Keepers"):
        ops.change("echo", kind="scale", instances=3)
    assert store.get_service("echo") == before
    with pytest.raises(UnknownPackage):
        store.get_package(hashlib.sha256(make_package(FIXTURES / "echo_v2").data).hexdigest())
    assert applied == []
    ops.deploy(spec(name="solo", instances=1), FIXTURES / "echo_v1")
    ops.change("solo", kind="scale", instances=2)
    assert applied == ["deploy", "scale"]
    assert store.get_service("solo").spec["direct"] == "a"


def test_the_keepers_refuse_a_service_deployed_directly_before_any_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round: a service deployed with `--cluster` is driven by hand on its
    cluster; a Deploy of it through the Keepers, of any kind, is refused in one line
    before anything is written (no operation, no package, its record unchanged), so the
    two paths never both drive one service."""
    ops = ServiceOps(store, StoreRef("sqlite:///unused"), "a", "127.0.0.1:1", "127.0.0.1")
    monkeypatch.setattr(ops, "_apply", lambda *_: {})
    ops.deploy(spec(name="solo", instances=1), FIXTURES / "echo_v1")
    before = store.get_service("solo")
    v2 = make_package(FIXTURES / "echo_v2").data
    for kind in ("deploy", "config", "scale", "canary", "blue_green"):
        with pytest.raises(InvalidSpec) as refused:
            deploy(store, _spec_json(name="solo", version="v2"), v2, kind=kind)
        assert str(refused.value) == (
            "invalid deploy: solo is deployed directly on cluster a, not through the "
            "Keepers: change it with --cluster a, or use another name"
        ), kind
    assert store.get_service("solo") == before
    assert store.list_operations() == []
    with pytest.raises(UnknownPackage):
        store.get_package(hashlib.sha256(v2).hexdigest())

"""On a real stack with a service deployed through the Keepers (so a serving job ran and
an AppMaster holds a minted credential): no secret of the stack is anywhere others can
look. Run with ``make test-security`` (it brings up its own stack in a free port slot).

The secrets are every value in ``<run_dir>/secrets/`` (the operator and discovery
tokens, the AppMasters' credentials, the DB's passwords, Redis's password). Where they
are looked for: every file of the run directory but ``secrets/``, Ray's logs, every
process's command line and the stack's processes' environments, Ray's Job API and state
API, the store's tables, and ``status`` / ``status --json``. The one exception is Ray's
own: the Redis password on the command line of a head's processes (``ray start
--redis-password`` hands it on) and what Ray shows of them (docs/operations.md,
"Security").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import sqlalchemy as sa

import infra
from ha_serving._errors import CallError
from ha_serving._spec import load_spec
from ha_serving.backend import make_package
from ha_serving.client import Client
from ha_serving.keeper import KeeperClient
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import Store
from ha_serving.util.secrets import read_secret
from ha_serving.util.tls import TlsFiles, link_address
from infra import procs
from infra.services import admin_url
from infra.topology import Proc
from tests.integration.conftest import stack_settings
from tests.unit.fixtures.control import rpc_code

pytestmark = [pytest.mark.integration, pytest.mark.security]

ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"
SERVICE = "secure"
CLI = str(Path(sys.executable).with_name("ha-serving"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Topology]:
    settings = stack_settings(tmp_path_factory.mktemp("secstack"))
    topo = infra.up(settings).topology
    try:
        keeper = KeeperClient(
            [k.address for k in topo.keepers], token=topo.keeper_token(), tls=topo.client_tls()
        )
        spec = load_spec(ECHO / "echo.yaml").model_dump(mode="json")
        spec.update(name=SERVICE, instances=1, placement={"clusters": [{"name": "a"}]})
        op_id = keeper.deploy(json.dumps(spec), make_package(ECHO / "code").data, kind="deploy")
        deadline = time.monotonic() + 240
        while (op := keeper.operation(op_id)) is None or op["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, f"{op_id} did not finish: {op}"
            time.sleep(0.5)
        assert op["status"] == "succeeded", op
        yield topo
    finally:
        infra.down(settings.stack.run_dir)


@pytest.fixture(scope="module")
def secrets(stack: infra.Topology) -> dict[str, str]:
    """name -> value of every secret the stack holds (an AppMaster's credential counts
    by its secret part too: the id alone proves nothing and may be shown)."""
    assert stack.secrets_dir is not None
    found: dict[str, str] = {}
    for path in sorted(stack.secrets_dir.rglob("*")):
        if path.is_file() and path.suffix in (".token", ".password"):
            value = read_secret(path)
            found[path.name] = value
            if path.name.startswith("appmaster."):
                found[f"{path.name} (secret part)"] = value.partition(".")[2]
    names = set(found)
    assert {"operator.token", "discovery.token", "db.password", "db-root.password"} <= names
    assert any(n.startswith("appmaster.a.secure") for n in names), names
    if stack.redis is not None:
        assert "redis.password" in names
    return found


def _redis_password(stack: infra.Topology) -> str | None:
    return stack.redis.password() if stack.redis is not None else None


def _leaks(
    text: str | bytes, secrets: dict[str, str], *, allow: frozenset[str] = frozenset()
) -> list[str]:
    """The names of the secrets found in ``text``, but those whose value is ``allow``ed."""
    data = text.encode(errors="replace") if isinstance(text, str) else text
    return [n for n, value in secrets.items() if value.encode() in data and value not in allow]


def _only(value: str | None) -> frozenset[str]:
    return frozenset({value}) if value else frozenset()


def test_secret_files_are_0600_in_a_0700_directory(stack: infra.Topology) -> None:
    assert stack.secrets_dir is not None
    for path in [stack.secrets_dir, *stack.secrets_dir.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_no_file_of_the_run_directory_but_the_secrets_holds_a_secret(
    stack: infra.Topology, secrets: dict[str, str]
) -> None:
    """topology.json, our logs (Keepers', nodes' `ray start` output), the DB's and
    Redis's data and logs: no value of any secret (the DB keeps password hashes)."""
    assert stack.secrets_dir is not None
    found = {}
    for path in stack.run_dir.rglob("*"):
        if not path.is_file() or stack.secrets_dir in path.parents or path.is_socket():
            continue
        try:
            leaks = _leaks(path.read_bytes(), secrets)
        except OSError:
            continue
        if leaks:
            found[str(path.relative_to(stack.run_dir))] = leaks
    assert found == {}


def test_ray_logs_hold_no_secret_but_rays_own_redis_password(
    stack: infra.Topology, secrets: dict[str, str]
) -> None:
    """Ray's session logs of every node (job drivers, the AppMaster's and workers'
    stdout/stderr, raylet, GCS, dashboard): no secret; the Redis password only in the
    logs of a head (Ray's exception), never a worker node's."""
    redis = _redis_password(stack)
    found = {}
    for c in stack.clusters:
        for node in c.nodes:
            allow = _only(redis) if node.role == "head" else frozenset()
            for path in node.temp_dir.rglob("*"):
                if (
                    path.is_file()
                    and not path.is_symlink()
                    and path.suffix in (".log", ".out", ".err", ".txt", ".json")
                ):
                    try:
                        leaks = _leaks(path.read_bytes(), secrets, allow=allow)
                    except OSError:
                        continue
                    if leaks:
                        found[str(path)] = leaks
    assert found == {}


def _stack_processes(stack: infra.Topology) -> dict[int, tuple[str, psutil.Process]]:
    """Every process the stack runs, by pid: (which part, the process)."""
    parts: list[tuple[str, Proc]] = [(f"keeper {k.id}", k.proc) for k in stack.keepers]
    parts += [(f"node {n.name} ({n.role})", n.proc) for c in stack.clusters for n in c.nodes]
    if stack.db.proc is not None:
        parts.append(("db", stack.db.proc))
    if stack.redis is not None:
        parts.append(("redis", stack.redis.proc))
    found: dict[int, tuple[str, psutil.Process]] = {}
    for name, proc in parts:
        for p in procs.tree(proc):
            found.setdefault(p.pid, (name, p))
    return found


def test_no_command_line_on_the_machine_holds_a_secret_but_rays_redis_password(
    stack: infra.Topology, secrets: dict[str, str]
) -> None:
    """What `ps` shows to every user: no secret in any process's command line, but the
    Redis password in the head nodes' processes (Ray's exception)."""
    redis = _redis_password(stack)
    ours = _stack_processes(stack)
    heads = {pid for pid, (name, _) in ours.items() if name.endswith("(head)")}
    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        allow = _only(redis) if p.info["pid"] in heads else frozenset()
        if leaks := _leaks(line, secrets, allow=allow):
            found[p.info["pid"]] = (ours.get(p.info["pid"], ("not the stack's",))[0], leaks)
    assert found == {}


def test_no_process_of_the_stack_has_a_secret_in_its_environment(
    stack: infra.Topology, secrets: dict[str, str]
) -> None:
    """Keepers, nodes (with the AppMaster, proxies, job drivers), DB and Redis get the
    files' paths, never a value, in their environments; but Ray hands its head's Redis
    password to processes of the head (its client server gets RAY_REDIS_PASSWORD)."""
    redis = _redis_password(stack)
    found = {}
    for pid, (name, p) in _stack_processes(stack).items():
        try:
            env = "\n".join(f"{k}={v}" for k, v in p.environ().items())
        except (psutil.Error, OSError):
            continue
        allow = _only(redis) if name.endswith("(head)") else frozenset()
        if leaks := _leaks(env, secrets, allow=allow):
            found[pid] = (name, leaks)
    assert found == {}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as reply:  # noqa: S310 - our dashboard
        return json.loads(reply.read())


def test_rays_job_and_state_apis_show_no_secret(
    stack: infra.Topology, secrets: dict[str, str]
) -> None:
    """Job API: each serving job's entrypoint, runtime_env (env_vars) and metadata; state
    API: actors (the AppMaster's arguments are a StoreRef and a path) and tasks. The
    nodes' view lists Ray's processes, where the Redis password is Ray's exception."""
    redis = _redis_password(stack)
    checked = 0
    for c in stack.clusters:
        port = c.head.ports.dashboard
        if port is None:
            continue
        base = f"http://{c.head.address}:{port}"
        for job in _get(base + "/api/jobs/"):
            assert _leaks(json.dumps(job), secrets) == [], job.get("submission_id")
            checked += 1
        for path in ("/api/v0/actors?detail=1&limit=1000", "/api/v0/tasks?detail=1&limit=1000"):
            assert _leaks(json.dumps(_get(base + path)), secrets) == [], path
        nodes = json.dumps(_get(base + "/nodes?view=summary"))
        assert _leaks(nodes, secrets, allow=_only(redis)) == []
    assert checked >= 1, "no serving job was found to check"


def test_the_store_keeps_no_secret(stack: infra.Topology, secrets: dict[str, str]) -> None:
    """Every table, every row: credentials as hashes, services and operations without
    any password or token."""
    engine = sa.create_engine(admin_url(stack.db, "ha_serving"))
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            for table in tables:
                if table == "packages":  # user code, zipped: not ours to scan
                    continue
                rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
                assert _leaks(repr(rows), secrets) == [], table
    finally:
        engine.dispose()


def test_status_shows_no_secret(stack: infra.Topology, secrets: dict[str, str]) -> None:
    for args in (["status"], ["status", "--json"]):
        result = subprocess.run(
            [CLI, *args, "--run-dir", str(stack.run_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert _leaks(result.stdout + result.stderr, secrets) == []


def _keeper_channel(stack: infra.Topology, *, link: bool = False) -> grpc.Channel:
    """A channel to the first Keeper as its clients dial it: its API port (or, with
    ``link``, its AppMasters' link port, showing the AppMasters' certificate) over TLS
    verified against the stack's CA; plaintext on a plaintext stack (one port)."""
    address = stack.keepers[0].address
    if stack.tls is None:
        return grpc.insecure_channel(address)
    if link:
        files = TlsFiles(
            str(stack.tls.ca), str(stack.tls.appmaster_cert), str(stack.tls.appmaster_key)
        )
        return grpc.secure_channel(link_address(address), files.channel_credentials())
    return grpc.secure_channel(address, TlsFiles(str(stack.tls.ca)).channel_credentials())


def test_each_credential_calls_only_what_its_scope_allows_on_the_real_keepers(
    stack: infra.Topology, secrets: dict[str, str]
) -> None:
    """The discovery token resolves but cannot deploy; the AppMaster's credential
    heartbeats for its own target only (on a TLS stack: on the link port, under mutual
    TLS, and nowhere else)."""
    am = next(
        v
        for k, v in secrets.items()
        if k.startswith("appmaster.a.secure") and "secret part" not in k
    )
    deploy = keeper_pb2.DeployRequest(spec_json="{}", kind="deploy")
    actor = f"{SERVICE}-appmaster"
    own = keeper_pb2.HeartbeatRequest(cluster="a", service=SERVICE, actor_name=actor)
    other = keeper_pb2.HeartbeatRequest(cluster="b", service=SERVICE, actor_name=actor)
    with _keeper_channel(stack) as channel:
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]

        def code(method: str, request: Any, token: str) -> grpc.StatusCode:
            return rpc_code(stub, method, request, token, timeout_s=10)

        discovery = secrets["discovery.token"]
        assert (
            code("Resolve", keeper_pb2.ResolveRequest(service=SERVICE), discovery)
            == grpc.StatusCode.OK
        )
        assert code("Deploy", deploy, discovery) == grpc.StatusCode.PERMISSION_DENIED
        assert code("Deploy", deploy, am) == grpc.StatusCode.PERMISSION_DENIED
        if stack.tls is not None:  # the API port takes no AppMaster credential
            assert code("Heartbeat", own, am) == grpc.StatusCode.PERMISSION_DENIED
    with _keeper_channel(stack, link=stack.tls is not None) as channel:
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        assert rpc_code(stub, "Heartbeat", own, am, timeout_s=10) == grpc.StatusCode.OK
        assert rpc_code(stub, "Heartbeat", other, am, timeout_s=10) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert rpc_code(stub, "Deploy", deploy, am, timeout_s=10) == (
            grpc.StatusCode.PERMISSION_DENIED
        )


def test_a_plaintext_client_reaches_neither_the_keepers_nor_the_proxies(
    stack: infra.Topology, secrets: dict[str, str]
) -> None:
    """On a TLS stack (``up``'s default) a client that skips TLS gets no answer from a
    Keeper (API or link port) or a proxy: no handshake, so not even its request is read."""
    if stack.tls is None:
        pytest.skip("a plaintext stack (HA_SERVING_TEST_TLS=0): nothing to refuse")
    resolve = keeper_pb2.ResolveRequest(service=SERVICE)
    address = stack.keepers[0].address
    for target in (address, link_address(address)):
        with grpc.insecure_channel(target) as channel:
            stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
            code = rpc_code(stub, "Resolve", resolve, secrets["discovery.token"], timeout_s=5)
            assert code == grpc.StatusCode.UNAVAILABLE, target
    with Store.connect(stack.db.ref()) as store:
        endpoints = store.list_endpoints(SERVICE)
    assert endpoints, "the service has no proxy to try"
    for e in endpoints:
        with Client([e.address], timeout_s=3) as plain, pytest.raises(CallError) as refused:
            plain.call(SERVICE, "echo", {"a": 1})
        assert refused.value.code == "UNAVAILABLE", e.address
        with Client([e.address], timeout_s=5, tls=stack.client_tls()) as verified:
            assert verified.call(SERVICE, "echo", {"a": 1})["echo"] == {"a": 1}

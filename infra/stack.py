"""Bring the local multi-cluster stack up, report on it, and take it down.

``up`` starts, in order: the state store, Redis, every cluster's head, then the
workers, saving the topology after each step so that even if ``up`` itself dies,
``down`` finds what was started. If any step fails, everything started so far is
stopped again before the error propagates: a failed ``up`` leaves nothing running.

Secrets: ``up`` generates every secret of the stack into ``<run_dir>/secrets/`` (mode
0700, files 0600): the DB's passwords, Redis's password and the Keepers' credentials.
Processes get the files' paths (in their environment); ``down`` removes the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tenacity
from pydantic import BaseModel

from ha_serving._errors import StackError
from ha_serving._settings import MAX_CLUSTERS, MAX_WORKERS_PER_CLUSTER, Settings
from ha_serving.keeper import keeper_status
from ha_serving.store import ClusterRecord, Store
from ha_serving.util import tls
from ha_serving.util.secrets import masked_url, new_secret, secret_dir, write_secret
from ha_serving.util.tls import TlsFiles
from infra import procs, services, topology
from infra.ports import claim_slot, cluster_name, ensure_free, node_address, node_ports
from infra.ray_nodes import alive_since, node_argv, node_env
from infra.topology import Cluster, Keeper, Node, Role, TlsPaths, Topology

Report = Callable[[str], None]
log = logging.getLogger(__name__)


def _quiet(_: str) -> None:
    return None


# --- run directory ------------------------------------------------------------------


@contextlib.contextmanager
def locked(run_dir: Path, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the run directory's lock: one up/down/fault at a time per stack. Busy: wait
    up to ``wait_s`` for it (a fault primitive waits out the supervisor's restart of a
    node), then fail with a one-line error."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = (run_dir / ".lock").open("w")
    except OSError as exc:
        raise StackError(f"run directory {run_dir} is not writable: {exc.strerror}") from None
    with lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StackError(f"another ha-serving command is using {run_dir}") from None
                time.sleep(0.2)
        yield


def ray_temp_root(run_dir: Path) -> Path:
    """Ray's temp dirs, under /tmp: Ray's unix socket paths must stay under ~107 bytes."""
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]  # noqa: S324
    return Path("/tmp") / f"hasrv-{digest}"  # noqa: S108 - per-run-dir, not shared


# --- up -----------------------------------------------------------------------------


class UpResult(BaseModel):
    topology: Topology
    already_up: bool
    seconds: float


def up(settings: Settings, *, report: Report = _quiet) -> UpResult:
    s = settings.stack
    run_dir = s.run_dir.resolve()
    started = time.monotonic()
    with locked(run_dir):
        existing = topology.load(run_dir)
        if existing is not None:
            dead = [name for name, ok in _liveness(existing).items() if not ok]
            if dead:
                raise StackError(
                    f"the stack in {run_dir} is partly down ({', '.join(dead)} not running); "
                    "run `make down` first, or restart those parts with `ha-serving node restart`"
                )
            return UpResult(topology=existing, already_up=True, seconds=0.0)
        if not Path(s.ray_bin).exists():
            raise StackError(f"ray binary not found: {s.ray_bin} (is the venv installed?)")
        _ensure_ports_free(settings)
        topo: Topology | None = None
        try:
            topo = _start(settings, run_dir, report)
        except BaseException:
            report("start failed: stopping what was started")
            partial = topology.load(run_dir)
            if partial is not None:
                _stop(partial, report=_quiet)
            topology.remove(run_dir)
            raise
        return UpResult(topology=topo, already_up=False, seconds=time.monotonic() - started)


def _ensure_ports_free(settings: Settings) -> None:
    s = settings.stack
    for i in range(1, s.clusters + 1):
        for n in range(s.workers_per_cluster + 1):
            ports = node_ports(s.port_base, i, n)
            address = node_address(i, n)
            ensure_free(address, ports.fixed(), what=f"Ray node {address}")
            worker_range = list(range(ports.min_worker, ports.max_worker + 1))
            ensure_free(address, worker_range, what=f"Ray workers of {address}")


SECRETS_DIR = "secrets"
OPERATOR_TOKEN_FILE = "operator.token"  # noqa: S105 - a file name
DISCOVERY_TOKEN_FILE = "discovery.token"  # noqa: S105 - a file name
APPMASTER_CREDENTIALS_DIR = "appmasters"
TLS_DIR = "tls"


def _start(settings: Settings, run_dir: Path, report: Report) -> Topology:
    s = settings.stack
    # secrets of an earlier run (a crash before its `down`) are never reused
    shutil.rmtree(run_dir / SECRETS_DIR, ignore_errors=True)
    secrets = secret_dir(run_dir / SECRETS_DIR)
    report("starting the state store")
    try:
        db = services.start_database(settings, run_dir, secrets)
    except BaseException:
        shutil.rmtree(secrets, ignore_errors=True)  # no topology yet for `down` to find
        raise
    # Saved at once, so a failure from here on finds the DB in the topology and stops it.
    topo = Topology(
        run_dir=run_dir,
        run_id=uuid.uuid4().hex[:12],
        created_at=time.time(),
        clusters=[],
        db=db,
        redis=None,
        secrets_dir=secrets,
    )
    topo.save()
    report(f"state store: {db.kind} at {db.address or masked_url(db.public_url)}")
    if s.redis_bin:
        report("starting Redis for GCS fault tolerance")
        topo.redis = services.start_redis(
            s.redis_bin,
            run_dir / "redis",
            address=s.redis_address,
            port=s.redis_port,
            secrets=secrets if s.redis_auth else None,
        )
        topo.save()
    else:
        report("no redis-server found: clusters start WITHOUT GCS fault tolerance")
    if s.tls:
        report("making the stack's CA and certificates")
        topo.tls = make_certificates(settings, secrets / TLS_DIR)
        topo.save()
    temp_root = ray_temp_root(run_dir)
    for i in range(1, s.clusters + 1):
        topo.clusters.append(_start_node_set(settings, topo, i, temp_root, heads=True))
        topo.save()
    report(f"waiting for {s.clusters} head node(s)")
    for c in topo.clusters:
        await_nodes(topo, c, [c.head], s.node_start_timeout_s, spawned_at=0.0, report=report)
    workers: dict[str, list[Node]] = {}
    for c in topo.clusters:
        workers[c.name] = _start_node_set(settings, topo, c.index, temp_root, heads=False).nodes
        c.nodes += workers[c.name]
        topo.save()
    report(f"waiting for {s.clusters * s.workers_per_cluster} worker node(s)")
    for c in topo.clusters:
        await_nodes(topo, c, workers[c.name], s.node_start_timeout_s, spawned_at=0.0, report=report)
    _register_clusters(topo)
    report(f"starting {settings.keeper.replicas} Keeper replicas")
    _start_keepers(settings, topo)
    if s.supervise:
        topo.supervisor = procs.spawn(
            [str(Path(s.ray_bin).with_name("python")), "-m", "infra.supervise", str(run_dir)],
            log=run_dir / "logs" / "supervisor.log",
        )
        topo.save()
    return topo


def make_certificates(settings: Settings, directory: Path) -> TlsPaths:
    """A new CA and, from it: the Keepers' server certificate (every Keeper address), the
    proxies' (a proxy binds its node's address; also a client certificate, shown to the
    backend workers' direct servers, which serve with it too), the AppMasters' client one,
    and a client one for SDK clients in direct mode (``Topology.direct_client_tls``: the
    workers' direct servers take only callers showing a certificate of the CA).

    The proxies' certificate names every address the local address scheme can give a
    node (127.0.i.n for every cluster index and node the settings allow), not only this
    stack's: a cluster started beside it on this machine and joined with `cluster
    register` (its serving jobs get the same certificate's paths) serves TLS as well. A
    cluster on other machines needs a proxy certificate for its own addresses."""
    k = settings.keeper
    secret_dir(directory)
    ca = tls.make_ca(directory)
    keepers = [f"{k.address_prefix}.{i}" for i in range(1, k.replicas + 1)]
    nodes = [
        node_address(i, n)
        for i in range(1, MAX_CLUSTERS + 1)
        for n in range(MAX_WORKERS_PER_CLUSTER + 1)
    ]
    keeper = tls.issue(ca, directory, "keeper", hosts=keepers, server=True, client=False)
    proxy = tls.issue(ca, directory, "proxy", hosts=nodes, server=True, client=True)
    appmaster = tls.issue(
        ca, directory, "appmaster", hosts=["appmaster"], server=False, client=True
    )
    # client auth only: it cannot serve as a proxy or a worker, only call them
    client = tls.issue(ca, directory, "client", hosts=["client"], server=False, client=True)
    return TlsPaths(
        ca=Path(ca.ca),
        ca_key=ca.paths()[1],
        keeper_cert=keeper.paths()[0],
        keeper_key=keeper.paths()[1],
        proxy_cert=proxy.paths()[0],
        proxy_key=proxy.paths()[1],
        appmaster_cert=appmaster.paths()[0],
        appmaster_key=appmaster.paths()[1],
        client_cert=client.paths()[0],
        client_key=client.paths()[1],
    )


def _register_clusters(topo: Topology) -> None:
    """Tell the Keepers (through the DB) which clusters exist and how to reach them."""
    with Store.connect(topo.db.ref()) as store:
        for c in topo.clusters:
            head = c.head
            url = f"http://{head.address}:{head.ports.dashboard}" if head.ports.dashboard else None
            store.register_cluster(ClusterRecord(c.name, c.gcs_address, url, f"zone-{c.name}"))


def _start_keepers(settings: Settings, topo: Topology) -> None:
    k = settings.keeper
    secrets = secret_dir(topo.secrets_dir or topo.run_dir / SECRETS_DIR)
    token_file = write_secret(secrets / OPERATOR_TOKEN_FILE, new_secret())
    topo.keeper_token_file = token_file
    topo.discovery_token_file = write_secret(secrets / DISCOVERY_TOKEN_FILE, new_secret())
    ha_serving_bin = str(Path(settings.stack.ray_bin).with_name("ha-serving"))
    addresses = [f"{k.address_prefix}.{i}:{k.port}" for i in range(1, k.replicas + 1)]
    for i, address in enumerate(addresses, start=1):
        keeper_id = f"k{i}"
        host, _, port = address.rpartition(":")
        ports = [int(port)] + ([int(port) + tls.LINK_PORT_OFFSET] if topo.tls else [])
        ensure_free(host, ports, what=f"Keeper {keeper_id}")
        argv = [
            ha_serving_bin,
            "keeper",
            "run",
            "--id",
            keeper_id,
            "--address",
            address,
            "--peers",
            ",".join(addresses),
        ]
        env = keeper_env(topo, token_file, lease_ttl_s=k.lease_ttl_s)
        proc = procs.spawn(argv, env=env, log=topo.run_dir / "logs" / f"keeper-{keeper_id}.log")
        topo.keepers.append(Keeper(id=keeper_id, address=address, proc=proc))
        topo.save()
    for keeper in topo.keepers:
        wait_keeper(topo, keeper)


def keeper_env(topo: Topology, token_file: Path, *, lease_ttl_s: float) -> dict[str, str]:
    """A Keeper's environment: where the store is and the paths of the files holding its
    password and the Keepers' credentials, never a secret itself (the topology file
    records it; /proc/<pid>/environ shows it to the same user)."""
    db = topo.db
    env = {
        "HA_SERVING_DB_URL": db.public_url,
        "HA_SERVING_KEEPER_TOKEN_FILE": str(token_file),
        "HA_SERVING_KEEPER_CREDENTIALS_DIR": str(token_file.parent / APPMASTER_CREDENTIALS_DIR),
        "HA_SERVING_KEEPER_TTL": str(lease_ttl_s),
    }
    if topo.discovery_token_file is not None:
        env["HA_SERVING_KEEPER_DISCOVERY_TOKEN_FILE"] = str(topo.discovery_token_file)
    if topo.tls is not None:
        env.update(topo.tls.env())
    if db.password_file is not None:
        env["HA_SERVING_DB_PASSWORD_FILE"] = str(db.password_file)
    return env


def wait_keeper(topo: Topology, keeper: Keeper, timeout_s: float = 30.0) -> None:
    """Wait until a Keeper answers its Status call; fail fast if its process exits."""
    token = topo.keeper_token()

    def ready() -> bool:
        if not procs.alive(keeper.proc):
            raise StackError(
                f"Keeper {keeper.id} exited at start: {procs.log_tail(keeper.proc.log)}"
            )
        return bool(keeper_status(keeper.address, token=token, tls=topo.client_tls())["alive"])

    try:
        procs.wait_for(f"Keeper {keeper.id}", ready, timeout_s=timeout_s)
    except TimeoutError as exc:
        raise StackError(str(exc)) from None


def _start_node_set(
    settings: Settings, topo: Topology, index: int, temp_root: Path, *, heads: bool
) -> Cluster:
    """Spawn cluster ``index``'s head (``heads``) or its workers; returns them as a Cluster."""
    s = settings.stack
    name = cluster_name(index)
    head_ports = node_ports(s.port_base, index, 0)
    gcs_address = f"{node_address(index, 0)}:{head_ports.gcs}"
    namespace = f"hasrv-{topo.run_id}-{name}" if topo.redis else None
    nodes = []
    for n in [0] if heads else range(1, s.workers_per_cluster + 1):
        role: Role = "head" if n == 0 else "worker"
        address = node_address(index, n)
        ports = node_ports(s.port_base, index, n)
        node_name = f"{name}-head" if n == 0 else f"{name}-w{n}"
        temp_dir = temp_root / node_name
        argv = node_argv(
            s, role=role, address=address, ports=ports, temp_dir=temp_dir, gcs_address=gcs_address
        )
        redis = topo.redis.address if topo.redis else None
        env = node_env(s, role=role, redis=redis, namespace=namespace)
        # Ray's exception to "no secret on a command line": its head takes the Redis
        # password only there (and hands it on to its GCS server, raylet and workers)
        secret = topo.redis.password_file if topo.redis and role == "head" else None
        proc = procs.spawn(
            argv,
            env=env,
            log=topo.run_dir / "logs" / f"{node_name}.log",
            secret_args={"--redis-password": secret} if secret else None,
        )
        nodes.append(
            Node(
                name=node_name,
                role=role,
                address=address,
                ports=ports,
                temp_dir=temp_dir,
                proc=proc,
            )
        )
    return Cluster(
        name=name, index=index, gcs_address=gcs_address, storage_namespace=namespace, nodes=nodes
    )


START_ATTEMPTS = 3
"""Tries to start one Ray node. On a loaded 2-core machine a node's raylet can miss Ray's
own registration wait (30 s, hard-coded in ``ray._private.node``), and ``ray start``
exits; a second start from a clean temp dir has always succeeded where measured."""


class NodeStartFailed(StackError):
    """Some nodes did not come up; ``failed`` maps each node's name to why."""

    def __init__(self, cluster: str, failed: dict[str, str]) -> None:
        self.failed = failed
        detail = "; ".join(f"{name}: {why}" for name, why in failed.items())
        super().__init__(f"cluster {cluster}: {detail}")


def spawn_node(node: Node) -> None:
    """Start ``node`` with its recorded command line and environment."""
    node.held = False
    if node.role == "head":
        # a head restarted in its old temp dir would otherwise refuse to start
        (node.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
    node.proc = procs.respawn(node.proc)


def node_evidence(node: Node, lines: int = 8) -> str:
    """Tails of a node's ``ray start`` output and of its raylet's log: why it failed."""
    parts = [f"ray start: {procs.log_tail(node.proc.log, lines)}"]
    raylet = node.temp_dir / "session_latest" / "logs" / "raylet.out"
    if raylet.exists():
        # a crash ends the log with a stack trace; the reason is the error lines above it
        errors = procs.log_lines(raylet, _RAY_ERROR, 3)
        parts.append(f"raylet errors: {errors}" if errors else "raylet: no error lines")
        parts.append(f"raylet: {procs.log_tail(raylet, lines)}")
    return " || ".join(parts)


_RAY_ERROR = re.compile(r"^\[[^\]]* [EC] \d+ \d+\]|Check failed|\*\*\* SIG")
"""A Ray C++ log line at level E (error) or C (fatal), a failed RAY_CHECK, a signal."""


def await_nodes(
    topo: Topology,
    cluster: Cluster,
    nodes: list[Node],
    timeout_s: float,
    *,
    spawned_at: float,
    report: Report = _quiet,
    attempts: int = START_ATTEMPTS,
) -> None:
    """Wait until the GCS counts every node of ``nodes`` (just spawned) alive.

    A node that exits at start or is not registered within ``timeout_s`` is killed with
    its descendants, its temp dir is removed, and it is started again, up to
    ``attempts`` starts in all (tenacity); each retry is reported with the reason and
    the node's log tails. Raises ``NodeStartFailed`` when starts are used up.
    """
    pending = list(nodes)

    def retry_failed(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        failed = exc.failed if isinstance(exc, NodeStartFailed) else {}
        for node in pending:
            if node.name in failed:
                log.warning(
                    "restarting Ray node %s from a clean temp dir: %s", node.name, failed[node.name]
                )
                report(f"Ray node {node.name} failed to start; starting it again")
                procs.kill(node.proc)
                shutil.rmtree(node.temp_dir, ignore_errors=True)
                spawn_node(node)
        pending[:] = [n for n in pending if n.name in failed]
        topo.save()

    since = spawned_at
    for attempt in tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        retry=tenacity.retry_if_exception_type(NodeStartFailed),
        before_sleep=retry_failed,
        wait=tenacity.wait_none(),
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                since = time.time()
            _wait_nodes(cluster, pending, timeout_s, registered_after=since - 1.0)


def _wait_nodes(
    cluster: Cluster, nodes: list[Node], timeout_s: float, *, registered_after: float = 0.0
) -> None:
    """Wait until the GCS reports every node in ``nodes`` alive, registered after
    ``registered_after`` (a node restarted at the same address registers anew, and its
    predecessor's entry may still look alive until the GCS notices). Raises
    ``NodeStartFailed`` naming each node that exited at start or was not registered."""
    deadline = time.monotonic() + timeout_s
    failed: dict[str, str] = {}
    while True:
        seen = alive_since(cluster.gcs_address) or {}
        waiting = []
        for n in nodes:
            if n.name in failed or (n.address in seen and seen[n.address] >= registered_after):
                continue
            if not procs.alive(n.proc):
                failed[n.name] = f"exited at start ({n.address}): {node_evidence(n)}"
            else:
                waiting.append(n)
        if not waiting:
            break
        if time.monotonic() >= deadline:
            gcs = "" if seen else f" (GCS {cluster.gcs_address} does not answer)"
            for n in waiting:
                failed[n.name] = f"not registered after {timeout_s:.0f}s{gcs}: {node_evidence(n)}"
            break
        time.sleep(0.25)
    if failed:
        raise NodeStartFailed(cluster.name, failed)


@contextlib.contextmanager
def stack_for_run(settings: Settings, *, report: Report = _quiet) -> Iterator[Topology]:
    """The stack up in ``settings``' run dir, or else one of the run's own, with the ports
    of a free slot (so it can run beside `make up`'s), taken down again afterwards.

    A stack of the run's own starts from an empty DB and leaves none behind: `up` keeps
    the run dir's DB (``<run_dir>/db``) across `down` and `up`, and its Keepers bring
    back every service recorded in it, so an earlier run's services (a load test's 500
    instances, a drill's service) would run beside this one. A DB found there is set
    aside for the run (``db.aside-<time>``) and put back afterwards."""
    run_dir = settings.stack.run_dir.resolve()
    found = topology.load(run_dir)
    if found is not None:
        yield found
        return
    slot = claim_slot()
    kept = run_dir / "db"
    aside = run_dir / f"db.aside-{time.strftime('%Y%m%dT%H%M%S')}-{slot.base}"
    if kept.exists():
        kept.rename(aside)
        report(f"a DB an earlier stack left in {run_dir} is set aside for this run: {aside.name}")
    report(f"no stack in {run_dir}: bringing one up (ports from {slot.base})")
    try:
        yield up(slot.settings(settings)).topology
    finally:
        report("taking the stack down again")
        try:
            down(run_dir)
            shutil.rmtree(kept, ignore_errors=True)  # the run's own: nothing outlives it
            if aside.exists():
                aside.rename(kept)
        finally:
            slot.release()


# --- status -------------------------------------------------------------------------


def _liveness(topo: Topology) -> dict[str, bool]:
    parts = {n.name: procs.alive(n.proc) for c in topo.clusters for n in c.nodes}
    if topo.db.proc is not None:
        parts["db"] = procs.alive(topo.db.proc)
    if topo.redis is not None:
        parts["redis"] = procs.alive(topo.redis.proc)
    for k in topo.keepers:
        parts[f"keeper {k.id}"] = procs.alive(k.proc)
    return parts


def status(run_dir: Path) -> dict[str, object] | None:
    """The stack as ``ha-serving status --json`` prints it; None when nothing is up."""
    topo = topology.load(run_dir.resolve())
    if topo is None:
        return None
    with ThreadPoolExecutor(max_workers=len(topo.clusters) + 2) as pool:
        seen = dict(
            zip(
                [c.name for c in topo.clusters],
                pool.map(lambda c: alive_since(c.gcs_address), topo.clusters),
                strict=True,
            )
        )
        db_alive = pool.submit(services.database_alive, topo.db)
        redis_alive = pool.submit(services.redis_alive, topo.redis) if topo.redis else None
        clusters = [_cluster_status(c, seen[c.name]) for c in topo.clusters]
        token = topo.keeper_token()
        client_tls = topo.client_tls()
        keepers = list(pool.map(lambda k: _keeper_status(k, token, client_tls), topo.keepers))
        return {
            "keepers": keepers,
            "run_dir": str(topo.run_dir),
            "clusters": clusters,
            "db": {
                "kind": topo.db.kind,
                "url": masked_url(topo.db.public_url),
                "alive": db_alive.result(),
            },
            "redis": {
                "address": topo.redis.address if topo.redis else None,
                "alive": redis_alive.result() if redis_alive else False,
                "gcs_fault_tolerance": topo.redis is not None,
            },
            "tls": topo.tls is not None,
        }


def _keeper_status(k: Keeper, token: str | None, client_tls: TlsFiles | None) -> dict[str, object]:
    if not procs.alive(k.proc):
        return {
            "id": k.id,
            "address": k.address,
            "alive": False,
            "leader": False,
            "epoch": 0,
            "pid": k.proc.pid,
            "pgid": k.proc.pgid,
        }
    found = keeper_status(k.address, token=token, tls=client_tls)
    return {"id": k.id, **found, "pid": k.proc.pid, "pgid": k.proc.pgid}


def _cluster_status(c: Cluster, seen: dict[str, float] | None) -> dict[str, object]:
    nodes = []
    for n in c.nodes:
        running = procs.alive(n.proc)
        registered = seen is not None and n.address in seen
        nodes.append(
            {
                "name": n.name,
                "address": n.address,
                "role": n.role,
                # a node is alive when its processes run and its GCS counts it; with the
                # head down the GCS cannot be asked, so a running worker is reported alive
                "alive": running and (registered or seen is None),
                "pid": n.proc.pid,
                "pgid": n.proc.pgid,
            }
        )
    return {
        "name": c.name,
        "gcs_address": c.gcs_address,
        "gcs_alive": seen is not None,
        "gcs_fault_tolerance": c.storage_namespace is not None,
        "nodes": nodes,
    }


# --- down ---------------------------------------------------------------------------


class DownResult(BaseModel):
    was_up: bool
    stopped: int
    """How many processes were signalled (nodes with their Ray workers, DB, Redis)."""


def down(run_dir: Path, *, report: Report = _quiet) -> DownResult:
    run_dir = run_dir.resolve()
    found = topology.load(run_dir)
    if found is not None and found.supervisor is not None:
        # first, and outside the lock it may hold while it restarts a node: it would
        # otherwise start again what this stops (it saves what it spawns at once)
        procs.kill(found.supervisor, grace_s=10)
    with locked(run_dir):
        topo = topology.load(run_dir)
        if topo is None:
            return DownResult(was_up=False, stopped=0)
        stopped = _stop(topo, report=report)
        topology.remove(run_dir)
        return DownResult(was_up=True, stopped=stopped)


def _stop(topo: Topology, *, report: Report) -> int:
    stopped = 0
    if topo.supervisor is not None:
        stopped += procs.kill(topo.supervisor, grace_s=10)
    if topo.keepers:
        report("stopping the Keepers")
    for k in topo.keepers:
        procs.resume(k.proc)  # a SIGSTOPped one would never see the SIGTERM
        stopped += procs.kill(k.proc, grace_s=3)
    if topo.keeper_token_file is not None:
        topo.keeper_token_file.unlink(missing_ok=True)
    for c in topo.clusters:
        report(f"stopping cluster {c.name}")
        # SIGKILL at once: a node keeps nothing worth a clean shutdown (its GCS state is
        # discarded with the Redis data below), and SIGTERM made `down` wait ~5 s per node
        for n in c.nodes:
            stopped += procs.kill(n.proc)
    if topo.redis is not None:
        report("stopping Redis")
        stopped += procs.kill(topo.redis.proc, grace_s=5)
        # GCS state of clusters that no longer exist: nothing can ever read it again
        shutil.rmtree(topo.run_dir / "redis", ignore_errors=True)
    if topo.db.proc is not None or topo.db.container_id is not None:
        report("stopping the state store")
        stopped += 1
        services.stop_database(topo.db)
    shutil.rmtree(ray_temp_root(topo.run_dir), ignore_errors=True)
    if topo.secrets_dir is not None:  # last: restarting anything above needed them
        shutil.rmtree(topo.secrets_dir, ignore_errors=True)
    return stopped

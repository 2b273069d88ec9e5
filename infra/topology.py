"""The topology file: where every part of the local stack is and which process owns it.

``up`` writes it, ``down``/``status`` and the fault primitives read it. It is the only
record of what the stack started, so ``down`` can stop exactly that, by process group.
Writes are atomic (temp file + rename) so a crash never leaves half a file.

It holds no secret: where a secret is needed (the DB's and Redis's passwords, the
Keepers' credentials) it records the path of the file holding it, in
``<run_dir>/secrets/`` (``ha_serving.util.secrets``). The file itself is mode 0600.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ha_serving._errors import StackError
from ha_serving.store import StoreRef
from ha_serving.util.secrets import read_secret
from ha_serving.util.tls import TlsFiles

TOPOLOGY_FILE = "topology.json"

Role = Literal["head", "worker"]
DBKind = Literal["mariadb", "external", "testcontainers", "sqlite"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Proc(_Model):
    """A process the stack started: ``pgid`` is its own process group (``setsid``)."""

    pid: int
    pgid: int
    argv: list[str]
    env: dict[str, str] = {}
    """Variables added to the inherited environment, kept so a restart is identical
    (never a secret: a secret's file path at most)."""
    log: Path
    secret_args: dict[str, Path] = {}
    """Options that take a secret (``--redis-password`` -> the file holding it): each is
    appended to ``argv`` as ``--option=<value>`` when the process is spawned, the value
    read from its file then, so a restart gets it too and this file never holds it."""


class NodePorts(_Model):
    gcs: int | None
    node_manager: int
    object_manager: int
    metrics_export: int
    dashboard_agent_grpc: int
    dashboard_agent_listen: int
    runtime_env_agent: int
    ray_client_server: int | None
    dashboard: int | None
    min_worker: int
    max_worker: int

    def fixed(self) -> list[int]:
        """Every single port (not the worker range) this node binds."""
        values = self.model_dump(exclude={"min_worker", "max_worker"}).values()
        return [p for p in values if p is not None]


class Node(_Model):
    name: str
    role: Role
    address: str
    ports: NodePorts
    temp_dir: Path
    proc: Proc
    held: bool = False
    """Killed on purpose (``infra.kill_node``, ``kill_cluster``): down until whoever
    killed it restarts it, so the supervisor (``infra.supervise``) leaves it alone. Any
    start of the node clears it."""


class Cluster(_Model):
    name: str
    index: int
    gcs_address: str
    storage_namespace: str | None
    """Ray ``external_storage_namespace`` in Redis; None when the cluster has no GCS FT."""
    nodes: list[Node]

    @property
    def head(self) -> Node:
        return next(n for n in self.nodes if n.role == "head")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


class Database(_Model):
    kind: DBKind
    public_url: str = Field(validation_alias=AliasChoices("public_url", "url"))
    """SQLAlchemy URL without the password (``password_file`` holds it)."""
    password_file: Path | None = None
    """File (0600) holding the password; None for a store that has none (SQLite)."""
    address: str | None = None
    proc: Proc | None = None
    container_id: str | None = None

    def ref(self) -> StoreRef:
        """How to reach the store: what ``Store.connect`` takes, and what may be passed
        on to other processes (the password stays in its file)."""
        return StoreRef.of(self.public_url, self.password_file)


class Redis(_Model):
    address: str
    proc: Proc
    password_file: Path | None = None
    """File (0600) holding Redis's ``requirepass``; None: Redis has no password."""

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return read_secret(self.password_file, what="Redis password file")


class TlsPaths(_Model):
    """The stack's CA and the certificates `up` issued from it (``util.tls``)."""

    ca: Path
    ca_key: Path
    keeper_cert: Path
    keeper_key: Path
    proxy_cert: Path
    proxy_key: Path
    appmaster_cert: Path
    appmaster_key: Path
    client_cert: Path | None = None
    """An SDK client's certificate (client auth only), for direct mode: the workers'
    direct servers take only callers showing one of the CA. None in a topology written
    before `up` issued it."""
    client_key: Path | None = None

    def env(self) -> dict[str, str]:
        """The settings' variables naming these files (what a Keeper is started with; it
        hands the AppMasters' and proxies' on to its serving jobs)."""
        return {
            "HA_SERVING_TLS_CA": str(self.ca),
            "HA_SERVING_TLS_KEEPER_CERT": str(self.keeper_cert),
            "HA_SERVING_TLS_KEEPER_KEY": str(self.keeper_key),
            "HA_SERVING_TLS_PROXY_CERT": str(self.proxy_cert),
            "HA_SERVING_TLS_PROXY_KEY": str(self.proxy_key),
            "HA_SERVING_TLS_APPMASTER_CERT": str(self.appmaster_cert),
            "HA_SERVING_TLS_APPMASTER_KEY": str(self.appmaster_key),
        }


class Keeper(_Model):
    id: str
    address: str
    """host:port of its control API, on a loopback address of its own."""
    proc: Proc


class Topology(_Model):
    run_dir: Path
    run_id: str
    created_at: float
    clusters: list[Cluster]
    db: Database
    redis: Redis | None
    """None when no redis-server was found: clusters then run without GCS FT."""
    keepers: list[Keeper] = []
    secrets_dir: Path | None = None
    """``<run_dir>/secrets`` (mode 0700): every secret `up` generated, one file each."""
    keeper_token_file: Path | None = None
    """Where the Keepers' operator credential is (mode 0600); the token is never in here."""
    discovery_token_file: Path | None = None
    """Where the clients' discovery credential is (Status, Resolve, Watch only)."""
    tls: TlsPaths | None = None
    """The stack's CA and certificates; None: the stack speaks plaintext (`up --no-tls`)."""
    supervisor: Proc | None = None
    """``python -m infra.supervise``: restarts nodes that die by themselves (None: `up`
    ran with ``stack.supervise`` off, or before there was one)."""

    def keeper(self, keeper_id: str) -> Keeper:
        for k in self.keepers:
            if k.id == keeper_id:
                return k
        known = ", ".join(k.id for k in self.keepers)
        raise KeyError(f"no keeper {keeper_id!r} (known: {known})")

    def keeper_token(self) -> str | None:
        if self.keeper_token_file is None:
            return None
        return read_secret(self.keeper_token_file, what="Keeper token file")

    def client_tls(self) -> TlsFiles | None:
        """What a client of this stack verifies the Keepers and the proxies with: the
        stack's CA; None when the stack speaks plaintext."""
        return TlsFiles(str(self.tls.ca)) if self.tls is not None else None

    def proxy_tls(self) -> TlsFiles | None:
        """The proxies' certificate and the CA (what an AppMaster gives its proxies)."""
        if self.tls is None:
            return None
        return TlsFiles(str(self.tls.ca), str(self.tls.proxy_cert), str(self.tls.proxy_key))

    def direct_client_tls(self) -> TlsFiles | None:
        """What an SDK client in direct mode (``mode="direct"``) is given: the stack's CA
        and the client certificate `up` issued; None when the stack speaks plaintext."""
        if self.tls is None:
            return None
        if self.tls.client_cert is None or self.tls.client_key is None:
            raise StackError(
                f"the stack in {self.run_dir} was brought up without a client certificate "
                "for direct mode (before `up` issued one): bring it up again"
            )
        return TlsFiles(str(self.tls.ca), str(self.tls.client_cert), str(self.tls.client_key))

    def discovery_token(self) -> str | None:
        """What a client resolving services presents: the discovery credential."""
        if self.discovery_token_file is None:
            return self.keeper_token()  # a stack from before scoped credentials
        return read_secret(self.discovery_token_file, what="discovery token file")

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.clusters)
        raise KeyError(f"no cluster {name!r} (known: {known})")

    def find_node(self, name: str) -> tuple[Cluster, Node]:
        for c in self.clusters:
            for n in c.nodes:
                if n.name == name:
                    return c, n
        known = ", ".join(n.name for c in self.clusters for n in c.nodes)
        raise KeyError(f"no node {name!r} (known: {known})")

    def save(self) -> None:
        path = self.run_dir / TOPOLOGY_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)


def load(run_dir: Path) -> Topology | None:
    path = run_dir / TOPOLOGY_FILE
    if not path.exists():
        return None
    return Topology.model_validate_json(path.read_text())


def remove(run_dir: Path) -> None:
    (run_dir / TOPOLOGY_FILE).unlink(missing_ok=True)

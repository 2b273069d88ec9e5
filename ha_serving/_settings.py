"""Every tunable of the stack, typed and grouped, read from the environment here only.

``Settings.from_env()`` is the single place that looks at ``os.environ``; everything
else receives a ``Settings`` (or one of its groups) as an argument, so tests build
their own without touching the process environment.

Environment variables (all optional):

==========================================  ======================================
``HA_SERVING_DB_URL``                       external state store (``mysql+pymysql://…`` or ``sqlite:///…``)
``HA_SERVING_DB_PASSWORD_FILE``             file holding the store's password (set by `up`)
``HA_SERVING_RUN_DIR``                      where the local stack keeps data, logs, topology
``HA_SERVING_CLUSTERS``                     how many local Ray clusters ``up`` starts
``HA_SERVING_MARIADBD``                     path of the ``mariadbd``/``mysqld`` binary to use
``HA_SERVING_REDIS_SERVER``                 path of the ``redis-server`` binary to use
``HA_SERVING_PORT_BASE``                    first port of the clusters' port blocks (a second stack)
``HA_SERVING_DB_PORT``                      port of the private DB server
``HA_SERVING_REDIS_PORT``                   port of the private Redis
``HA_SERVING_STACK_TLS``                    0: stacks come up in plaintext (default 1: TLS)
``HA_SERVING_KEEPER_TOKEN``                 the operator credential, inline (Kubernetes)
``HA_SERVING_KEEPER_TOKEN_FILE``            file holding the operator credential (set by `up`)
``HA_SERVING_KEEPER_DISCOVERY_TOKEN_FILE``  file holding the clients' discovery credential
``HA_SERVING_KEEPER_CREDENTIALS_DIR``       where the leader writes AppMasters' credentials
``HA_SERVING_KEEPER_TTL``                   the Keepers' leader lease in seconds (set by `up`)
``HA_SERVING_KEEPER_PORT``                  the Keepers' control-API port (a second stack)
``HA_SERVING_TLS_CA``                       the stack's CA certificate (unset: plaintext)
``HA_SERVING_TLS_KEEPER_CERT``              the Keepers' server certificate
``HA_SERVING_TLS_KEEPER_KEY``               its private key
``HA_SERVING_TLS_PROXY_CERT``               the proxies' server certificate
``HA_SERVING_TLS_PROXY_KEY``                its private key
``HA_SERVING_TLS_APPMASTER_CERT``           the AppMasters' client certificate (link)
``HA_SERVING_TLS_APPMASTER_KEY``            its private key
==========================================  ======================================

``SETTINGS_ENV`` maps each to its field; ``tests/unit/test_docs_settings.py`` checks that
this table names every one of them.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ha_serving._errors import InvalidSpec

MAX_CLUSTERS = 9
"""Cluster i lives at 127.0.i.x and owns a port block; 9 keeps every block below 32768."""
MAX_WORKERS_PER_CLUSTER = 8
"""Worker nodes of one local cluster at most (127.0.i.2 to 127.0.i.9)."""

MiB = 1024 * 1024

MAX_PACKAGE_BYTES = 50 * MiB
"""Largest code package (zipped or unzipped), in bytes: code, not model weights, travels
in it (``ha_serving.backend`` enforces it; the Keepers' message limit is sized from it)."""


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _require(holds: bool, problem: str) -> None:
    """A relation between settings: ``problem`` (one line) when it does not hold."""
    if not holds:
        raise ValueError(problem)


class StoreSettings(_Group):
    url: str | None = None
    """SQLAlchemy URL of the state store; None lets ``up`` choose (private mariadbd first)."""

    password_file: Path | None = None
    """File holding the store's password, read when connecting, so that ``url`` (which
    then carries none) can travel in an environment or a Ray job; `up` sets it to
    <run_dir>/secrets/db.password. None: ``url`` is complete as it is."""

    connect_timeout_s: float = Field(default=3.0, gt=0)
    """Seconds to wait for a DB connection; short, so a dead DB is reported, not waited on."""


class StackSettings(_Group):
    run_dir: Path = Path(".run")
    """Directory for the topology file, DB data, Redis data and logs of the local stack."""

    clusters: int = Field(default=2, ge=1, le=MAX_CLUSTERS)
    """Local Ray clusters; 2 is the smallest number that shows cross-cluster failover."""

    workers_per_cluster: int = Field(default=1, ge=1, le=MAX_WORKERS_PER_CLUSTER)
    """Worker nodes per cluster (at 127.0.i.2 upwards); the head runs no user work."""

    worker_cpus: int = Field(default=8, ge=1, le=256)
    """Logical CPUs each worker node advertises. Actors reserve 1 to be scheduled but idle
    at ~0, so this is a packing limit, not a claim on this machine's 2 real cores."""

    object_store_mb: int = Field(default=128, ge=78)
    """Plasma store per node in MiB. Ray's default (30% of RAM per node) would oversubscribe
    /dev/shm with several nodes on one host; serving payloads are small. 78 is Ray's floor."""

    port_base: int = Field(default=10000, ge=1024, le=21000)
    """Cluster i, node n uses ports ``port_base + i*2000 + n*200`` up to +199; Ray binds some
    on every interface, so clusters must never share a port. At most 21000, so that 3
    clusters stay below the ephemeral ports (32768+)."""

    node_start_timeout_s: float = Field(default=90.0, gt=0)
    """How long ``up`` waits for all nodes to register alive before it gives up and cleans up."""

    gcs_reconnect_timeout_s: int = Field(default=60, ge=5)
    """How long workers and raylets wait for a restarted GCS (head) before they exit (Ray's
    ``gcs_rpc_server_reconnect_timeout_s``); a head restart must finish within it."""

    ray_register_wait_s: float = Field(default=55.0, ge=30)
    """How long ``ray start`` waits for its node's raylet to appear in the GCS before it
    gives up (Ray 2.60 hard-codes 30 s; ``infra.ray_start`` stretches it): a head restoring
    its GCS from Redis on a starved machine took longer. Below ``gcs_reconnect_timeout_s``
    (the cluster's other raylets wait that long for their head) and ``node_start_timeout_s``."""

    death_info_wait_ms: int = Field(default=100, ge=0)
    """Ray's ``timeout_ms_task_wait_for_death_info`` on every node: how long a call to an
    actor whose connection broke waits for the GCS to report the death before it fails
    (Ray's default: 1000). Short, so a proxy learns of a dead worker, and ejects it, fast."""

    supervise: bool = True
    """`up` starts a node supervisor (``infra.supervise``): a node that dies by itself
    (a head whose GCS exited when it lost Redis, say) is started again, as KubeRay's
    operator restarts a head pod. Nodes a fault killed on purpose are left to it."""

    dashboard: bool = True
    """Run Ray's full dashboard on heads (+~700 MB each): it serves the Job Submission API
    the Keepers start serving jobs through."""

    db_address: str = "127.0.100.1"
    """Loopback address of the private DB server, its own so a drill can partition it."""

    db_port: int = 9306
    """Port of the private DB server (3306 may be the machine's shared server)."""

    redis_address: str = "127.0.100.2"
    """Loopback address of the private Redis used for Ray GCS fault tolerance."""

    redis_port: int = 9379
    """Port of the private Redis (6379 may be the machine's shared server)."""

    ray_bin: str = Field(default_factory=lambda: str(Path(sys.executable).with_name("ray")))
    """The ``ray`` CLI of the running interpreter, so nodes run the same Ray as the caller."""

    mariadbd_bin: str | None = Field(
        default_factory=lambda: shutil.which("mariadbd") or shutil.which("mysqld")
    )
    """MySQL-compatible server binary for the private DB; None falls back (see
    docs/operations.md, "Choosing the DB")."""

    redis_bin: str | None = Field(default_factory=lambda: shutil.which("redis-server"))
    """Redis binary for GCS fault tolerance; None starts clusters without GCS FT."""

    tls: bool = True
    """`up` makes a private CA and certificates, and the Keepers' API, their link to the
    AppMasters (mutual TLS) and the proxies serve TLS only. `up --no-tls` (or
    `HA_SERVING_STACK_TLS=0` for what brings a stack up itself: the load tests, the
    bench) brings a stack up in plaintext, for a benchmark; `up` prints a warning."""

    redis_auth: bool = True
    """The private Redis requires a password `up` generates (``requirepass``, from a
    0600 config file). Ray's heads must then be given it on their command line
    (``ray start --redis-password``), which Ray also passes to its own processes: Ray's
    exception to "no secret in argv". False: a Redis without a password."""

    @model_validator(mode="after")
    def _starts_agree(self) -> Self:
        """A node's own start wait fits inside what its cluster and ``up`` wait for."""
        _require(
            self.ray_register_wait_s < self.gcs_reconnect_timeout_s,
            f"ray_register_wait_s ({self.ray_register_wait_s}) must be below "
            f"gcs_reconnect_timeout_s ({self.gcs_reconnect_timeout_s}), or a head still "
            "starting outlives its cluster's raylets",
        )
        _require(
            self.ray_register_wait_s < self.node_start_timeout_s,
            f"ray_register_wait_s ({self.ray_register_wait_s}) must be below "
            f"node_start_timeout_s ({self.node_start_timeout_s})",
        )
        return self


class ProxySettings(_Group):
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request a proxy accepts, in bytes (gRPC's own 4 MiB default); larger ones get
    RESOURCE_EXHAUSTED from gRPC before any user code runs."""

    default_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds a call may take when the client set no deadline, so a hung backend cannot
    hold a request (and its concurrency slot) forever."""

    stop_grace_s: float = Field(default=10.0, ge=0)
    """Seconds a stopping proxy lets in-flight calls finish before cancelling them; longer
    than a typical call, shorter than an operator's patience during a drain."""

    max_concurrent_rpcs: int = Field(default=10_000, ge=1)
    """Calls one proxy holds at once before gRPC answers RESOURCE_EXHAUSTED; bounds memory
    under overload far above what 2 cores serve."""

    max_method_labels: int = Field(default=100, ge=1)
    """Distinct method names kept as metric labels; further names share ``<other>`` so
    garbage method names cannot blow up the metrics' cardinality."""

    eject_probe_s: float = Field(default=0.25, gt=0)
    """Seconds after ejecting a worker that could not be reached before the proxy first
    pings it; then doubling up to ``eject_probe_max_s``. Ray restarts a killed worker
    process in ~1-3 s here; an early ping costs one cheap call."""

    eject_probe_max_s: float = Field(default=2.0, gt=0)
    """Longest pause between pings of an ejected worker, so a worker back after a long
    outage is used again within this many seconds (or at the AppMaster's next table)."""

    data_plane: Literal["direct", "ray"] = "direct"
    """How a proxy reaches backend workers. "direct": over gRPC to the worker's own server,
    whose address the routing table carries; a worker without one (its server could not
    be started, or an older worker) is called through Ray. "ray": a Ray actor call
    (``BackendWorker.call``) for every request, the path before the direct one."""

    direct_connect_timeout_s: float = Field(default=1.0, gt=0)
    """Longest wait for a connection to a worker's direct server (within the call's
    deadline); a call that could not connect was never sent, so it is retried on
    another worker. On one network a refused connection fails at once; this bounds the
    wait on a silent address."""


class ClientSettings(_Group):
    timeout_s: float = Field(default=10.0, gt=0)
    """Overall deadline of one call in seconds, retries included."""

    max_attempts: int = Field(default=3, ge=1)
    """Tries per call (first + retries); 3 covers one dead proxy and one dead instance."""

    retry_ratio: float = Field(default=0.2, ge=0)
    """Retries allowed per request made (a token bucket): 0.2 keeps a failing backend from
    seeing more than 1.2x the offered load (a retry storm)."""

    retry_floor: float = Field(default=10.0, ge=0)
    """Retries per second allowed on top of ``retry_ratio`` (and the most a quiet client can
    burst), so a client that sends little can still retry its few failures."""

    endpoint_down_s: float = Field(default=2.0, ge=0)
    """Seconds an endpoint answering UNAVAILABLE is skipped; short, because proxies restart
    fast and a stale mark would concentrate load on the others."""

    retry_backoff_s: float = Field(default=0.02, ge=0)
    """Base pause before a retry in seconds (jittered, doubled per attempt); small, since a
    retry goes to another endpoint, not back to the one that failed."""

    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest reply the client accepts, in bytes; matches the proxy's request limit."""

    routes_refresh_s: float = Field(default=0.3, gt=0)
    """Direct mode: age in seconds at which a call fetches a service's direct routes
    again from a proxy (and the least wait after a failed fetch). A few hundred ms: a
    drained or moved instance is seen about as soon as a proxy sees it, at one small RPC
    per service per period, paid by one call."""

    routes_timeout_s: float = Field(default=1.0, gt=0)
    """Direct mode: longest wait for a proxy's routes (within the call's deadline); a call
    whose fetch fails goes on with the routes held, or through a proxy."""

    direct_connect_timeout_s: float = Field(default=1.0, gt=0)
    """Direct mode: longest wait for a connection to a worker's direct server (within the
    call's deadline); a call that could not connect was never sent, so it is tried on
    another worker. As the proxies' ``proxy.direct_connect_timeout_s``."""

    direct_eject_s: float = Field(default=2.0, gt=0)
    """Direct mode: seconds a worker whose direct call failed is skipped (unless the
    routes give it a new address first). About the time Ray takes to restart a killed
    worker here, and the proxies' longest pause between pings of an ejected worker."""


class KeeperSettings(_Group):
    replicas: int = Field(default=3, ge=1, le=9)
    """Keeper processes `up` starts; 3 survive the loss of any one (leader included)."""

    address_prefix: str = "127.0.200"
    """Keeper k listens on <prefix>.k, its own loopback address (partitionable alone)."""

    port: int = Field(default=9400, ge=1024, le=65535)
    """Control API port of every Keeper (each on its own address)."""

    lease_ttl_s: float = Field(default=3.0, gt=0.5, le=60)
    """Leader lease in seconds: a dead leader is replaced within about this long (plus a
    tick, ttl/3); a leader that cannot renew stops acting after ttl * 3/4."""

    watch_period_s: float = Field(default=0.5, gt=0, le=30)
    """How often a Keeper re-reads the endpoints of the services its Watch streams watch
    (one read for all of them, ``keeper/_watchhub.py``); bounds how stale a client's view
    is after a proxy appears or its lease lapses."""

    watch_keepalive_s: float = Field(default=2.0, gt=0)
    """A Watch stream re-sends an unchanged list this often, so clients notice a dead
    or silent stream (``Discovery``'s ``silence_s``, 6 s) and switch Keeper without a
    change having to happen."""

    link_period_s: float = Field(default=0.3, gt=0, le=10)
    """How often a Keeper re-reads the instructions of the AppMaster links it holds (one
    read for all of them) and sends each link its new ones or a beat, which the AppMaster
    answers with its heartbeat: bounds the delay between the leader's decision and the
    AppMaster acting on it. The heartbeats a Keeper receives within a third of it
    (the derived ``link_heartbeat_window_s``) are written together."""

    link_beat_s: float = Field(default=0.2, gt=0)
    """Least time between two heartbeats of an AppMaster's link. Below ``link_period_s``,
    so each of the Keeper's beats is answered, and a live AppMaster's heartbeat is at
    most one link period old."""

    link_silence_s: float = Field(default=3.0, gt=0)
    """A Keeper whose stream is silent this long is left for the next: a paused or
    partitioned Keeper keeps its TCP connection open, so only silence shows it. At
    least 2 link periods (one missed beat is no silence); with ``link_retry_s`` below
    ``heartbeat_stale_s``, so a link stuck on a silent Keeper moves on before the leader
    takes its AppMaster for dead."""

    link_retry_s: float = Field(default=0.5, gt=0)
    """Pause before an AppMaster's link opens a stream to the next Keeper."""

    reconcile_period_s: float = Field(default=0.5, gt=0, le=30)
    """How often the leader's reconciler runs a round (operations, cluster loss,
    AppMasters' jobs, pruning)."""

    heartbeat_stale_s: float = Field(default=5.0, gt=0)
    """An AppMaster whose link has not heartbeated this long gets its serving job
    resubmitted. Above ``link_silence_s + link_retry_s`` (a link failing over between
    Keepers is not a dead AppMaster)."""

    loss_silence_s: float = Field(default=1.5, gt=0)
    """A cluster is lost once its GCS refuses connections and none of its AppMasters
    has heartbeated for this long. Both must hold, so a slow DB or a busy Keeper alone
    never makes a live cluster look lost. At least 2 heartbeat intervals
    (``max(link_period_s, link_beat_s)``), so one late beat is not a loss."""

    capacity_period_s: float = Field(default=2.0, gt=0, le=600)
    """How often the leader recomputes the capacity floors of autoscaled services placed
    on more than one cluster (``keeper/_capacity.py:floors``): one read of their
    AppMasters' states and of the floors, and a write per floor that changed."""

    capacity_stuck_s: float = Field(default=30.0, gt=0)
    """A cluster that has served fewer instances than it decided for this long (or 3
    times the policy's ``instance_start_s``, if longer) cannot grow: what it lacks goes
    to the other clusters' floors."""

    resubmit_s: float = Field(default=30.0, gt=0)
    """Least time between two submissions of the same serving job: the AppMaster of a
    job just submitted needs time to start and link."""

    submit_retry_s: float = Field(default=1.0, gt=0)
    """Pause before a submission that failed (a restarted cluster whose GCS answers
    before its Job API does) is tried again; at most ``resubmit_s``."""

    token: str | None = None
    """Shared secret for the control API (``authorization: Bearer <token>``), given
    inline (tests; a Kubernetes Secret in the environment). Prefer ``token_file``."""

    token_file: Path | None = None
    """File holding the operator credential (every RPC); `up` generates one into
    <run_dir>/secrets/operator.token and passes its path, never the value."""

    discovery_token_file: Path | None = None
    """File holding the discovery credential (Status, Resolve, Watch only): what clients
    get; `up` generates <run_dir>/secrets/discovery.token."""

    credentials_dir: Path | None = None
    """Directory (0700) where the leader writes each AppMaster's credential (minted per
    serving job, kept hashed in the store); the job gets the file's path. `up` sets
    <run_dir>/secrets/appmasters. None: AppMasters get the ``token_file`` instead."""

    insecure: bool = False
    """Serve without credentials when none is configured (``keeper run --insecure``; a
    loud warning is logged). False: a Keeper without credentials refuses to start."""

    max_message_bytes: int = Field(default=MAX_PACKAGE_BYTES + 16 * MiB, ge=4 * MiB)
    """Largest message a Keeper, and each client of it (CLI, AppMaster link), sends or
    receives: a Deploy carries a code package (up to ``MAX_PACKAGE_BYTES``, 50 MiB) plus
    its spec, so gRPC's own 4 MiB would refuse most packages."""

    max_concurrent_rpcs: int = Field(default=10_000, ge=1)
    """Calls one Keeper holds at once before gRPC answers RESOURCE_EXHAUSTED; each Watch
    stream and AppMaster link holds one while open, so this bounds memory far above what
    a stack opens."""

    operations_page_size: int = Field(default=100, ge=1, le=10_000)
    """Most operations one ``Operations`` reply carries; a client pages for more."""

    retention_s: float = Field(default=7 * 86_400.0, ge=3600)
    """Finished history older than this is pruned by the leader: finished operations
    (never each service's latest), events, instructions its AppMaster has consumed
    (never the latest per target) and code packages nothing references any more."""

    prune_period_s: float = Field(default=300.0, gt=0)
    """How often the leader prunes (one bounded batch per table each time)."""

    prune_batch: int = Field(default=500, ge=1, le=100_000)
    """Rows deleted per table in one pruning pass, so a pass is a short transaction
    even when a backlog of history waits."""

    @property
    def link_heartbeat_window_s(self) -> float:
        """How long a Keeper's batch of link heartbeats stays open after its first one:
        a third of a link period. The Keeper's beats reach its links together, so their
        answers fall into about one batch (one write) per period, and each is answered
        well before the next beat asks for another."""
        return self.link_period_s / 3

    @model_validator(mode="after")
    def _timings_agree(self) -> Self:
        """The link's and the leader's timings depend on each other (see each field)."""
        beat = max(self.link_period_s, self.link_beat_s)
        _require(
            self.link_beat_s < self.link_period_s,
            f"link_beat_s ({self.link_beat_s}) must be below link_period_s "
            f"({self.link_period_s}), or some Keeper beats go unanswered",
        )
        _require(
            self.link_silence_s >= 2 * self.link_period_s,
            f"link_silence_s ({self.link_silence_s}) must be at least 2 link periods "
            f"({2 * self.link_period_s}), or one missed beat drops a live Keeper",
        )
        _require(
            self.heartbeat_stale_s > self.link_silence_s + self.link_retry_s,
            f"heartbeat_stale_s ({self.heartbeat_stale_s}) must exceed link_silence_s + "
            f"link_retry_s ({self.link_silence_s + self.link_retry_s}), or a link failing "
            "over between Keepers gets its job resubmitted",
        )
        _require(
            self.loss_silence_s >= 2 * beat,
            f"loss_silence_s ({self.loss_silence_s}) must be at least 2 heartbeat "
            f"intervals ({2 * beat}), or one late beat declares a live cluster lost",
        )
        _require(
            self.submit_retry_s <= self.resubmit_s,
            f"submit_retry_s ({self.submit_retry_s}) must be at most resubmit_s "
            f"({self.resubmit_s})",
        )
        return self


class AppMasterSettings(_Group):
    endpoint_ttl_s: float = Field(default=15.0, gt=0)
    """Discovery lease of a proxy's endpoint, renewed every ``endpoint_refresh_s``: a
    proxy whose AppMaster died drops out of discovery this long after its last renewal."""

    endpoint_refresh_s: float = Field(default=5.0, gt=0)
    """How often an AppMaster renews an unchanged endpoint's lease (at the end of the
    first round this long after its last write; a new endpoint or a label change is
    written at once). A third of ``endpoint_ttl_s``: a renewal may fail, or a round run
    10 s long, before a live proxy's endpoint lapses; at most half of it."""

    failed_retry_s: float = Field(default=2.0, ge=0)
    """A failed instance is retried after this long, so a broken version does not spin."""

    call_timeout_s: float = Field(default=30.0, gt=0)
    """Longest an AppMaster waits for one call to a worker or proxy actor (start, load,
    health...), so one hung actor cannot hold the control loop."""

    withdraw_s: float = Field(default=5.0, ge=0)
    """Seconds a proxy keeps serving after its endpoint left discovery, before it is
    stopped. Clients hear of the withdrawal through their Keeper Watch within its
    period, so it must exceed ``keeper.watch_period_s``; one whose Keeper went silent (up
    to the client's 6 s ``silence_s``) may still call the stopping proxy and gets a
    retry-safe UNAVAILABLE. Longer only keeps a surplus proxy around longer."""

    stop_margin_s: float = Field(default=5.0, gt=0)
    """Seconds on top of a drain grace period that a stop call may take to answer."""

    @model_validator(mode="after")
    def _lease_renewed_in_time(self) -> Self:
        _require(
            self.endpoint_refresh_s <= self.endpoint_ttl_s / 2,
            f"endpoint_refresh_s ({self.endpoint_refresh_s}) must be at most half of "
            f"endpoint_ttl_s ({self.endpoint_ttl_s}), or one late renewal lets a live "
            "proxy's endpoint lapse",
        )
        return self


class AutoscaleSettings(_Group):
    reading_period_s: float = Field(default=1.0, gt=0, le=60)
    """Seconds between two readings of a service's proxies (in-flight calls, answered
    calls, latency) by its AppMaster, each followed by a decision. Knative's autoscaler
    reads every 2 s; 1 s lets a 6 s panic window hold 6 readings."""

    metrics_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """A proxy whose figures take longer is left out of that reading (a reading needs
    at least one proxy's, or no decision is taken)."""

    floor_period_s: float = Field(default=5.0, gt=0, le=600)
    """Seconds between two reads of the Keeper's capacity floor by the AppMaster of an
    autoscaled service placed on more than one cluster (one primary-key read each)."""


class TlsSettings(_Group):
    ca_file: Path | None = None
    """The stack's CA certificate (PEM): clients verify the Keepers' and the proxies'
    certificates against it, and the Keepers verify the AppMasters' link certificates.
    None: plaintext everywhere (`up --no-tls`)."""

    keeper_cert_file: Path | None = None
    """The Keepers' server certificate (its SANs: every Keeper address)."""

    keeper_key_file: Path | None = None
    """Its private key (0600)."""

    proxy_cert_file: Path | None = None
    """The proxies' server certificate (its SANs: every node address of the stack)."""

    proxy_key_file: Path | None = None
    """Its private key (0600)."""

    appmaster_cert_file: Path | None = None
    """The AppMasters' client certificate, shown on their link to the Keepers (mutual
    TLS on the Keepers' link port, ``keeper.port`` + 1)."""

    appmaster_key_file: Path | None = None
    """Its private key (0600)."""


class Settings(_Group):
    stack: StackSettings = StackSettings()
    """The local stack `up` starts: run directory, Ray clusters and nodes, their port
    blocks, the private DB and Redis, and the binaries that run them."""
    keeper: KeeperSettings = KeeperSettings()
    """The replicated Keepers: how many and where they listen, the leader lease, discovery's
    Watch streams, the AppMasters' links, the control API and the leader's housekeeping."""
    store: StoreSettings = StoreSettings()
    """The state store (MariaDB/MySQL, or SQLite): its URL and connect timeout."""
    proxy: ProxySettings = ProxySettings()
    """Each service's gRPC proxies: message size, default deadline, graceful stop,
    concurrency bound, metric labels, the ejection of unreachable workers and the path
    to the workers (direct gRPC, or Ray actor calls)."""
    client: ClientSettings = ClientSettings()
    """The client SDK: overall deadline, attempts, the retry budget and back-off, how long
    a failing endpoint is skipped, and the largest reply."""
    tls: TlsSettings = TlsSettings()
    """TLS of the Keepers' API and link and of the proxies: the stack's CA and the
    certificates `up` issues from it (files under <run_dir>/secrets/tls/)."""
    appmaster: AppMasterSettings = AppMasterSettings()
    """Each AppMaster's control loop: discovery leases of its proxies, actor call
    timeouts, the retry of failed instances and the withdrawal of surplus proxies. An
    AppMaster actor runs with the defaults (it is started with no settings of its own),
    as its link runs with the default ``keeper`` ones."""
    autoscale: AutoscaleSettings = AutoscaleSettings()
    """The AppMasters' autoscalers: how often they read their proxies' figures. The
    policies themselves are each service's (its spec's ``autoscaling`` section)."""

    @model_validator(mode="after")
    def _groups_agree(self) -> Self:
        """Timings that span two groups."""
        _require(
            self.appmaster.withdraw_s > self.keeper.watch_period_s,
            f"appmaster.withdraw_s ({self.appmaster.withdraw_s}) must exceed "
            f"keeper.watch_period_s ({self.keeper.watch_period_s}), or clients are sent to "
            "a proxy already stopped",
        )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); the only reader of it."""
        env = os.environ if env is None else env
        groups: dict[str, dict[str, object]] = {"stack": {}, "store": {}, "keeper": {}, "tls": {}}
        for var, group, field in SETTINGS_ENV:
            if v := env.get(var):  # set and not empty: "" means "not set"
                groups[group][field] = v
        return cls.build(**groups)

    @classmethod
    def build(cls, **groups: Mapping[str, object]) -> Settings:
        """Validate ``groups`` into Settings, turning pydantic's error into InvalidSpec."""
        try:
            return cls.model_validate({k: dict(v) for k, v in groups.items()})
        except ValidationError as exc:
            raise InvalidSpec("settings", _problems(exc)) from None

    def with_stack(self, **changes: object) -> Settings:
        """A copy with some stack fields changed, validated like the originals."""
        groups = {name: getattr(self, name).model_dump() for name in type(self).model_fields}
        groups["stack"] = {**groups["stack"], **changes}
        return Settings.build(**groups)


SETTINGS_ENV: tuple[tuple[str, str, str], ...] = (
    ("HA_SERVING_RUN_DIR", "stack", "run_dir"),
    ("HA_SERVING_CLUSTERS", "stack", "clusters"),
    ("HA_SERVING_MARIADBD", "stack", "mariadbd_bin"),
    ("HA_SERVING_REDIS_SERVER", "stack", "redis_bin"),
    ("HA_SERVING_PORT_BASE", "stack", "port_base"),
    ("HA_SERVING_DB_PORT", "stack", "db_port"),
    ("HA_SERVING_REDIS_PORT", "stack", "redis_port"),
    ("HA_SERVING_STACK_TLS", "stack", "tls"),
    ("HA_SERVING_DB_URL", "store", "url"),
    ("HA_SERVING_DB_PASSWORD_FILE", "store", "password_file"),
    ("HA_SERVING_KEEPER_TOKEN", "keeper", "token"),
    ("HA_SERVING_KEEPER_TOKEN_FILE", "keeper", "token_file"),
    ("HA_SERVING_KEEPER_DISCOVERY_TOKEN_FILE", "keeper", "discovery_token_file"),
    ("HA_SERVING_KEEPER_CREDENTIALS_DIR", "keeper", "credentials_dir"),
    ("HA_SERVING_KEEPER_TTL", "keeper", "lease_ttl_s"),
    ("HA_SERVING_KEEPER_PORT", "keeper", "port"),
    ("HA_SERVING_TLS_CA", "tls", "ca_file"),
    ("HA_SERVING_TLS_KEEPER_CERT", "tls", "keeper_cert_file"),
    ("HA_SERVING_TLS_KEEPER_KEY", "tls", "keeper_key_file"),
    ("HA_SERVING_TLS_PROXY_CERT", "tls", "proxy_cert_file"),
    ("HA_SERVING_TLS_PROXY_KEY", "tls", "proxy_key_file"),
    ("HA_SERVING_TLS_APPMASTER_CERT", "tls", "appmaster_cert_file"),
    ("HA_SERVING_TLS_APPMASTER_KEY", "tls", "appmaster_key_file"),
)
"""Each environment variable ``Settings.from_env`` reads: (variable, group, field)."""


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "value_error":  # a relation (``_require``): its message says it
            out.append(f"{where}: {err['ctx']['error']}" if where else str(err["ctx"]["error"]))
        else:
            out.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return out

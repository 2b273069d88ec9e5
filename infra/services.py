"""The stack's own state services: a private MySQL-compatible server and a private Redis.

DB choice, in this order (first that applies wins):

1. ``HA_SERVING_DB_URL`` (``StoreSettings.url``): used as is; it must answer.
2. a private ``mariadbd``/``mysqld`` in ``<run>/db`` on its own address and port;
3. a testcontainers MySQL, when the package is installed and a Docker engine answers;
4. an embedded SQLite file, with a warning: single host, no HA.

Redis (for Ray GCS fault tolerance) is a private ``redis-server`` when one exists;
without it clusters start without GCS FT and ``status`` says so.

Passwords: the private server's application user (``hasrv``, rights on its database
only) and its ``root`` (reachable through the unix socket only) get passwords generated
at each start, kept in ``<run_dir>/secrets/`` (mode 0600) with the init SQL that sets
them; Redis gets a ``requirepass`` from a 0600 config file. A given URL's password is
moved to a file too. The topology records URLs without passwords and the files' paths.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import URL

from ha_serving._errors import StackError, StoreUnavailable
from ha_serving._settings import Settings
from ha_serving.store import Store, StoreRef
from ha_serving.util.secrets import new_secret, read_secret, split_password, write_secret
from infra import procs
from infra.ports import ensure_free, tcp_answers
from infra.topology import Database, DBKind, Proc, Redis

log = logging.getLogger(__name__)

DB_NAME = "ha_serving"
DB_USER = "hasrv"
"""The private server's application user: every right on ``DB_NAME``, none elsewhere."""
DB_PASSWORD_FILE = "db.password"  # noqa: S105 - a file name
DB_ROOT_PASSWORD_FILE = "db-root.password"  # noqa: S105 - a file name
DB_INIT_FILE = "db-init.sql"
REDIS_PASSWORD_FILE = "redis.password"  # noqa: S105 - a file name
REDIS_CONF_FILE = "redis.conf"
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,60}")


def init_sql(password: str, root_password: str, hostname: str | None = None) -> str:
    """What the private server runs at every start (``--init-file``, one statement per
    line): the application user with ``password``; root with ``root_password``, and
    only through the unix socket: the passwordless root accounts ``mariadb-install-db``
    makes for TCP (127.0.0.1, ::1, the host's name) and the ``root@'%'`` of earlier
    versions of this stack are dropped. Each start sets the passwords anew, so a data
    directory kept from an earlier run takes this run's."""
    lines = [
        f"CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4;",
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'%' IDENTIFIED BY '{password}';",
        f"ALTER USER '{DB_USER}'@'%' IDENTIFIED BY '{password}';",
        f"GRANT ALL PRIVILEGES ON {DB_NAME}.* TO '{DB_USER}'@'%';",
        "DROP USER IF EXISTS 'root'@'%';",
        "DROP USER IF EXISTS 'root'@'127.0.0.1';",
        "DROP USER IF EXISTS 'root'@'::1';",
    ]
    if hostname and hostname != "localhost" and _HOSTNAME.fullmatch(hostname):
        lines.append(f"DROP USER IF EXISTS 'root'@'{hostname}';")
    lines.append(f"ALTER USER IF EXISTS 'root'@'localhost' IDENTIFIED BY '{root_password}';")
    return "\n".join(lines) + "\n"


def _external(kind: DBKind, url: str, secrets: Path, password_file: Path | None) -> Database:
    """A store `up` did not start: its URL's password, if any, moved to a file."""
    bare, password = split_password(url)
    if password is not None:
        password_file = write_secret(secrets / DB_PASSWORD_FILE, password)
    return Database(kind=kind, public_url=bare, password_file=password_file)


def start_database(settings: Settings, run_dir: Path, secrets: Path) -> Database:
    """Pick and start the state store per the order above; migrate its schema.
    Passwords go to files in ``secrets`` (a 0700 directory)."""
    if settings.store.url:
        db = _external("external", settings.store.url, secrets, settings.store.password_file)
    elif settings.stack.mariadbd_bin:
        db = start_mariadb(
            settings.stack.mariadbd_bin,
            run_dir / "db",
            address=settings.stack.db_address,
            port=settings.stack.db_port,
            secrets=secrets,
        )
    elif (container := _try_testcontainers()) is not None:
        db = _external("testcontainers", container[0], secrets, None)
        db.container_id = container[1]
    else:
        log.warning(
            "no MySQL-compatible server found: using an embedded SQLite file. "
            "This is a single-host setup without database HA; set HA_SERVING_DB_URL "
            "or install mariadb-server for the real thing."
        )
        db = Database(kind="sqlite", public_url=f"sqlite:///{(run_dir / 'state.db').resolve()}")
    try:
        check_database(db.ref(), timeout_s=settings.store.connect_timeout_s)
    except StoreUnavailable:
        stop_database(db)
        raise
    return db


def check_database(url: str | StoreRef, *, timeout_s: float) -> int:
    """Connect, migrate, and return the schema version; StoreUnavailable if it won't answer."""
    store = Store.connect(url, connect_timeout_s=timeout_s)
    try:
        return store.schema_version()
    finally:
        store.close()


def database_alive(db: Database) -> bool:
    try:
        store = Store.connect(db.ref(), connect_timeout_s=1.0)
    except StoreUnavailable:
        return False
    try:
        return store.ping()
    finally:
        store.close()


def start_mariadb(
    binary: str, data_dir: Path, *, address: str, port: int, secrets: Path
) -> Database:
    """A private mariadbd in ``data_dir`` (initialised on first use) at ``address:port``,
    its passwords new and in files in ``secrets`` (a 0700 directory)."""
    if not Path(binary).exists() and shutil.which(binary) is None:
        raise StackError(f"MySQL-compatible server binary not found: {binary}")
    ensure_free(address, [port], what="the private database")
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "data" / "mysql").exists():
        _install_db(data_dir)
    (data_dir / "init.sql").unlink(missing_ok=True)  # an earlier version's, passwordless
    password = new_secret()
    password_file = write_secret(secrets / DB_PASSWORD_FILE, password)
    write_secret(secrets / DB_ROOT_PASSWORD_FILE, root_password := new_secret())
    init = write_secret(
        secrets / DB_INIT_FILE, init_sql(password, root_password, socket.gethostname())
    )
    argv = [
        binary,
        "--no-defaults",
        f"--datadir={data_dir / 'data'}",
        f"--socket={data_dir / 'mysqld.sock'}",
        f"--pid-file={data_dir / 'mysqld.pid'}",
        f"--bind-address={address}",
        f"--port={port}",
        "--user=root",  # ignored unless we run as root, where mariadbd insists on it
        "--skip-name-resolve",
        f"--init-file={init}",
        "--innodb-buffer-pool-size=64M",
        "--skip-log-bin",
        # a code package may be 50 MiB (MAX_PACKAGE_BYTES); the default 16 MiB packet would
        # refuse the INSERT of one past 16 MiB although gRPC lets it through
        "--max-allowed-packet=96M",
    ]
    proc = _start_server(
        "mariadbd", argv, data_dir / "mariadbd.log", lambda: tcp_answers(address, port), 30
    )
    url = f"mysql+pymysql://{DB_USER}@{address}:{port}/{DB_NAME}"
    return Database(
        kind="mariadb",
        public_url=url,
        password_file=password_file,
        address=f"{address}:{port}",
        proc=proc,
    )


def admin_url(db: Database, database: str = "") -> str:
    """The private server's root, through its unix socket, with its password: for
    tests and an operator's repairs, never for the stack's own processes."""
    if db.proc is None or db.password_file is None:
        raise StackError(f"the stack's DB ({db.kind}) is not a server it started")
    data_dir = Path(next(a for a in db.proc.argv if a.startswith("--datadir=")).split("=", 1)[1])
    root_password = read_secret(db.password_file.with_name(DB_ROOT_PASSWORD_FILE))
    url = URL.create(
        "mysql+pymysql",
        username="root",
        password=root_password,
        host="localhost",
        database=database or None,
        query={"unix_socket": str(data_dir.parent / "mysqld.sock")},
    )
    return url.render_as_string(hide_password=False)


def _start_server(
    what: str, argv: list[str], log: Path, answers: Callable[[], bool], timeout_s: float
) -> Proc:
    """Spawn a server and wait until it answers; if it exits or times out, kill it."""
    proc = procs.spawn(argv, log=log)
    try:
        procs.wait_for(
            f"private {what}", lambda: not procs.alive(proc) or answers(), timeout_s=timeout_s
        )
        if not procs.alive(proc):
            raise StackError(f"{what} exited at start: {procs.log_tail(proc.log)}")
    except (TimeoutError, StackError):
        procs.kill(proc)
        raise
    return proc


def _install_db(data_dir: Path) -> None:
    installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if installer is None:
        raise StackError("mariadb-install-db not found next to the MySQL-compatible server")
    result = subprocess.run(
        [
            installer,
            "--no-defaults",
            f"--datadir={data_dir / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(data_dir / "data", ignore_errors=True)
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise StackError(f"initialising the private database failed: {tail}")


def _try_testcontainers() -> tuple[str, str] | None:
    """A MySQL container (its URL and id) when testcontainers and a Docker engine are
    both there."""
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    if probe.returncode != 0:
        return None
    try:
        from testcontainers.mysql import MySqlContainer
    except ImportError:
        log.warning("a Docker engine answers but testcontainers is not installed (extra: docker)")
        return None
    # Ryuk would remove the container when this short-lived `up` process exits; `down`
    # removes it by id instead.
    container = MySqlContainer("mysql:8.4", dbname=DB_NAME)
    container.with_env("TESTCONTAINERS_RYUK_DISABLED", "true")
    container.start()
    return container.get_connection_url(), container.get_wrapped_container().id


def stop_database(db: Database) -> None:
    if db.proc is not None:
        procs.kill(db.proc, grace_s=10)  # SIGTERM first: InnoDB shuts down cleanly
    if db.container_id is not None:
        subprocess.run(["docker", "rm", "-f", db.container_id], capture_output=True, check=False)


def start_redis(
    binary: str, data_dir: Path, *, address: str, port: int, secrets: Path | None
) -> Redis:
    """A private redis-server in ``data_dir`` at ``address:port``; with ``secrets`` (a
    0700 directory), it requires a new password, set in a 0600 config file there (a
    ``--requirepass`` argument would show it to ``ps``)."""
    ensure_free(address, [port], what="the private Redis")
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = None
    config: list[str] = []
    if secrets is not None:
        password = new_secret()
        password_file = write_secret(secrets / REDIS_PASSWORD_FILE, password)
        conf = write_secret(secrets / REDIS_CONF_FILE, f"requirepass {password}\n")
        config = [str(conf)]
    argv = [
        binary,
        *config,  # a config file comes first; the options after it add to it
        "--bind", address,
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        # GCS state must survive a Redis restart in a drill, so keep an append-only file
        "--appendonly", "yes",
        "--protected-mode", "no",
        "--daemonize", "no",
    ]  # fmt: skip
    secret = read_secret(password_file) if password_file is not None else None
    proc = _start_server(
        "redis-server", argv, data_dir / "redis.log", lambda: redis_ping(address, port, secret), 15
    )
    return Redis(address=f"{address}:{port}", proc=proc, password_file=password_file)


def redis_ping(
    address: str, port: int, password: str | None = None, timeout_s: float = 0.5
) -> bool:
    """PING over RESP on a raw socket (no client library for two commands), after an
    AUTH with ``password`` when one is given."""
    request = b"PING\r\n"
    expected = b"+PONG\r\n"
    if password is not None:
        request = b"AUTH " + password.encode() + b"\r\n" + request
        expected = b"+OK\r\n" + expected
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as s:
            s.sendall(request)
            answer = b""
            while len(answer) < len(expected) and expected.startswith(answer):
                chunk = s.recv(64)
                if not chunk:
                    break
                answer += chunk
            return answer.startswith(expected)
    except OSError:
        return False


def redis_alive(redis: Redis) -> bool:
    host, _, port = redis.address.rpartition(":")
    return redis_ping(host, int(port), redis.password())


def stop_redis(redis: Redis) -> None:
    procs.kill(redis.proc, grace_s=5)

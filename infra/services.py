"""The stack's own state services: a private MySQL-compatible server and a private Redis.

DB choice, in this order (first that applies wins):

1. ``HA_SERVING_DB_URL`` (``StoreSettings.url``): used as is; it must answer.
2. a private ``mariadbd``/``mysqld`` in ``<run>/db`` on its own address and port;
3. a testcontainers MySQL, when the package is installed and a Docker engine answers;
4. an embedded SQLite file, with a warning: single host, no HA.

Redis (for Ray GCS fault tolerance) is a private ``redis-server`` when one exists;
without it clusters start without GCS FT and ``status`` says so.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from ha_serving._errors import StackError, StoreUnavailable
from ha_serving._settings import Settings
from ha_serving.store import Store
from infra import procs
from infra.ports import ensure_free, tcp_answers
from infra.topology import Database, Proc, Redis

log = logging.getLogger(__name__)

DB_NAME = "ha_serving"
_INIT_SQL = f"""\
CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4;
"""
# The private server's root is reachable over TCP without a password: it binds one
# loopback address of a single-user dev stack. Point HA_SERVING_DB_URL at a real server
# for anything shared.


def start_database(settings: Settings, run_dir: Path) -> Database:
    """Pick and start the state store per the order above; migrate its schema."""
    if settings.store.url:
        db = Database(kind="external", url=settings.store.url)
    elif settings.stack.mariadbd_bin:
        db = start_mariadb(
            settings.stack.mariadbd_bin,
            run_dir / "db",
            address=settings.stack.db_address,
            port=settings.stack.db_port,
        )
    elif (container := _try_testcontainers()) is not None:
        db = container
    else:
        log.warning(
            "no MySQL-compatible server found: using an embedded SQLite file. "
            "This is a single-host setup without database HA; set HA_SERVING_DB_URL "
            "or install mariadb-server for the real thing."
        )
        db = Database(kind="sqlite", url=f"sqlite:///{(run_dir / 'state.db').resolve()}")
    try:
        check_database(db.url, timeout_s=settings.store.connect_timeout_s)
    except StoreUnavailable:
        stop_database(db)
        raise
    return db


def check_database(url: str, *, timeout_s: float) -> int:
    """Connect, migrate, and return the schema version; StoreUnavailable if it won't answer."""
    store = Store.connect(url, connect_timeout_s=timeout_s)
    try:
        return store.schema_version()
    finally:
        store.close()


def database_alive(db: Database) -> bool:
    try:
        store = Store.connect(db.url, connect_timeout_s=1.0)
    except StoreUnavailable:
        return False
    try:
        return store.ping()
    finally:
        store.close()


def start_mariadb(binary: str, data_dir: Path, *, address: str, port: int) -> Database:
    """A private mariadbd in ``data_dir`` (initialised on first use) at ``address:port``."""
    if not Path(binary).exists() and shutil.which(binary) is None:
        raise StackError(f"MySQL-compatible server binary not found: {binary}")
    ensure_free(address, [port], what="the private database")
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "data" / "mysql").exists():
        _install_db(data_dir)
    init = data_dir / "init.sql"
    init.write_text(_INIT_SQL)
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
    url = f"mysql+pymysql://root@{address}:{port}/{DB_NAME}"
    return Database(kind="mariadb", url=url, address=f"{address}:{port}", proc=proc)


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


def _try_testcontainers() -> Database | None:
    """A MySQL container when testcontainers and a Docker engine are both there."""
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
    url = container.get_connection_url()
    return Database(
        kind="testcontainers", url=url, container_id=container.get_wrapped_container().id
    )


def stop_database(db: Database) -> None:
    if db.proc is not None:
        procs.kill(db.proc, grace_s=10)  # SIGTERM first: InnoDB shuts down cleanly
    if db.container_id is not None:
        subprocess.run(["docker", "rm", "-f", db.container_id], capture_output=True, check=False)


def start_redis(binary: str, data_dir: Path, *, address: str, port: int) -> Redis:
    ensure_free(address, [port], what="the private Redis")
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind", address,
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        # GCS state must survive a Redis restart in a drill, so keep an append-only file
        "--appendonly", "yes",
        "--protected-mode", "no",
        "--daemonize", "no",
    ]  # fmt: skip
    proc = _start_server(
        "redis-server", argv, data_dir / "redis.log", lambda: redis_ping(address, port), 15
    )
    return Redis(address=f"{address}:{port}", proc=proc)


def redis_ping(address: str, port: int, timeout_s: float = 0.5) -> bool:
    """PING over RESP on a raw socket: no client library for one command."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_alive(redis: Redis) -> bool:
    host, _, port = redis.address.rpartition(":")
    return redis_ping(host, int(port))


def stop_redis(redis: Redis) -> None:
    procs.kill(redis.proc, grace_s=5)

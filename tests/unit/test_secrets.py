"""Secrets at rest and in flight (issue 11): files 0600 in a 0700 directory, and only
their paths where others can look: the topology file, a process's command line and
inherited environment, a serving job's environment, an AppMaster's arguments, ``status``."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ha_serving._errors import InvalidSpec
from ha_serving._settings import KeeperSettings, Settings
from ha_serving.keeper import RayJobSubmitter, keeper_status
from ha_serving.store import Store, StoreRef
from ha_serving.util.secrets import (
    masked_url,
    new_secret,
    read_secret,
    secret_dir,
    split_password,
    with_password,
    write_secret,
)
from infra import procs, stack
from infra.services import init_sql, redis_alive, redis_ping, start_redis
from infra.topology import Database, Proc, Redis, Topology
from tests.unit.fixtures.control import free_address, running_keeper, sqlite_store

PASSWORD = "pw-" + "x" * 20
TOKEN = "tok-" + "y" * 20


# --- files ------------------------------------------------------------------------------


def test_a_secret_file_is_0600_and_its_directory_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # the loosest umask: a plain open() would make the file 0666
    try:
        loose = tmp_path / "secrets"
        loose.mkdir(mode=0o777)
        d = secret_dir(loose)
        path = write_secret(d / "a.token", TOKEN)
        write_secret(path, TOKEN + "2")  # a second write replaces it, mode kept
    finally:
        os.umask(old)
    assert d.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_secret(path) == TOKEN + "2"
    assert [p.name for p in d.iterdir()] == ["a.token"]  # no temp file left behind


def test_an_unreadable_or_empty_secret_file_is_one_line_naming_the_path_not_the_value(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidSpec, match=r"cannot read .*missing\.token"):
        read_secret(tmp_path / "missing.token", what="Keeper token file")
    empty = write_secret(tmp_path / "empty.token", "  \n")
    with pytest.raises(InvalidSpec, match=r"empty\.token is empty"):
        read_secret(empty)


def test_generated_secrets_are_long_random_and_need_no_quoting() -> None:
    """256 bits, URL-safe base64: safe inside SQL quotes, a URL, a config file, a header."""
    values = {new_secret() for _ in range(50)}
    assert len(values) == 50
    for v in values:
        assert len(v) >= 43
        assert set(v) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://u:p%40ss%2Fw@db.example:3306/ha_serving?charset=utf8mb4",
        "mysql+pymysql://u:plain@127.0.0.1/x",
    ],
)
def test_a_url_is_split_into_one_without_password_and_the_password_and_back(url: str) -> None:
    bare, password = split_password(url)
    assert password is not None
    assert password not in bare
    assert ":" not in bare.split("//", 1)[1].split("@", 1)[0]  # no user:password left
    assert with_password(bare, password) == url
    assert password not in masked_url(url)


def test_a_url_without_password_is_left_as_it_is() -> None:
    assert split_password("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", None)
    assert split_password("mysql+pymysql://u@h/x") == ("mysql+pymysql://u@h/x", None)


# --- the store's password travels as a path -------------------------------------------


def test_a_store_ref_carries_the_path_and_reads_the_password_only_to_connect(
    tmp_path: Path,
) -> None:
    """What a Keeper's environment, a serving job and an AppMaster's arguments get: the
    pickled ref (what Ray ships as an actor argument) and its text hold no password."""
    secret = write_secret(tmp_path / "db.password", PASSWORD)
    ref = StoreRef.of("mysql+pymysql://hasrv@127.0.100.1:9306/ha_serving", secret)
    assert ref.connect_url() == f"mysql+pymysql://hasrv:{PASSWORD}@127.0.100.1:9306/ha_serving"
    assert PASSWORD.encode() not in pickle.dumps(ref)
    assert PASSWORD not in str(ref) + repr(ref)
    sqlite = StoreRef.of(f"sqlite:///{tmp_path / 'state.db'}", None)
    with Store.connect(sqlite) as store:  # a ref is what Store.connect takes
        assert store.ping()


def test_a_serving_jobs_environment_holds_paths_never_a_secret(tmp_path: Path) -> None:
    """Ray's Job API shows a job's entrypoint and env_vars to anyone reaching the
    dashboard: the submitter puts in the URL without password and the files' paths; a
    URL given with its password inline is stripped (and the Keeper warns)."""
    db_file = write_secret(tmp_path / "db.password", PASSWORD)
    token_file = write_secret(tmp_path / "operator.token", TOKEN)
    for url in (
        "mysql+pymysql://hasrv@127.0.100.1:9306/ha_serving",
        f"mysql+pymysql://hasrv:{PASSWORD}@127.0.100.1:9306/ha_serving",
    ):
        submitter = RayJobSubmitter(
            ha_serving_bin="/venv/bin/ha-serving",
            store=StoreRef.of(url, db_file),
            keepers=["127.0.200.1:9400"],
            token_file=token_file,
        )
        env = submitter.job_env(submitter.credential_file("a", "echo"))
        shown = " ".join([*env.values(), submitter.entrypoint("a", "echo")])
        assert PASSWORD not in shown
        assert TOKEN not in shown
        assert env["HA_SERVING_DB_PASSWORD_FILE"] == str(db_file)
        assert env["HA_SERVING_KEEPER_TOKEN_FILE"] == str(token_file)
        # and what the job's entrypoint makes of it: the full URL, read from the files
        settings = Settings.from_env(env)
        ref = StoreRef.of(str(settings.store.url), settings.store.password_file)
        assert PASSWORD in ref.connect_url()


# --- the topology file and the processes `up` starts -----------------------------------


def _topology(tmp_path: Path) -> Topology:
    secrets = secret_dir(tmp_path / "secrets")
    db_file = write_secret(secrets / "db.password", PASSWORD)
    redis_file = write_secret(secrets / "redis.password", PASSWORD + "r")
    log = tmp_path / "x.log"
    head = Proc(
        pid=1, pgid=1, argv=["ray", "start"], log=log, secret_args={"--redis-password": redis_file}
    )
    return Topology(
        run_dir=tmp_path,
        run_id="r1",
        created_at=0.0,
        clusters=[],
        db=Database(
            kind="mariadb",
            public_url="mysql+pymysql://hasrv@127.0.104.1:1/ha_serving",
            password_file=db_file,
            proc=head,
        ),
        redis=Redis(address="127.0.104.2:1", proc=head, password_file=redis_file),
        secrets_dir=secrets,
        keeper_token_file=write_secret(secrets / "operator.token", TOKEN),
    )


def test_the_topology_file_records_where_secrets_are_never_what_they_are(
    tmp_path: Path,
) -> None:
    topo = _topology(tmp_path)
    topo.save()
    text = (tmp_path / "topology.json").read_text()
    for secret in (PASSWORD, PASSWORD + "r", TOKEN):
        assert secret not in text
    assert str(topo.db.password_file) in text
    loaded = Topology.model_validate_json(text)
    assert loaded.keeper_token() == TOKEN
    assert loaded.db.ref().connect_url().count(PASSWORD) == 1
    assert loaded.redis is not None
    assert loaded.redis.password() == PASSWORD + "r"


def test_a_topology_file_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    """``db.url`` was the field's name: `down` must still read a stack started before."""
    topo = _topology(tmp_path)
    data = topo.model_dump(mode="json")
    data["db"]["url"] = data["db"].pop("public_url")
    assert Topology.model_validate(data).db.public_url == topo.db.public_url


def test_a_keepers_environment_names_the_files_not_the_secrets(tmp_path: Path) -> None:
    topo = _topology(tmp_path)
    assert topo.keeper_token_file is not None
    env = stack.keeper_env(topo, topo.keeper_token_file, lease_ttl_s=3.0)
    assert TOKEN not in str(env)
    assert PASSWORD not in str(env)
    settings = Settings.from_env(env)  # what `keeper run` reads from it
    assert settings.keeper.token_file == topo.keeper_token_file
    assert settings.store.password_file == topo.db.password_file


def test_a_secret_option_reaches_the_program_but_not_its_record_and_secrets_are_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``secret_args`` are appended when spawning (Ray's --redis-password, its exception
    to "never in argv"), recorded as paths, and given again on a restart; a token or a
    store URL in the caller's environment is not inherited by what it starts."""
    monkeypatch.setenv("HA_SERVING_KEEPER_TOKEN", TOKEN)
    monkeypatch.setenv("HA_SERVING_DB_URL", f"mysql+pymysql://u:{PASSWORD}@h/x")
    secret = write_secret(tmp_path / "redis.password", PASSWORD)
    script = (
        "import os, sys; print(sys.argv[1:]); "
        "print(sorted(k for k in os.environ if k.startswith('HA_SERVING_')))"
    )
    log = tmp_path / "child.log"
    proc = procs.spawn(
        [sys.executable, "-c", script],
        log=log,
        env={"HA_SERVING_KEEPER_TTL": "3"},
        secret_args={"--redis-password": secret},
    )
    procs.wait_for("child", lambda: not procs.alive(proc), timeout_s=30, interval_s=0.05)
    again = procs.respawn(proc)
    procs.wait_for("child again", lambda: not procs.alive(again), timeout_s=30, interval_s=0.05)
    printed = log.read_text().splitlines()
    assert printed == [f"['--redis-password={PASSWORD}']", "['HA_SERVING_KEEPER_TTL']"] * 2
    assert PASSWORD not in proc.model_dump_json()
    assert proc.secret_args == {"--redis-password": secret}


def test_the_private_dbs_init_sql_leaves_root_no_way_in_over_tcp() -> None:
    """The application user gets its database only; root's passwordless TCP accounts
    from mariadb-install-db (and this stack's old root@'%') are dropped; a host name that
    is not a plain name is not put into SQL."""
    sql = init_sql(PASSWORD, PASSWORD + "root", "vm")
    assert "GRANT ALL PRIVILEGES ON ha_serving.* TO 'hasrv'@'%';" in sql
    assert "ON *.*" not in sql
    for host in ("%", "127.0.0.1", "::1", "vm"):
        assert f"DROP USER IF EXISTS 'root'@'{host}';" in sql
    assert f"ALTER USER IF EXISTS 'root'@'localhost' IDENTIFIED BY '{PASSWORD}root';" in sql
    assert all(line.endswith(";") for line in sql.splitlines())  # one statement a line
    assert "evil" not in init_sql(PASSWORD, PASSWORD, "x'; DROP DATABASE evil; --")


def test_status_masks_a_store_password(tmp_path: Path) -> None:
    """`status` (and `status --json`) show the store's URL with any password masked,
    even from a topology written before passwords moved to files."""
    topo = _topology(tmp_path)
    topo.db = Database(kind="external", public_url=f"mysql+pymysql://u:{PASSWORD}@127.0.104.1:1/x")
    topo.redis = None
    topo.save()
    report = stack.status(tmp_path)
    assert report is not None
    assert PASSWORD not in str(report)
    assert report["db"] == {
        "kind": "external",
        "url": "mysql+pymysql://u:***@127.0.104.1:1/x",
        "alive": False,
    }


# --- Redis with a password --------------------------------------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on this machine")
    with socket.socket() as s:  # a free port on an address of this test's own
        s.bind(("127.0.104.3", 0))
        port = s.getsockname()[1]
    r = start_redis(
        binary,
        tmp_path / "redis",
        address="127.0.104.3",
        port=port,
        secrets=secret_dir(tmp_path / "secrets"),
    )
    try:
        yield r
    finally:
        procs.kill(r.proc)


def test_redis_requires_its_password_which_is_in_no_argv(redis: Redis) -> None:
    assert redis.password_file is not None
    assert redis.password_file.stat().st_mode & 0o777 == 0o600
    password = read_secret(redis.password_file)
    assert redis_alive(redis)  # with the password from its file
    host, _, port = redis.address.rpartition(":")
    assert not redis_ping(host, int(port))  # without: NOAUTH
    assert not redis_ping(host, int(port), "wrong")
    for p in procs.tree(redis.proc):
        assert password not in " ".join(p.cmdline())
    assert password not in redis.model_dump_json()


# --- the Keeper takes its secret from a file --------------------------------------------


def test_a_keeper_reads_its_secret_from_the_file_it_is_given(tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "operator.token", TOKEN)
    settings = KeeperSettings(token_file=token_file, watch_period_s=0.05)
    address = free_address("127.0.104.4")
    with sqlite_store(tmp_path) as store, running_keeper(store, address, settings):
        assert keeper_status(address, token=TOKEN, timeout_s=5)["alive"]
        refused = keeper_status(address, token="wrong", timeout_s=5)  # noqa: S106 - a wrong one
        assert refused["error"] == grpc.StatusCode.UNAUTHENTICATED.name

"""``ha-serving cluster register|list|remove`` on a SQLite store: input is validated
with one-line errors, entries round-trip as the Keepers read them, and a cluster that
still serves something is only removed with --force, the refusal saying what is there."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ha_serving._errors import HAServingError, UserError
from ha_serving.cli import app, main
from ha_serving.cli._clusters import Registration, parse_registration, usage_of
from ha_serving.store import ClusterRecord, OperationRecord, Store
from tests.store_contract import Backend, finish_operation

GOOD = ["--gcs", "127.0.0.1:1", "--dashboard", "http://127.0.0.1:2", "--tier", "t1"]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Keepers' store as HA_SERVING_DB_URL names it; no local stack in the run dir."""
    url = f"sqlite:///{tmp_path / 'keepers.db'}"
    monkeypatch.setenv("HA_SERVING_DB_URL", url)
    monkeypatch.setenv("HA_SERVING_RUN_DIR", str(tmp_path / "run"))
    return url


@pytest.fixture
def listening() -> Iterator[tuple[str, str]]:
    """A GCS and a dashboard address that accept TCP connections."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
    gcs, dash = (s.getsockname()[1] for s in socks)
    yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
    for s in socks:
        s.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI under typer's CliRunner: exit code, stdout, and the error line.

    `main()` turns a HAServingError into one ``error: …`` line on stderr and exit 2 (a
    user's mistake) or 1; CliRunner runs the bare app, so that mapping is applied here
    (and checked against the real `main()` in ``test_main_prints_one_error_line``)."""
    result = CliRunner().invoke(app, list(args))
    exc = result.exception
    if exc is None or isinstance(exc, SystemExit):
        return result.exit_code, result.stdout, ""
    if not isinstance(exc, HAServingError):
        raise exc
    return (2 if isinstance(exc, UserError) else 1), result.stdout, f"error: {exc}"


def _register(name: str = "c", *extra: str) -> tuple[int, str, str]:
    return cli("cluster", "register", name, *GOOD, "--zone", "zone-c", "--no-check", *extra)


# --- validation -----------------------------------------------------------------------


def test_a_good_registration_is_normalised() -> None:
    reg = parse_registration(
        name="gpu-east-1",
        gcs="ray-head.ns.svc.cluster.local:6379",
        dashboard="https://ray-head.ns.svc.cluster.local:8265/",
        tier="primary",
        zone="us-east-1a",
    )
    assert reg == Registration(
        name="gpu-east-1",
        gcs="ray-head.ns.svc.cluster.local:6379",
        dashboard="https://ray-head.ns.svc.cluster.local:8265",
        tier="primary",
        zone="us-east-1a",
    )
    assert reg.record() == ClusterRecord(
        "gpu-east-1",
        "ray-head.ns.svc.cluster.local:6379",
        "https://ray-head.ns.svc.cluster.local:8265",
        "us-east-1a",
        "primary",
    )


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("name", "Big_C", "is not a cluster name"),
        ("name", "1abc", "is not a cluster name"),
        ("name", "a" * 32, "is not a cluster name"),
        ("gcs", "10.0.0.5", "is not host:port"),
        ("gcs", "10.0.0.5:0", "the port is not a number in 1-65535"),
        ("gcs", "10.0.0.5:65536", "the port is not a number in 1-65535"),
        ("gcs", "10.0.0.5:http", "the port is not a number in 1-65535"),
        ("gcs", "bad host:6379", "neither an IP address nor a host name"),
        ("gcs", "::1:6379", "IPv6 addresses are not supported"),
        ("dashboard", "10.0.0.5:8265", "is not an http(s) URL"),
        ("dashboard", "ftp://10.0.0.5:8265", "is not an http(s) URL"),
        ("dashboard", "http://admin:pw@10.0.0.5:8265", "must not carry credentials"),
        ("dashboard", "http://10.0.0.5:8265/api/jobs", "give the dashboard's root"),
        ("dashboard", "http://10.0.0.5:99999", "the port is not a number in 1-65535"),
        ("tier", "Gold", "is not a tier"),
        ("zone", "-zone", "is not a zone"),
        ("zone", "z" * 64, "is not a zone"),
    ],
)
def test_bad_input_is_one_line_naming_the_option(
    db: str, field: str, value: str, says: str
) -> None:
    args = {
        "name": "c",
        "gcs": "127.0.0.1:1",
        "dashboard": "http://127.0.0.1:2",
        "tier": "t1",
        "zone": "zone-c",
    } | {field: value}
    name = args.pop("name")
    options = [x for k, v in args.items() for x in (f"--{k}", v)]
    code, out, err = cli("cluster", "register", name, *options, "--no-check")
    assert code == 2, (out, err)
    line = err.strip()
    assert "\n" not in line
    assert line.startswith("error: invalid cluster registration: ")
    assert f"--{field}: " in line
    assert says in line
    with Store.connect(db) as store:
        assert store.list_clusters() == []  # nothing written


def test_every_bad_field_is_reported_at_once(db: str) -> None:
    code, _, err = cli(
        "cluster", "register", "C", "--gcs", "x", "--dashboard", "y", "--tier", "T",
        "--zone", "z", "--no-check",
    )  # fmt: skip
    assert code == 2
    for option in ("--name", "--gcs", "--dashboard", "--tier"):
        assert f"{option}: " in err
    assert "--zone" not in err


def test_main_prints_one_error_line(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a user sees: exit status 2 and a single `error:` line on stderr."""
    monkeypatch.setattr(
        sys, "argv", ["ha-serving", "cluster", "register", "Bad!", *GOOD, "--zone", "z"]
    )
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: invalid cluster registration: --name: 'Bad!' is")


# --- register and list ------------------------------------------------------------------


def test_register_then_list_as_the_keepers_read_it(db: str) -> None:
    code, out, err = _register("c")
    assert code == 0, err
    assert "registered cluster c (tier t1, zone zone-c)" in out
    with Store.connect(db) as store:
        assert store.list_clusters() == [
            ClusterRecord("c", "127.0.0.1:1", "http://127.0.0.1:2", "zone-c", "t1")
        ]
    code, out, _ = cli("cluster", "list", "--json")
    assert code == 0
    assert json.loads(out) == [
        {
            "name": "c",
            "gcs_address": "127.0.0.1:1",
            "dashboard_url": "http://127.0.0.1:2",
            "tier": "t1",
            "zone": "zone-c",
        }
    ]
    code, out, _ = cli("cluster", "list")
    assert code == 0
    assert "Registered clusters" in out
    assert "zone-c" in out


def test_registering_again_updates_the_entry(db: str) -> None:
    assert _register("c")[0] == 0
    code, out, _ = _register("c")
    assert code == 0
    assert "nothing changed" in out
    code, out, _ = cli(
        "cluster", "register", "c", "--gcs", "127.0.0.9:6379", "--dashboard",
        "http://127.0.0.9:8265", "--tier", "t2", "--zone", "zone-c", "--no-check",
    )  # fmt: skip
    assert code == 0
    assert "updated cluster c (was GCS 127.0.0.1:1, tier t1)" in out
    with Store.connect(db) as store:
        [c] = store.list_clusters()
    assert (c.gcs_address, c.tier) == ("127.0.0.9:6379", "t2")


def test_list_with_nothing_registered(db: str) -> None:
    assert cli("cluster", "list", "--json")[:2] == (0, "[]\n")
    assert "no cluster is registered" in cli("cluster", "list")[1]


def test_register_checks_that_the_cluster_answers(db: str, listening: tuple[str, str]) -> None:
    gcs, dashboard = listening
    common = ["--tier", "t1", "--zone", "z"]
    code, _, err = cli("cluster", "register", "c", "--gcs", gcs, "--dashboard", dashboard, *common)
    assert code == 0, err
    dead = f"127.0.0.1:{_closed_port()}"
    code, _, err = cli("cluster", "register", "d", "--gcs", dead, "--dashboard", dashboard, *common)
    assert code == 2
    assert f"error: cluster d: its GCS {dead} does not answer" in err
    assert "--no-check" in err
    dead_url = f"http://127.0.0.1:{_closed_port()}"
    code, _, err = cli("cluster", "register", "d", "--gcs", gcs, "--dashboard", dead_url, *common)
    assert code == 2
    assert f"its dashboard {dead_url} does not answer" in err
    with Store.connect(db) as store:
        assert [c.name for c in store.list_clusters()] == ["c"]


def test_without_a_store_the_error_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HA_SERVING_DB_URL", raising=False)
    monkeypatch.setenv("HA_SERVING_RUN_DIR", str(tmp_path / "nothing-up"))
    code, _, err = cli("cluster", "list")
    assert code == 1
    assert err.startswith("error: no state store: set HA_SERVING_DB_URL")


# --- remove -----------------------------------------------------------------------------


def _place(store: Store, service: str, clusters: list[str], op_id: str, status: str) -> None:
    op = OperationRecord(
        op_id=op_id,
        service=service,
        kind="deploy",
        plan={"clusters": [{"name": c, "instances": 1, "weight": 100} for c in clusters]},
    )
    store.create_operation(op)
    if status != "pending":
        finish_operation(store, op_id, status)


def test_remove_an_unused_cluster(db: str) -> None:
    assert _register("c")[0] == 0
    assert _register("d")[0] == 0
    code, out, _ = cli("cluster", "remove", "c")
    assert code == 0
    assert "removed cluster c" in out
    with Store.connect(db) as store:
        assert [c.name for c in store.list_clusters()] == ["d"]


def test_remove_an_unknown_cluster_names_the_registered_ones(db: str) -> None:
    assert _register("c")[0] == 0
    code, _, err = cli("cluster", "remove", "x")
    assert code == 2
    assert err.strip() == "error: no cluster 'x' is registered (registered: c)"


def test_a_cluster_that_serves_is_removed_only_with_force(db: str) -> None:
    assert _register("c")[0] == 0
    assert _register("d")[0] == 0
    with Store.connect(db) as store:
        _place(store, "echo", ["c", "d"], "op-1", "succeeded")
        _place(store, "other", ["d"], "op-2", "succeeded")
        store.upsert_endpoint("echo", "c", "127.0.3.2:5000", {}, ttl_s=60)
    code, _, err = cli("cluster", "remove", "c")
    assert code == 2
    line = err.strip()
    assert "\n" not in line
    assert line.startswith("error: cluster c still serves: services echo; ")
    assert "endpoints echo@127.0.3.2:5000" in line
    assert "--force" in line
    with Store.connect(db) as store:
        assert [c.name for c in store.list_clusters()] == ["c", "d"]  # still there
    code, out, _ = cli("cluster", "remove", "c", "--force")
    assert code == 0
    assert "removed cluster c" in out
    assert "left on it: services echo" in out
    with Store.connect(db) as store:
        assert [c.name for c in store.list_clusters()] == ["d"]


def test_usage_follows_the_newest_operation_and_direct_deploys(sqlite_backend: Backend) -> None:
    """A service whose newest (not superseded) operation moved it off the cluster is no
    longer placed there (its proxies still up there are still endpoints); one deployed
    directly on it (--cluster) is; lapsed endpoints are not counted."""
    store = sqlite_backend.connect()
    _place(store, "moved", ["c"], "op-1", "succeeded")
    _place(store, "moved", ["d"], "op-2", "succeeded")
    _place(store, "dropped", ["c"], "op-3", "succeeded")
    _place(store, "dropped", ["d"], "op-4", "superseded")  # never took effect
    store.create_service("hand", {"spec": {}, "direct": "c"})
    store.upsert_endpoint("hand", "c", "127.0.3.9:1", {}, ttl_s=0.0)  # lapsed
    store.upsert_endpoint("moved", "c", "127.0.3.8:1", {}, ttl_s=60)  # still up there
    store.upsert_endpoint("moved", "d", "127.0.4.8:1", {}, ttl_s=60)
    usage = usage_of(store, "c")
    assert usage.services == ["dropped", "hand"]
    assert usage.endpoints == ["moved@127.0.3.8:1"]
    assert usage_of(store, "e").services == []
    assert not usage_of(store, "e")

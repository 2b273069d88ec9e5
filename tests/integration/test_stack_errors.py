"""Bad input to `ha-serving up`: one clear line, a non-zero exit, nothing left running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ha_serving._settings import StackSettings
from tests.conftest import SLOT
from tests.integration.conftest import TEST_PORT_BASE

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("ha-serving"))
ISOLATED = {
    # cluster a at base+2500…: neither make up's, nor this run's stack's, nor another slot's
    "HA_SERVING_PORT_BASE": str(SLOT.base + 500),
    "HA_SERVING_DB_PORT": str(SLOT.base + 21),
    "HA_SERVING_REDIS_PORT": str(SLOT.base + 22),
}


def _up(run_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # ports of their own, so these tests pass while a developer's `make up` stack runs
    full_env = {**os.environ, **ISOLATED, **env}
    if "HA_SERVING_DB_URL" not in env:
        full_env.pop("HA_SERVING_DB_URL", None)  # a developer's own setting must not leak in
    return subprocess.run(
        [CLI, "up", "--run-dir", str(run_dir), *args],
        capture_output=True, text=True, timeout=180, check=False, env=full_env,
    )  # fmt: skip


def _started_from(run_dir: Path) -> list[int]:
    """Processes whose command line names this run dir (the DB would; Ray's temp dirs too)."""
    needle = str(run_dir.resolve())
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(needle in part for part in p.info["cmdline"] or []):
            found.append(p.pid)
    return found


def _assert_clean_failure(
    result: subprocess.CompletedProcess[str], run_dir: Path, *words: str
) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error printed"
    error = lines[-1]
    assert error.startswith("error:"), result.stderr
    for w in words:
        assert w in error, error
    assert not (run_dir / "topology.json").exists()
    assert _started_from(run_dir) == []


@pytest.mark.parametrize("value", ["abc", "0", "10", "-1"])
def test_bad_clusters_value_is_refused_with_the_field_named(tmp_path: Path, value: str) -> None:
    """CLUSTERS must be 1..9; anything else is a one-line error naming stack.clusters."""
    result = _up(tmp_path, "--clusters", value)
    assert result.returncode == 2
    _assert_clean_failure(result, tmp_path, "stack.clusters")


def test_unwritable_run_dir_is_refused(tmp_path: Path) -> None:
    """A run dir that cannot be created gets a clear error (root ignores mode bits, so
    the run dir's parent is a regular file)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _up(blocker / "run")
    assert result.returncode == 1
    assert "not writable" in result.stderr


def test_db_url_that_does_not_answer_is_refused_quickly(tmp_path: Path) -> None:
    """HA_SERVING_DB_URL pointing at a closed port fails at once, password not echoed."""
    url = "mysql+pymysql://root:s3cret@127.0.101.9:1/x"
    result = _up(tmp_path, HA_SERVING_DB_URL=url)
    _assert_clean_failure(result, tmp_path, "127.0.101.9")
    assert "s3cret" not in result.stderr + result.stdout


def test_missing_db_binary_is_refused(tmp_path: Path) -> None:
    """A configured mariadbd that does not exist is named in the error."""
    result = _up(tmp_path, HA_SERVING_MARIADBD="/nonexistent/mariadbd")
    _assert_clean_failure(result, tmp_path, "/nonexistent/mariadbd")


@pytest.fixture
def occupied_redis_port() -> Iterator[tuple[str, int]]:
    """Hold the Redis address:port these tests' `up` will want, as another program would."""
    address, port = StackSettings().redis_address, int(ISOLATED["HA_SERVING_REDIS_PORT"])
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen()
        yield address, port


def test_occupied_port_after_db_start_stops_the_db_again(
    tmp_path: Path, occupied_redis_port: tuple[str, int]
) -> None:
    """Redis's port is taken: `up` fails after it started the DB, and stops the DB again."""
    address, port = occupied_redis_port
    result = _up(
        tmp_path,
        "--clusters", "1",
        HA_SERVING_DB_URL="",  # use the private mariadbd, so there is something to undo
    )  # fmt: skip
    _assert_clean_failure(result, tmp_path, f"{address}:{port}", "in use")


def test_occupied_node_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """A Ray node's port held by another program: refused before any process starts."""
    gcs_port = int(ISOLATED["HA_SERVING_PORT_BASE"]) + 2000  # cluster a's GCS port
    assert gcs_port != TEST_PORT_BASE + 2000
    with socket.socket() as sock:
        sock.bind(("127.0.1.1", gcs_port))
        sock.listen()
        result = _up(tmp_path, "--clusters", "1")
    _assert_clean_failure(result, tmp_path, f"127.0.1.1:{gcs_port}", "in use")

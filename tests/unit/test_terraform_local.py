"""environments/local's wiring, applied and destroyed for real against a stand-in for
the ha-serving binary (so no stack starts): `up` gets the options and, in its
environment only, the DB URL; the outputs read the status and the registry back, the
DB password masked; nothing secret lands in the state; destroy runs `down` on the same
run dir and removes the files. (tests/stack.tftest.hcl there does the same with the
real binary: `make tf-test TF_APPLY=1`.)
"""

from __future__ import annotations

import json
import stat
from typing import Any

import pytest

from tests.terraform_tools import TERRAFORM_DIR, init, needs_terraform, terraform

pytestmark = needs_terraform

ROOT = TERRAFORM_DIR / "environments" / "local"
SECRET = "s3cr3t-pw"  # noqa: S105 - a planted value the test hunts for
DB_URL = f"mysql+pymysql://hasrv:{SECRET}@db.example:3306/ha_serving"

FAKE = r"""#!/bin/sh
# A stand-in for ha-serving: records each call and its environment, answers as the CLI
set -eu
run_dir=""; prev=""
for a in "$@"; do [ "$prev" = "--run-dir" ] && run_dir="$a"; prev="$a"; done
log="$FAKE_LOG"  # from the test, through terraform's own environment
printf 'argv %s\n' "$*" >> "$log"
printf 'env HA_SERVING_DB_URL=%s HA_SERVING_PORT_BASE=%s HA_SERVING_KEEPER_PORT=%s\n' \
    "${HA_SERVING_DB_URL-unset}" "${HA_SERVING_PORT_BASE-unset}" \
    "${HA_SERVING_KEEPER_PORT-unset}" >> "$log"
case "$1 $2" in
  "up --clusters")
    mkdir -p "$run_dir"; printf '%s' "$HA_SERVING_DB_URL" > "$run_dir/db-url";;
  "status --json")
    cat <<JSON
{"run_dir": "$run_dir",
 "keepers": [{"id": "k1", "address": "127.0.200.1:$HA_SERVING_KEEPER_PORT", "alive": true,
              "leader": true}],
 "clusters": [{"name": "a", "gcs_address": "127.0.1.1:14000", "gcs_alive": true,
               "nodes": []}],
 "db": {"kind": "external", "url": "$(cat "$run_dir/db-url")", "alive": true},
 "redis": {"address": null, "alive": false, "gcs_fault_tolerance": false}}
JSON
    ;;
  "cluster list")
    echo '[{"name": "a", "gcs_address": "127.0.1.1:14000",' \
         '"dashboard_url": "http://127.0.1.1:14008", "tier": "", "zone": "zone-a"}]';;
  "down --run-dir")
    rm -f "$run_dir/db-url";;
  *) echo "unexpected call: $*" >&2; exit 64;;
esac
"""


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Apply with the stand-in, read the outputs and state, destroy; what was seen."""
    work = tmp_path_factory.mktemp("local-env")
    fake = work / "ha-serving"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    run_dir = work / "run"
    env = init(ROOT, work / "data")
    env.update(
        TF_VAR_ha_serving_bin=str(fake),
        TF_VAR_run_dir=str(run_dir),
        TF_VAR_db_url=DB_URL,
        TF_VAR_clusters="3",
        TF_VAR_workers_per_cluster="2",
        TF_VAR_port_base="12000",
        TF_VAR_keeper_port="9410",
        FAKE_LOG=str(work / "calls.log"),
    )
    state = work / "terraform.tfstate"
    terraform(
        ROOT, "apply", "-auto-approve", "-input=false", "-lock=false", f"-state={state}", env=env
    )
    outputs = json.loads(terraform(ROOT, "output", "-json", f"-state={state}", env=env).stdout)
    state_text = state.read_text()
    files = sorted(p.name for p in (run_dir / "terraform").iterdir())
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (run_dir / "terraform").iterdir()}
    terraform(
        ROOT, "destroy", "-auto-approve", "-input=false", "-lock=false", f"-state={state}", env=env
    )
    return {
        "outputs": {k: v["value"] for k, v in outputs.items()},
        "state": state_text,
        "calls": (work / "calls.log").read_text().splitlines(),
        "files_while_up": files,
        "modes": modes,
        "files_after": sorted(p.name for p in (run_dir / "terraform").iterdir()),
        "run_dir": str(run_dir),
    }


def test_up_status_list_down_in_order_on_one_run_dir(applied: dict[str, Any]) -> None:
    argv = [c.removeprefix("argv ") for c in applied["calls"] if c.startswith("argv ")]
    run_dir = applied["run_dir"]
    assert argv == [
        f"up --clusters 3 --workers 2 --run-dir {run_dir}",
        f"status --json --run-dir {run_dir}",
        f"cluster list --json --run-dir {run_dir}",
        f"down --run-dir {run_dir}",
    ]


def test_the_db_url_travels_in_the_environment_only(applied: dict[str, Any]) -> None:
    calls = applied["calls"]
    up_env = calls[1]
    assert up_env.startswith(f"env HA_SERVING_DB_URL={DB_URL} ")
    assert "HA_SERVING_PORT_BASE=12000 HA_SERVING_KEEPER_PORT=9410" in up_env
    # nobody else gets it; the status and registry are read from the stack's own DB
    assert all(SECRET not in c for c in calls if c is not up_env)
    assert all(SECRET not in c for c in calls if c.startswith("argv "))


def test_nothing_secret_in_the_state_or_the_outputs(applied: dict[str, Any]) -> None:
    assert SECRET not in applied["state"]
    assert SECRET not in json.dumps(applied["outputs"])


def test_outputs_read_back_status_and_registry(applied: dict[str, Any]) -> None:
    out = applied["outputs"]
    assert out["keeper_addresses"] == ["127.0.200.1:9410"]
    assert out["clusters"] == {
        "a": {
            "gcs_address": "127.0.1.1:14000",
            "dashboard_url": "http://127.0.1.1:14008",
            "tier": "",
            "zone": "zone-a",
        }
    }
    assert out["status"]["db"]["url"] == "mysql+pymysql://hasrv:***@db.example:3306/ha_serving"
    assert json.loads(out["status_json"]) == out["status"]
    assert out["run_dir"] == applied["run_dir"]
    assert out["keeper_token_file"] == f"{applied['run_dir']}/secrets/operator.token"


def test_status_files_are_private_and_removed_on_destroy(applied: dict[str, Any]) -> None:
    assert applied["files_while_up"] == ["clusters.json", "status.json"]
    assert set(applied["modes"].values()) == {0o600}
    assert applied["files_after"] == []

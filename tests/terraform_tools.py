"""Driving the terraform binary and reading HCL from the tests, offline.

Nothing is written into the working tree: each call gets a TF_DATA_DIR (providers,
modules) under the test's temp dir, plans go to files there, no state is kept, and
locking is off (a plan of a provider-free root holds nothing worth a lock).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TERRAFORM_DIR = REPO / "terraform"
TERRAFORM = shutil.which("terraform")

needs_terraform = pytest.mark.skipif(
    TERRAFORM is None,
    reason="the terraform binary is not installed (make tf-test needs Terraform 1.9 or later)",
)


def tf_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_VAR_")}
    env.update(
        TF_DATA_DIR=str(data_dir),
        TF_CLI_CONFIG_FILE=os.devnull,  # no user config, no plugin mirrors
        CHECKPOINT_DISABLE="1",  # no version check over the network
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
    )
    env.update(extra)
    return env


def terraform(
    root: Path, *args: str, env: dict[str, str], check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    assert TERRAFORM is not None
    done = subprocess.run(
        [TERRAFORM, f"-chdir={root}", *args, "-no-color"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"terraform {' '.join(args)} in {root} failed ({done.returncode}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return done


def init(root: Path, data_dir: Path) -> dict[str, str]:
    """``terraform init -backend=false`` of ``root`` into ``data_dir``; its environment."""
    env = tf_env(data_dir)
    terraform(root, "init", "-backend=false", "-input=false", env=env)
    return env


def planned_outputs(
    root: Path, env: dict[str, str], work: Path, variables: dict[str, Any]
) -> dict[str, Any]:
    """The output values of a provider-free root given ``variables``: planned, nothing
    applied (every value of such a root is known at plan time)."""
    work.mkdir(parents=True, exist_ok=True)
    var_file = work / "vars.tfvars.json"
    var_file.write_text(json.dumps(variables))
    plan = work / "tfplan"
    terraform(
        root, "plan", "-lock=false", "-input=false", f"-var-file={var_file}", f"-out={plan}",
        env=env,
    )  # fmt: skip
    shown = json.loads(terraform(root, "show", "-json", str(plan), env=env).stdout)
    outputs = shown["planned_values"]["outputs"]
    return {name: out["value"] for name, out in outputs.items()}


def unquote(value: Any) -> Any:
    """A python-hcl2 string literal without its quotes; anything else unchanged."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def is_literal_string(value: Any) -> bool:
    """Whether python-hcl2 parsed ``value`` from a quoted literal with no interpolation."""
    return (
        isinstance(value, str)
        and len(value) >= 2
        and value[0] == value[-1] == '"'
        and "${" not in value
    )

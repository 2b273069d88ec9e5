#!/usr/bin/env bash
# The Terraform checks of `make tf-test`, all offline: fmt; init + validate of every
# provider-free root; `terraform test` of each (plan-only runs, except
# environments/local's apply test, which runs only with TF_APPLY=1 and really brings
# the local stack up and down). Nothing is written outside a temp dir: TF_DATA_DIR
# (providers, modules) points there, tests keep their state in memory.
set -euo pipefail

cd "$(dirname "$0")/.."
command -v terraform >/dev/null || { echo "terraform not found (1.9 or later is needed)" >&2; exit 1; }

# the providers-free roots; the provider wrappers (modules/kubernetes/*) cannot be
# initialised offline and are checked by tests/unit/test_terraform_policy.py instead
ROOTS=(
    terraform/modules/ray-cluster
    terraform/modules/keeper
    terraform/modules/state-db
    terraform/environments/local
    terraform/environments/kubernetes-multi
)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export TF_CLI_CONFIG_FILE=/dev/null  # no user config, no plugin mirrors
export CHECKPOINT_DISABLE=1          # no version check over the network
export TF_IN_AUTOMATION=1 TF_INPUT=0

echo "== terraform fmt -check -recursive terraform"
terraform fmt -check -recursive terraform

for root in "${ROOTS[@]}"; do
    echo "== $root"
    export TF_DATA_DIR="$tmp/data/${root//\//_}"
    terraform -chdir="$root" init -backend=false -input=false -no-color >/dev/null
    terraform -chdir="$root" validate -no-color
    if [[ "$root" == terraform/environments/local ]]; then
        # plan-only; tests/stack.tftest.hcl is the heavy apply test
        terraform -chdir="$root" test -no-color -filter=tests/validation.tftest.hcl
    else
        terraform -chdir="$root" test -no-color
    fi
done

if [[ -n "${TF_APPLY:-}" ]]; then
    root=terraform/environments/local
    echo "== $root: apply test (brings the local stack up, checks it, takes it down)"
    export TF_DATA_DIR="$tmp/data/apply"
    export TF_VAR_run_dir="$tmp/run"
    terraform -chdir="$root" init -backend=false -input=false -no-color >/dev/null
    terraform -chdir="$root" test -no-color -verbose -filter=tests/stack.tftest.hcl
fi

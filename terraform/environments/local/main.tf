# This project's local multi-cluster stack (a private MariaDB and Redis, N Ray
# clusters, 3 Keepers) stood up through its own CLI, with built-ins only:
#
#   create   `ha-serving up --clusters N --workers W --run-dir DIR`
#   observe  `ha-serving status --json` and `ha-serving cluster list --json`, written to
#            files under DIR/terraform that the outputs read back
#   destroy  `ha-serving down --run-dir DIR` (stops exactly what `up` started)
#
# Every value reaches the commands through the environment, never spliced into the
# shell text: no quoting problems, and the DB URL (which may hold a password) stays off
# every command line and out of the state.

locals {
  repo_root = coalesce(var.repo_root, abspath("${path.module}/../../.."))
  bin       = coalesce(var.ha_serving_bin, "${local.repo_root}/.venv/bin/ha-serving")
  run_dir   = coalesce(var.run_dir, "${local.repo_root}/.run-terraform")

  # "" leaves a setting at ha-serving's default (Settings.from_env skips empty values)
  # and overrides whatever the calling shell may have exported.
  settings_env = {
    HA_SERVING_PORT_BASE   = var.port_base == null ? "" : tostring(var.port_base)
    HA_SERVING_KEEPER_PORT = var.keeper_port == null ? "" : tostring(var.keeper_port)
    HA_SERVING_DB_PORT     = var.db_port == null ? "" : tostring(var.db_port)
    HA_SERVING_REDIS_PORT  = var.redis_port == null ? "" : tostring(var.redis_port)
  }
}

resource "terraform_data" "stack" {
  # What the destroy-time provisioner needs: it may refer to nothing but self.
  input = {
    bin       = local.bin
    run_dir   = local.run_dir
    repo_root = local.repo_root
  }

  # Changing any of these takes the stack down and brings it up again. (db_url is not
  # here: the state would then hold it. After changing it, apply with
  # -replace=terraform_data.stack.)
  triggers_replace = {
    clusters            = var.clusters
    workers_per_cluster = var.workers_per_cluster
    settings            = local.settings_env
  }

  provisioner "local-exec" {
    working_dir = self.input.repo_root
    command     = "\"$HASRV_BIN\" up --clusters \"$HASRV_CLUSTERS\" --workers \"$HASRV_WORKERS\" --run-dir \"$HASRV_RUN_DIR\""
    environment = merge(local.settings_env, {
      HASRV_BIN      = self.input.bin
      HASRV_RUN_DIR  = self.input.run_dir
      HASRV_CLUSTERS = tostring(var.clusters)
      HASRV_WORKERS  = tostring(var.workers_per_cluster)
      # sensitive: Terraform shows none of `up`'s output (the stack's logs are in
      # <run_dir>/logs)
      HA_SERVING_DB_URL = var.db_url == null ? "" : var.db_url
    })
  }

  provisioner "local-exec" {
    when        = destroy
    working_dir = self.input.repo_root
    command     = "\"$HASRV_BIN\" down --run-dir \"$HASRV_RUN_DIR\""
    environment = {
      HASRV_BIN     = self.input.bin
      HASRV_RUN_DIR = self.input.run_dir
    }
  }
}

# The stack as it is once up: the status JSON and the cluster registry, written by the
# CLI to files that the outputs read back with file() (no `external` or `local`
# provider is needed, nor downloadable). Re-read with -replace=terraform_data.observed.
resource "terraform_data" "observed" {
  triggers_replace = terraform_data.stack.id

  input = {
    bin           = local.bin
    run_dir       = local.run_dir
    repo_root     = local.repo_root
    status_file   = "${local.run_dir}/terraform/status.json"
    clusters_file = "${local.run_dir}/terraform/clusters.json"
  }

  provisioner "local-exec" {
    working_dir = self.input.repo_root
    # umask 077: the status names the DB URL; written whole or not at all
    command     = <<-EOT
      set -eu
      umask 077
      mkdir -p "$(dirname "$STATUS_FILE")"
      "$HASRV_BIN" status --json --run-dir "$HASRV_RUN_DIR" > "$STATUS_FILE.tmp"
      "$HASRV_BIN" cluster list --json --run-dir "$HASRV_RUN_DIR" > "$CLUSTERS_FILE.tmp"
      mv "$STATUS_FILE.tmp" "$STATUS_FILE"
      mv "$CLUSTERS_FILE.tmp" "$CLUSTERS_FILE"
    EOT
    interpreter = ["/bin/sh", "-c"]
    environment = merge(local.settings_env, {
      HASRV_BIN     = self.input.bin
      HASRV_RUN_DIR = self.input.run_dir
      STATUS_FILE   = self.input.status_file
      CLUSTERS_FILE = self.input.clusters_file
      # the registry is read from the stack's own DB (its topology), not from the caller's
      HA_SERVING_DB_URL = ""
    })
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "rm -f \"$STATUS_FILE\" \"$CLUSTERS_FILE\""
    interpreter = ["/bin/sh", "-c"]
    environment = {
      STATUS_FILE   = self.input.status_file
      CLUSTERS_FILE = self.input.clusters_file
    }
  }
}

locals {
  # Unknown while planning a create (the files come with the apply), read at apply time.
  status   = try(jsondecode(file(terraform_data.observed.output.status_file)), null)
  registry = try(jsondecode(file(terraform_data.observed.output.clusters_file)), null)

  # The status names the DB URL; mask a password in it before it becomes an output.
  status_redacted = try(merge(local.status, {
    db = merge(local.status.db, { url = replace(local.status.db.url, "/(://[^:/@]*):[^@/]*@/", "$1:***@") })
  }), null)
}

output "keeper_addresses" {
  description = "host:port of every Keeper: the Keeper list of clients' discovery and of `ha-serving` commands."
  value       = try([for k in local.status.keepers : k.address], null)
}

output "keeper_token_file" {
  description = "File holding the Keepers' control-API token (mode 0600); the token itself is not an output."
  value       = "${local.run_dir}/secrets/operator.token"
}

output "clusters" {
  description = "Each cluster's GCS address, dashboard (Job Submission API) URL, tier and zone, from the Keepers' registry."
  value = try({
    for c in local.registry : c.name => {
      gcs_address   = c.gcs_address
      dashboard_url = c.dashboard_url
      tier          = c.tier
      zone          = c.zone
    }
  }, null)
}

output "status" {
  description = "`ha-serving status --json` right after the apply (DB password masked)."
  value       = local.status_redacted
}

output "status_json" {
  description = "The same status as JSON text."
  value       = local.status_redacted == null ? null : jsonencode(local.status_redacted)
}

output "run_dir" {
  description = "The stack's run directory (`--run-dir` for any other ha-serving command)."
  value       = local.run_dir
}

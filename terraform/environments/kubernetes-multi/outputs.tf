output "keepers" {
  description = "The Keepers' address (host:port): the Keeper list of clients' discovery (ha_serving.client.discovered_client) and of the CLI."
  value       = [module.keeper.address]
}

output "discovery" {
  description = "What a client's discovery configuration needs: the Keeper addresses and the Secret holding the bearer token; clients pass their own cluster and zone to rank endpoints (same cluster, then same zone)."
  value = {
    keepers      = [module.keeper.address]
    token_secret = module.keeper.token_secret
    zones        = { for name, r in local.registrations : name => r.zone }
  }
}

output "clusters" {
  description = "Each cluster's registration: name, GCS address, dashboard URL, tier and zone (what `ha-serving cluster register` takes)."
  value       = local.registrations
}

output "register_commands" {
  description = "One `ha-serving cluster register` per cluster, to run once the clusters are up, with HA_SERVING_DB_URL set to the Keepers' store (never on the command line)."
  value       = [for name, c in module.ray_cluster : join(" ", concat(["ha-serving"], c.register_args))]
}

output "db" {
  description = "The state store's connection details (no password) and the Secret with its URL."
  value = {
    mode         = module.state_db.mode
    host         = module.state_db.host
    port         = module.state_db.port
    database     = module.state_db.database
    username     = module.state_db.username
    url_redacted = module.state_db.url_redacted
    url_secret   = module.state_db.url_secret
  }
}

output "manifests" {
  description = "Every rendered object, by where it is applied: each cluster's name, and \"control-plane\" (Keeper and state store)."
  value = merge(
    { for name, c in module.ray_cluster : name => [c.manifest] },
    { "control-plane" = concat(module.state_db.manifests, module.keeper.manifests) },
  )
}

output "manifests_yaml" {
  description = "The same, one YAML document per object: the manifests_yaml input of ../../modules/kubernetes/cluster."
  value = merge(
    { for name, c in module.ray_cluster : name => [c.manifest_yaml] },
    { "control-plane" = concat(module.state_db.manifests_yaml, module.keeper.manifests_yaml) },
  )
}

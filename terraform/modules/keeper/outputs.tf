output "manifests" {
  description = "The Deployment, Service and PodDisruptionBudget, in apply order."
  value       = local.manifests
}

output "manifests_yaml" {
  description = "The same objects, each as a YAML document, for ../kubernetes/cluster or kubectl."
  value       = [for m in local.manifests : yamlencode(m)]
}

output "deployment" {
  description = "The Keeper's Deployment."
  value       = local.deployment
}

output "service" {
  description = "The Keeper's Service (gRPC control API)."
  value       = local.service
}

output "pod_disruption_budget" {
  description = "The Keeper's PodDisruptionBudget (minAvailable = replicas - 1)."
  value       = local.pod_disruption_budget
}

output "address" {
  description = "host:port clients, the CLI and AppMasters reach the Keepers at (HA_SERVING discovery's Keeper list)."
  value       = local.address
}

output "token_secret" {
  description = "The Secret reference holding the control-API token (what a client must read to authenticate)."
  value       = var.token_secret
}

output "manifest" {
  description = "The RayCluster object (apiVersion ray.io/v1), for kubernetes_manifest."
  value       = local.manifest
}

output "manifest_yaml" {
  description = "The RayCluster object as YAML, for kubectl or ../kubernetes/cluster."
  value       = yamlencode(local.manifest)
}

output "name" {
  description = "The cluster's name (RayCluster and Keepers' registry)."
  value       = var.name
}

output "namespace" {
  description = "The RayCluster's namespace."
  value       = var.namespace
}

output "gcs_address" {
  description = "host:port of the cluster's GCS, as the Keepers reach it."
  value       = "${local.head_host}:${local.gcs_port}"
}

output "dashboard_url" {
  description = "URL of the cluster's dashboard / Job Submission API, as the Keepers reach it."
  value       = "http://${local.head_host}:${local.dashboard_port}"
}

output "external_storage_namespace" {
  description = "The cluster's key prefix in the GCS fault-tolerance Redis."
  value       = local.storage_namespace
}

output "registration" {
  description = "What `ha-serving cluster register` takes for this cluster: name, gcs_address, dashboard_url, tier, zone."
  value = {
    name          = var.name
    gcs_address   = "${local.head_host}:${local.gcs_port}"
    dashboard_url = "http://${local.head_host}:${local.dashboard_port}"
    tier          = var.tier
    zone          = var.zone
  }
}

output "register_args" {
  description = "argv of `ha-serving cluster register` for this cluster (the store URL goes in HA_SERVING_DB_URL, never here)."
  value = [
    "cluster", "register", var.name,
    "--gcs", "${local.head_host}:${local.gcs_port}",
    "--dashboard", "http://${local.head_host}:${local.dashboard_port}",
    "--tier", var.tier,
    "--zone", var.zone,
  ]
}

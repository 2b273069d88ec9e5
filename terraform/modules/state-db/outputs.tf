output "mode" {
  description = "\"external\" or \"in-cluster\"."
  value       = var.mode
}

output "manifests" {
  description = "In-cluster mode: the StatefulSet and its headless Service, in apply order; external mode: none."
  value       = local.manifests
}

output "manifests_yaml" {
  description = "The same objects, each as a YAML document."
  value       = [for m in local.manifests : yamlencode(m)]
}

output "host" {
  description = "Host the Keepers connect to."
  value       = local.host
}

output "port" {
  description = "Port the Keepers connect to."
  value       = local.port
}

output "database" {
  description = "The Keepers' database."
  value       = var.database
}

output "username" {
  description = "The DB user the Keepers connect as."
  value       = var.username
}

output "url_redacted" {
  description = "The store URL the url_secret must hold, with the password masked (for docs and for creating that Secret)."
  value       = "mysql+pymysql://${var.username}:***@${local.host}:${local.port}/${var.database}"
}

output "url_secret" {
  description = "The Secret reference holding the full store URL: give it to the Keeper module's db_url_secret."
  value       = var.url_secret
}

output "applied" {
  description = "kind/namespace/name of every object applied."
  value       = sort(keys(kubernetes_manifest.object))
}

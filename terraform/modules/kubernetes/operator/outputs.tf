output "namespace" {
  description = "Namespace the operator runs in."
  value       = helm_release.kuberay_operator.namespace
}

output "chart_version" {
  description = "The chart version installed."
  value       = helm_release.kuberay_operator.version
}

output "release_status" {
  description = "Helm's status of the release (deployed once the operator and its CRDs are ready)."
  value       = helm_release.kuberay_operator.status
}

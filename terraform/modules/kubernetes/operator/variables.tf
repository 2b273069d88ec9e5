variable "chart_version" {
  type        = string
  description = "Version of the kuberay-operator Helm chart (= the KubeRay release). 1.3.0 or later: the clusters use gcsFaultToleranceOptions."
  default     = "1.4.2"

  validation {
    condition     = can(regex("^1\\.([3-9]|[1-9][0-9])\\.[0-9]+$", var.chart_version))
    error_message = "chart_version: an exact release, 1.3.0 or later (gcsFaultToleranceOptions needs KubeRay 1.3)."
  }
}

variable "namespace" {
  type        = string
  description = "Namespace the operator runs in (created if missing)."
  default     = "kuberay-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a DNS label."
  }
}

variable "watch_namespaces" {
  type        = list(string)
  description = "Namespaces the operator reconciles RayClusters in; empty: all namespaces (cluster-wide RBAC)."
  default     = []

  validation {
    condition     = alltrue([for n in var.watch_namespaces : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", n))])
    error_message = "watch_namespaces: DNS labels."
  }
}

variable "repository" {
  type        = string
  description = "Helm repository of the chart (a mirror, where the public one is not reachable)."
  default     = "https://ray-project.github.io/kuberay-helm/"

  validation {
    condition     = can(regex("^(https://|oci://)", var.repository))
    error_message = "repository: an https:// or oci:// URL."
  }
}

variable "manifests_yaml" {
  type        = list(string)
  description = "Objects to apply, one YAML document each: the render modules' manifest_yaml / manifests_yaml outputs. Each must name its namespace; a RayCluster needs the KubeRay CRD in place at plan time (apply ../operator first)."

  validation {
    condition     = alltrue([for y in var.manifests_yaml : can(yamldecode(y).kind) && can(yamldecode(y).metadata.name) && can(yamldecode(y).metadata.namespace)])
    error_message = "manifests_yaml: each document needs kind, metadata.name and metadata.namespace."
  }

  validation {
    condition     = alltrue([for y in var.manifests_yaml : try(yamldecode(y).kind, "") != "Secret"])
    error_message = "manifests_yaml: no Secret objects; create Secrets outside Terraform (its state would hold them in plain text) and reference them."
  }
}

variable "wait_for_rayclusters" {
  type        = bool
  description = "Wait until each RayCluster reports status.state = ready before the apply finishes."
  default     = true
}

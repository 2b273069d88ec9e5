variable "name" {
  type        = string
  description = "The Ray cluster's name: the RayCluster's metadata.name, and the name the Keepers' registry and services' placements use."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name))
    error_message = "name: lower-case letters, digits and '-', starting with a letter, at most 31 characters (an ha-serving cluster name)."
  }
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the RayCluster (and of the Redis password Secret it references)."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a DNS label (lower-case letters, digits and '-', at most 63 characters)."
  }
}

variable "tier" {
  type        = string
  description = "The cluster's tier (e.g. primary, secondary): a label on every object and pod, and its tier in the Keepers' registry."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}$", var.tier))
    error_message = "tier: lower-case letters, digits and '-', at most 31 characters (as `ha-serving cluster register --tier`)."
  }
}

variable "zone" {
  type        = string
  description = "The cluster's zone (e.g. us-east-1a): a label on every object and pod, its zone in the Keepers' registry, and, with pin_to_zone, where its pods run."

  validation {
    condition     = can(regex("^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", var.zone))
    error_message = "zone: a Kubernetes label value (letters, digits, '-', '_', '.', at most 63 characters, alphanumeric at both ends)."
  }
}

variable "pin_to_zone" {
  type        = bool
  description = "Schedule every pod of the cluster on nodes labelled topology.kubernetes.io/zone = zone, so the cluster is one failure domain of its own."
  default     = true
}

variable "image" {
  type        = string
  description = "Container image of the head and workers: Ray ray_version with ha-serving installed (the Keepers' serving jobs run `ha-serving appmaster start` on the head). Pinned by tag or digest."

  validation {
    condition     = can(regex("^[^\\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.image))
    error_message = "image: give a tag or a digest (repo/name:1.2.3 or repo/name@sha256:...)."
  }

  validation {
    condition     = !endswith(var.image, ":latest")
    error_message = "image: ':latest' is not a pin; give a version tag or a digest."
  }
}

variable "ray_version" {
  type        = string
  description = "Ray version in the image (spec.rayVersion); must match the Ray ha-serving is built against."
  default     = "2.60.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.ray_version))
    error_message = "ray_version: MAJOR.MINOR.PATCH, e.g. 2.60.0."
  }
}

variable "head" {
  type = object({
    cpu    = string
    memory = string
  })
  description = "Requests (= limits) of the head pod. The head runs no user work (num-cpus 0), only the GCS, the dashboard / Job Submission API and the serving jobs' entrypoints."
  default = {
    cpu    = "2"
    memory = "8Gi"
  }

  validation {
    condition     = can(regex("^([0-9]+m|[0-9]+(\\.[0-9]{1,3})?)$", var.head.cpu)) && can(regex("^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$", var.head.memory))
    error_message = "head: cpu like 2, 1.5 or 500m; memory like 8Gi or 512Mi."
  }
}

variable "worker_groups" {
  type = list(object({
    name         = string
    replicas     = number
    min_replicas = number
    max_replicas = number
    cpu          = string
    memory       = string
  }))
  description = "Worker groups: each a name, replicas with their min/max, and per-pod cpu and memory (requests = limits). Backends, proxies and AppMasters run on workers."

  validation {
    condition     = length(var.worker_groups) > 0
    error_message = "worker_groups: at least one group (the head runs no user work)."
  }

  validation {
    condition     = alltrue([for g in var.worker_groups : can(regex("^[a-z][a-z0-9-]{0,30}$", g.name))])
    error_message = "worker_groups[*].name: lower-case letters, digits and '-', starting with a letter, at most 31 characters."
  }

  validation {
    condition     = length(distinct([for g in var.worker_groups : g.name])) == length(var.worker_groups)
    error_message = "worker_groups: every group needs a name of its own."
  }

  validation {
    condition = alltrue([
      for g in var.worker_groups : floor(g.min_replicas) == g.min_replicas && floor(g.replicas) == g.replicas && floor(g.max_replicas) == g.max_replicas
    ])
    error_message = "worker_groups: replicas, min_replicas and max_replicas are whole numbers."
  }

  validation {
    condition = alltrue([
      for g in var.worker_groups : 0 <= g.min_replicas && g.min_replicas <= g.replicas && g.replicas <= g.max_replicas && g.max_replicas >= 1
    ])
    error_message = "worker_groups: 0 <= min_replicas <= replicas <= max_replicas, and max_replicas >= 1."
  }

  validation {
    condition = alltrue([
      for g in var.worker_groups : can(regex("^([0-9]+m|[0-9]+(\\.[0-9]{1,3})?)$", g.cpu)) && can(regex("^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$", g.memory))
    ])
    error_message = "worker_groups: cpu like 4, 1.5 or 500m; memory like 16Gi or 512Mi."
  }
}

variable "redis" {
  type = object({
    address = string
    password_secret = object({
      name = string
      key  = string
    })
  })
  description = "GCS fault tolerance: the external Redis (host:port, or redis:// / rediss:// URL) and the Secret (in namespace) whose key holds its password. Only the reference is rendered, never the password."

  validation {
    condition = (
      can(regex("^(rediss?://)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?:[0-9]{1,5}$", var.redis.address))
      && try(tonumber(regex(":([0-9]{1,5})$", var.redis.address)[0]) >= 1, false)
      && try(tonumber(regex(":([0-9]{1,5})$", var.redis.address)[0]) <= 65535, false)
    )
    error_message = "redis.address: host:port (or redis://host:port, rediss://host:port), port 1-65535."
  }

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.redis.password_secret.name)) && length(var.redis.password_secret.name) <= 253
    error_message = "redis.password_secret.name: a Secret name (DNS subdomain)."
  }

  validation {
    condition     = can(regex("^[-._a-zA-Z0-9]{1,253}$", var.redis.password_secret.key))
    error_message = "redis.password_secret.key: a Secret data key (letters, digits, '-', '_', '.')."
  }
}

variable "external_storage_namespace" {
  type        = string
  description = "The cluster's key prefix in Redis (gcsFaultToleranceOptions.externalStorageNamespace). Default: hasrv-<namespace>-<name>, stable across re-creations of the RayCluster (KubeRay's own default, the object's UID, is not)."
  default     = null

  validation {
    condition     = var.external_storage_namespace == null || can(regex("^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$", coalesce(var.external_storage_namespace, "-")))
    error_message = "external_storage_namespace: letters, digits, '-', '_', '.', at most 63 characters."
  }
}

variable "head_service_type" {
  type        = string
  description = "Type of the head Service KubeRay creates: ClusterIP when the Keepers run in the same Kubernetes cluster, LoadBalancer (with head_address) when they do not."
  default     = "ClusterIP"

  validation {
    condition     = contains(["ClusterIP", "NodePort", "LoadBalancer"], var.head_service_type)
    error_message = "head_service_type: ClusterIP, NodePort or LoadBalancer."
  }
}

variable "head_address" {
  type        = string
  description = "Host the Keepers reach the head at (a load balancer's DNS name, say) when they run outside this Kubernetes cluster. Default: the head Service's in-cluster name, <name>-head-svc.<namespace>.svc.cluster.local."
  default     = null

  validation {
    condition     = var.head_address == null || can(regex("^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$", coalesce(var.head_address, "-")))
    error_message = "head_address: a host name or an IPv4 address, without a port."
  }
}

variable "labels" {
  type        = map(string)
  description = "Extra labels on the RayCluster and its pods (the module's own app.kubernetes.io/* and ha-serving.io/* labels win)."
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k)) && can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", v))
    ])
    error_message = "labels: keys are [prefix/]name and values at most 63 characters of letters, digits, '-', '_', '.'."
  }
}

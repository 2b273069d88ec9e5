variable "image" {
  type        = string
  description = "The ha-serving image (Ray + ha-serving) of the Keeper and of every Ray cluster, pinned by tag or digest."

  validation {
    condition     = can(regex("^[^\\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.image)) && !endswith(var.image, ":latest")
    error_message = "image: give a version tag or a digest (not :latest)."
  }
}

variable "namespace" {
  type        = string
  description = "Namespace of the Keeper and the state store (and of their Secrets)."
  default     = "ha-serving"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a DNS label."
  }
}

variable "clusters" {
  type = map(object({
    tier      = string
    zone      = string
    namespace = optional(string)
    # where the Keepers reach the head, when they run outside its Kubernetes cluster
    head_address = optional(string)
    worker_groups = optional(list(object({
      name         = string
      replicas     = number
      min_replicas = number
      max_replicas = number
      cpu          = string
      memory       = string
    })))
  }))
  description = "The Ray clusters by name: tier, zone, and optionally namespace (default ray-<name>), head_address and worker_groups (default var.worker_groups). Default: three clusters in two tiers, primary in zones a and b, secondary in zone c."
  default = {
    c1 = { tier = "primary", zone = "zone-a" }
    c2 = { tier = "primary", zone = "zone-b" }
    c3 = { tier = "secondary", zone = "zone-c" }
  }

  validation {
    condition     = length(var.clusters) >= 1 && length(var.clusters) <= 9
    error_message = "clusters: from 1 to 9."
  }

  validation {
    condition     = alltrue([for name, c in var.clusters : can(regex("^[a-z][a-z0-9-]{0,30}$", name))])
    error_message = "clusters: names are lower-case letters, digits and '-', starting with a letter, at most 31 characters."
  }

  validation {
    condition     = alltrue([for c in var.clusters : can(regex("^[a-z0-9][a-z0-9-]{0,30}$", c.tier)) && can(regex("^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", c.zone))])
    error_message = "clusters: a tier is lower-case letters, digits and '-'; a zone is a Kubernetes label value."
  }

  validation {
    condition     = length(distinct([for c in var.clusters : "${c.tier}/${c.zone}"])) == length(var.clusters)
    error_message = "clusters: two clusters of one tier share a zone; spread each tier over zones, so a zone's loss leaves the tier serving."
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
  description = "Worker groups of every cluster that does not give its own (checked by the ray-cluster module)."
  default = [
    { name = "cpu", replicas = 2, min_replicas = 2, max_replicas = 4, cpu = "4", memory = "16Gi" },
  ]
}

variable "redis" {
  type = object({
    address = string
    password_secret = object({
      name = string
      key  = string
    })
  })
  description = "The Redis every cluster's GCS keeps its state in (each under a namespace of its own), and the Secret with its password, present in every cluster's namespace (checked by the ray-cluster module)."
  default = {
    address         = "redis.ha-serving.svc.cluster.local:6379"
    password_secret = { name = "ha-serving-redis", key = "password" }
  }
}

variable "db_mode" {
  type        = string
  description = "The Keepers' state store: \"in-cluster\" (a MariaDB StatefulSet in namespace) or \"external\" (db_external_host)."
  default     = "in-cluster"

  validation {
    condition     = contains(["in-cluster", "external"], var.db_mode)
    error_message = "db_mode: \"in-cluster\" or \"external\"."
  }
}

variable "db_external_host" {
  type        = string
  description = "Host of the external MySQL/MariaDB (db_mode \"external\"; checked by the state-db module)."
  default     = null
}

variable "keeper_replicas" {
  type        = number
  description = "Keeper replicas (checked by the keeper module: 3 to 9)."
  default     = 3
}

variable "secret_refs" {
  type = object({
    keeper_token     = object({ name = string, key = string })
    db_url           = object({ name = string, key = string })
    db_password      = object({ name = string, key = string })
    db_root_password = object({ name = string, key = string })
  })
  description = "The Secrets (name and data key, in namespace) the objects reference, each created outside Terraform: the Keepers' control-API token, the store URL the Keepers use, and the DB user's and root passwords. References only: no secret value passes through Terraform."
  default = {
    keeper_token     = { name = "ha-serving-keeper-token", key = "token" }
    db_url           = { name = "ha-serving-db-url", key = "url" }
    db_password      = { name = "ha-serving-db", key = "password" }
    db_root_password = { name = "ha-serving-db", key = "root-password" }
  }

  validation {
    condition = alltrue([
      for r in values(var.secret_refs) : can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", r.name)) && length(r.name) <= 253 && can(regex("^[-._a-zA-Z0-9]{1,253}$", r.key))
    ])
    error_message = "secret_refs: each a Secret name (DNS subdomain) and a data key (letters, digits, '-', '_', '.')."
  }
}

variable "keeper_tls_secret" {
  type = object({
    name = string
  })
  description = "The kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt; e.g. from cert-manager) with the Keepers' server certificate and the CA of the AppMasters' link certificates, created outside Terraform: the Keepers serve TLS, as `ha-serving up` does by default. null: plaintext (a test cluster only)."
  default     = { name = "ha-serving-keeper-tls" }
  nullable    = true
}

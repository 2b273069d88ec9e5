variable "name" {
  type        = string
  description = "Name of the Keeper's Deployment, Service and PodDisruptionBudget."
  default     = "ha-serving-keeper"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.name))
    error_message = "name: a DNS label (lower-case letters, digits and '-', at most 63 characters)."
  }
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the Keeper (and of the Secrets it references)."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a DNS label (lower-case letters, digits and '-', at most 63 characters)."
  }
}

variable "image" {
  type        = string
  description = "Container image with ha-serving installed (its entrypoint need not be set: the module runs `ha-serving keeper run`). Pinned by tag or digest."

  validation {
    condition     = can(regex("^[^\\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.image))
    error_message = "image: give a tag or a digest (repo/name:1.2.3 or repo/name@sha256:...)."
  }

  validation {
    condition     = !endswith(var.image, ":latest")
    error_message = "image: ':latest' is not a pin; give a version tag or a digest."
  }
}

variable "replicas" {
  type        = number
  description = "Keeper replicas. Three survive the loss of any one, the leader included; the PodDisruptionBudget keeps all but one available."
  default     = 3

  validation {
    condition     = floor(var.replicas) == var.replicas && var.replicas >= 3 && var.replicas <= 9
    error_message = "replicas: a whole number from 3 to 9 (fewer cannot lose one replica during a voluntary disruption and still have a standby)."
  }
}

variable "port" {
  type        = number
  description = "The Keepers' gRPC control-API port (container and Service)."
  default     = 9400

  validation {
    condition     = floor(var.port) == var.port && var.port >= 1024 && var.port <= 65535
    error_message = "port: a whole number from 1024 to 65535."
  }
}

variable "db_url_secret" {
  type = object({
    name = string
    key  = string
  })
  description = "The Secret (name, key) holding the state store's SQLAlchemy URL (mysql+pymysql://user:password@host:port/db); it reaches the Keeper as HA_SERVING_DB_URL through secretKeyRef. Only the reference is rendered."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.db_url_secret.name)) && length(var.db_url_secret.name) <= 253
    error_message = "db_url_secret.name: a Secret name (DNS subdomain)."
  }

  validation {
    condition     = can(regex("^[-._a-zA-Z0-9]{1,253}$", var.db_url_secret.key))
    error_message = "db_url_secret.key: a Secret data key (letters, digits, '-', '_', '.')."
  }
}

variable "token_secret" {
  type = object({
    name = string
    key  = string
  })
  description = "The Secret (name, key) holding the control API's bearer token; it reaches the Keeper as HA_SERVING_KEEPER_TOKEN through secretKeyRef. Only the reference is rendered."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.token_secret.name)) && length(var.token_secret.name) <= 253
    error_message = "token_secret.name: a Secret name (DNS subdomain)."
  }

  validation {
    condition     = can(regex("^[-._a-zA-Z0-9]{1,253}$", var.token_secret.key))
    error_message = "token_secret.key: a Secret data key (letters, digits, '-', '_', '.')."
  }
}

variable "tls_secret" {
  type = object({
    name = string
  })
  description = "A kubernetes.io/tls Secret (tls.crt, tls.key and ca.crt, as cert-manager writes it): the Keepers' server certificate, valid for the advertised host, and the CA the AppMasters' link certificates are verified against. Mounted read-only at /etc/ha-serving/tls; the Keeper then serves its API over TLS only and its AppMasters' link on port + 1 under mutual TLS (as `ha-serving up` does by default). null: plaintext, for a test cluster only."
  default     = null

  validation {
    condition     = var.tls_secret == null || try(can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.tls_secret.name)) && length(var.tls_secret.name) <= 253, false)
    error_message = "tls_secret.name: a Secret name (DNS subdomain)."
  }
}

variable "lease_ttl_s" {
  type        = number
  description = "The leader lease in seconds (HA_SERVING_KEEPER_TTL): a dead leader is replaced within about this long."
  default     = 3

  validation {
    condition     = var.lease_ttl_s > 0.5 && var.lease_ttl_s <= 60
    error_message = "lease_ttl_s: more than 0.5 and at most 60 (as the Keeper's own settings)."
  }
}

variable "resources" {
  type = object({
    cpu    = string
    memory = string
  })
  description = "Requests (= limits) of each Keeper pod."
  default = {
    cpu    = "500m"
    memory = "512Mi"
  }

  validation {
    condition     = can(regex("^([0-9]+m|[0-9]+(\\.[0-9]{1,3})?)$", var.resources.cpu)) && can(regex("^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$", var.resources.memory))
    error_message = "resources: cpu like 1, 0.5 or 500m; memory like 512Mi or 1Gi."
  }
}

variable "topology_key" {
  type        = string
  description = "Node label the replicas are spread over (required pod anti-affinity): kubernetes.io/hostname puts each on its own node, topology.kubernetes.io/zone each in its own zone."
  default     = "kubernetes.io/hostname"

  validation {
    condition     = can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", var.topology_key))
    error_message = "topology_key: a node label key, e.g. kubernetes.io/hostname."
  }
}

variable "service_type" {
  type        = string
  description = "Type of the Keeper's Service: ClusterIP when clients and the Ray clusters' AppMasters run in this Kubernetes cluster, LoadBalancer (with advertised_host) when they do not."
  default     = "ClusterIP"

  validation {
    condition     = contains(["ClusterIP", "LoadBalancer"], var.service_type)
    error_message = "service_type: ClusterIP or LoadBalancer."
  }
}

variable "advertised_host" {
  type        = string
  description = "Host clients and AppMasters reach the Keepers at (a load balancer's DNS name, say). Default: the Service's in-cluster name, <name>.<namespace>.svc.cluster.local."
  default     = null

  validation {
    condition     = var.advertised_host == null || can(regex("^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$", coalesce(var.advertised_host, "-")))
    error_message = "advertised_host: a host name or an IPv4 address, without a port."
  }
}

variable "labels" {
  type        = map(string)
  description = "Extra labels on every object and pod (the module's own app.kubernetes.io/* labels win)."
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k)) && can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", v))
    ])
    error_message = "labels: keys are [prefix/]name and values at most 63 characters of letters, digits, '-', '_', '.'."
  }
}

variable "mode" {
  type        = string
  description = "\"external\": a MySQL/MariaDB server run elsewhere (a managed, replicated one for HA), given by external_host/external_port; \"in-cluster\": a MariaDB StatefulSet (one replica) with a headless Service, rendered here."
  default     = "external"

  validation {
    condition     = contains(["external", "in-cluster"], var.mode)
    error_message = "mode: \"external\" or \"in-cluster\"."
  }
}

variable "name" {
  type        = string
  description = "Name of the StatefulSet and its headless Service (in-cluster mode)."
  default     = "ha-serving-db"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$", var.name))
    error_message = "name: a DNS label of at most 52 characters (StatefulSet pod names add a suffix)."
  }
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the in-cluster DB (and of the Secrets it references)."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a DNS label (lower-case letters, digits and '-', at most 63 characters)."
  }
}

variable "database" {
  type        = string
  description = "Database (schema) the Keepers keep their state in."
  default     = "ha_serving"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]{0,63}$", var.database))
    error_message = "database: letters, digits and '_', not starting with a digit, at most 64 characters."
  }
}

variable "username" {
  type        = string
  description = "The DB user the Keepers connect as (its password is in password_secret)."
  default     = "hasrv"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]{0,31}$", var.username)) && var.username != "root"
    error_message = "username: letters, digits and '_', at most 32 characters, and not root."
  }
}

variable "external_host" {
  type        = string
  description = "Host of the external server (mode \"external\"; required there)."
  default     = null

  validation {
    condition     = var.mode != "external" || var.external_host != null
    error_message = "external_host: required when mode is \"external\"."
  }

  validation {
    condition     = var.external_host == null || can(regex("^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$", coalesce(var.external_host, "-")))
    error_message = "external_host: a host name or an IPv4 address, without a port."
  }
}

variable "external_port" {
  type        = number
  description = "Port of the external server (mode \"external\")."
  default     = 3306

  validation {
    condition     = floor(var.external_port) == var.external_port && var.external_port >= 1 && var.external_port <= 65535
    error_message = "external_port: a whole number from 1 to 65535."
  }
}

variable "password_secret" {
  type = object({
    name = string
    key  = string
  })
  description = "The Secret (name, key) holding the DB user's password. In-cluster, MariaDB creates the user with it (MARIADB_PASSWORD through secretKeyRef). Only the reference is rendered."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.password_secret.name)) && length(var.password_secret.name) <= 253
    error_message = "password_secret.name: a Secret name (DNS subdomain)."
  }

  validation {
    condition     = can(regex("^[-._a-zA-Z0-9]{1,253}$", var.password_secret.key))
    error_message = "password_secret.key: a Secret data key (letters, digits, '-', '_', '.')."
  }
}

variable "root_password_secret" {
  type = object({
    name = string
    key  = string
  })
  description = "In-cluster mode (required there): the Secret (name, key) with the MariaDB root password (MARIADB_ROOT_PASSWORD through secretKeyRef). A generated one would be printed to the pod's log, so none is."
  default     = null

  validation {
    condition     = var.mode != "in-cluster" || var.root_password_secret != null
    error_message = "root_password_secret: required when mode is \"in-cluster\"."
  }

  validation {
    condition = var.root_password_secret == null || (
      can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", try(var.root_password_secret.name, "")))
      && can(regex("^[-._a-zA-Z0-9]{1,253}$", try(var.root_password_secret.key, "")))
    )
    error_message = "root_password_secret: a Secret name (DNS subdomain) and a data key."
  }
}

variable "url_secret" {
  type = object({
    name = string
    key  = string
  })
  description = "The Secret (name, key) holding the full SQLAlchemy URL the Keepers use (mysql+pymysql://<username>:<password>@<host>:<port>/<database>); passed through to the Keeper module. Created with the password, outside Terraform."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.url_secret.name)) && length(var.url_secret.name) <= 253
    error_message = "url_secret.name: a Secret name (DNS subdomain)."
  }

  validation {
    condition     = can(regex("^[-._a-zA-Z0-9]{1,253}$", var.url_secret.key))
    error_message = "url_secret.key: a Secret data key (letters, digits, '-', '_', '.')."
  }
}

variable "image" {
  type        = string
  description = "MariaDB image of the in-cluster server, pinned by tag or digest."
  default     = "docker.io/library/mariadb:11.4.5"

  validation {
    condition     = can(regex("^[^\\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.image)) && !endswith(var.image, ":latest")
    error_message = "image: give a version tag or a digest (not :latest)."
  }
}

variable "storage" {
  type = object({
    size          = string
    storage_class = optional(string)
  })
  description = "In-cluster only: the data volume's size and storage class (null: the cluster's default class)."
  default = {
    size = "10Gi"
  }

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi|Ti)$", var.storage.size))
    error_message = "storage.size: like 10Gi, 512Mi or 1Ti."
  }
}

variable "resources" {
  type = object({
    cpu    = string
    memory = string
  })
  description = "In-cluster only: requests (= limits) of the DB pod."
  default = {
    cpu    = "1"
    memory = "2Gi"
  }

  validation {
    condition     = can(regex("^([0-9]+m|[0-9]+(\\.[0-9]{1,3})?)$", var.resources.cpu)) && can(regex("^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$", var.resources.memory))
    error_message = "resources: cpu like 1, 0.5 or 500m; memory like 2Gi or 512Mi."
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

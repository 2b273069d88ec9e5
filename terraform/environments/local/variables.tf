variable "repo_root" {
  type        = string
  description = "Absolute path of the ha-serving checkout the stack runs from (the provisioners' working directory). Default: three levels above this directory."
  default     = null

  validation {
    condition     = var.repo_root == null || can(regex("^/[^\\n]*$", coalesce(var.repo_root, "/")))
    error_message = "repo_root: an absolute path."
  }
}

variable "ha_serving_bin" {
  type        = string
  description = "Absolute path of the ha-serving executable. Default: <repo_root>/.venv/bin/ha-serving (what `make venv` installs)."
  default     = null

  validation {
    condition     = var.ha_serving_bin == null || can(regex("^/[^\\n]*$", coalesce(var.ha_serving_bin, "/")))
    error_message = "ha_serving_bin: an absolute path."
  }
}

variable "run_dir" {
  type        = string
  description = "The stack's run directory (topology, logs, data). Default: <repo_root>/.run-terraform, apart from `make up`'s .run, so destroying this root never takes down a stack it did not start."
  default     = null

  validation {
    condition     = var.run_dir == null || can(regex("^/[^\\n]*$", coalesce(var.run_dir, "/")))
    error_message = "run_dir: an absolute path."
  }
}

variable "clusters" {
  type        = number
  description = "Local Ray clusters (`ha-serving up --clusters`)."
  default     = 2

  validation {
    condition     = floor(var.clusters) == var.clusters && var.clusters >= 1 && var.clusters <= 9
    error_message = "clusters: a whole number from 1 to 9 (cluster i lives at 127.0.i.x)."
  }
}

variable "workers_per_cluster" {
  type        = number
  description = "Worker nodes per cluster (`ha-serving up --workers`)."
  default     = 1

  validation {
    condition     = floor(var.workers_per_cluster) == var.workers_per_cluster && var.workers_per_cluster >= 1 && var.workers_per_cluster <= 8
    error_message = "workers_per_cluster: a whole number from 1 to 8."
  }
}

variable "db_url" {
  type        = string
  description = "An external state store's SQLAlchemy URL (mysql+pymysql://user:password@host:port/db); null: `up` starts a private MariaDB. It reaches `up` only as HA_SERVING_DB_URL in the provisioner's environment: never on a command line, never in the state."
  default     = null
  sensitive   = true

  validation {
    condition     = var.db_url == null || can(regex("^(mysql\\+pymysql://|sqlite:///)", coalesce(var.db_url, "-")))
    error_message = "db_url: a mysql+pymysql:// or sqlite:/// URL."
  }
}

variable "port_base" {
  type        = number
  description = "First port of the clusters' port blocks (HA_SERVING_PORT_BASE); null: ha-serving's default (10000). Give another to run beside `make up`'s stack."
  default     = null

  validation {
    condition     = var.port_base == null || try(floor(var.port_base) == var.port_base && var.port_base >= 1024 && var.port_base <= 21000, false)
    error_message = "port_base: a whole number from 1024 to 21000."
  }
}

variable "keeper_port" {
  type        = number
  description = "The Keepers' control-API port (HA_SERVING_KEEPER_PORT); null: ha-serving's default (9400). `up` starts 3 Keepers, at 127.0.200.1-3."
  default     = null

  validation {
    condition     = var.keeper_port == null || try(floor(var.keeper_port) == var.keeper_port && var.keeper_port >= 1024 && var.keeper_port <= 65535, false)
    error_message = "keeper_port: a whole number from 1024 to 65535."
  }
}

variable "db_port" {
  type        = number
  description = "Port of the private MariaDB (HA_SERVING_DB_PORT); null: ha-serving's default (9306)."
  default     = null

  validation {
    condition     = var.db_port == null || try(floor(var.db_port) == var.db_port && var.db_port >= 1024 && var.db_port <= 65535, false)
    error_message = "db_port: a whole number from 1024 to 65535."
  }
}

variable "redis_port" {
  type        = number
  description = "Port of the private Redis for GCS fault tolerance (HA_SERVING_REDIS_PORT); null: ha-serving's default (9379)."
  default     = null

  validation {
    condition     = var.redis_port == null || try(floor(var.redis_port) == var.redis_port && var.redis_port >= 1024 && var.redis_port <= 65535, false)
    error_message = "redis_port: a whole number from 1024 to 65535."
  }
}

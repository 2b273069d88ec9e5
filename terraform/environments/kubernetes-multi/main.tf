# The HA serving stack on Kubernetes, rendered: the Ray clusters (3 in 2 tiers by
# default) as KubeRay RayClusters with GCS fault tolerance, the Keeper (3 replicas), and
# its state store. Nothing is applied here: see README.md for the apply step with
# ../../modules/kubernetes (the operator first, then each cluster's objects through its
# own provider alias), and for registering the clusters with the Keepers.

module "ray_cluster" {
  source   = "../../modules/ray-cluster"
  for_each = var.clusters

  name          = each.key
  namespace     = coalesce(each.value.namespace, "ray-${each.key}")
  tier          = each.value.tier
  zone          = each.value.zone
  image         = var.image
  head_address  = each.value.head_address
  worker_groups = coalesce(each.value.worker_groups, var.worker_groups)
  redis         = var.redis
}

module "state_db" {
  source = "../../modules/state-db"

  mode                 = var.db_mode
  namespace            = var.namespace
  external_host        = var.db_external_host
  password_secret      = var.secret_refs.db_password
  root_password_secret = var.db_mode == "in-cluster" ? var.secret_refs.db_root_password : null
  url_secret           = var.secret_refs.db_url
}

module "keeper" {
  source = "../../modules/keeper"

  namespace     = var.namespace
  image         = var.image
  replicas      = var.keeper_replicas
  db_url_secret = module.state_db.url_secret
  token_secret  = var.secret_refs.keeper_token
  tls_secret    = var.keeper_tls_secret
}

locals {
  registrations = { for name, c in module.ray_cluster : name => c.registration }
}

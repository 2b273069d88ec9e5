# One Ray cluster as a KubeRay RayCluster (ray.io/v1), rendered, not applied.
#
# The head runs no user work (num-cpus 0): only the GCS, the dashboard (whose Job
# Submission API the Keepers start serving jobs through) and the jobs' entrypoints.
# GCS fault tolerance (KubeRay 1.3+ gcsFaultToleranceOptions): the GCS keeps its state
# in an external Redis under externalStorageNamespace, so a restarted head recovers it
# and the workers, with their backends and proxies, keep serving meanwhile.

locals {
  # KubeRay's fixed head ports (its defaults) and the head Service it creates.
  gcs_port       = 6379
  dashboard_port = 8265
  client_port    = 10001
  head_service   = "${var.name}-head-svc"
  head_host      = coalesce(var.head_address, "${local.head_service}.${var.namespace}.svc.cluster.local")

  storage_namespace = coalesce(var.external_storage_namespace, "hasrv-${var.namespace}-${var.name}")

  labels = merge(var.labels, {
    "app.kubernetes.io/name"       = "ray-cluster"
    "app.kubernetes.io/instance"   = var.name
    "app.kubernetes.io/part-of"    = "ha-serving"
    "app.kubernetes.io/managed-by" = "terraform"
    "ha-serving.io/cluster"        = var.name
    "ha-serving.io/tier"           = var.tier
    "ha-serving.io/zone"           = var.zone
  })

  # Empty unless pinned: the for/if form keeps one object type for both cases.
  node_selector = { for k, v in { "topology.kubernetes.io/zone" = var.zone } : k => v if var.pin_to_zone }

  head_resources = {
    requests = { cpu = var.head.cpu, memory = var.head.memory }
    limits   = { cpu = var.head.cpu, memory = var.head.memory }
  }

  head_group = {
    serviceType = var.head_service_type
    rayStartParams = {
      "num-cpus"       = "0"       # control processes only, never user work
      "dashboard-host" = "0.0.0.0" # the Keepers submit serving jobs to it
    }
    template = {
      metadata = { labels = merge(local.labels, { "ha-serving.io/node-type" = "head" }) }
      spec = {
        nodeSelector = local.node_selector
        containers = [{
          name      = "ray-head"
          image     = var.image
          resources = local.head_resources
          ports = [
            { name = "gcs-server", containerPort = local.gcs_port, protocol = "TCP" },
            { name = "dashboard", containerPort = local.dashboard_port, protocol = "TCP" },
            { name = "client", containerPort = local.client_port, protocol = "TCP" },
          ]
        }]
      }
    }
  }

  worker_groups = [
    for g in var.worker_groups : {
      groupName      = g.name
      replicas       = g.replicas
      minReplicas    = g.min_replicas
      maxReplicas    = g.max_replicas
      rayStartParams = {}
      template = {
        metadata = {
          labels = merge(local.labels, {
            "ha-serving.io/node-type"    = "worker"
            "ha-serving.io/worker-group" = g.name
          })
        }
        spec = {
          nodeSelector = local.node_selector
          containers = [{
            name  = "ray-worker"
            image = var.image
            resources = {
              requests = { cpu = g.cpu, memory = g.memory }
              limits   = { cpu = g.cpu, memory = g.memory }
            }
          }]
        }
      }
    }
  ]

  manifest = {
    apiVersion = "ray.io/v1"
    kind       = "RayCluster"
    metadata = {
      name      = var.name
      namespace = var.namespace
      labels    = local.labels
    }
    spec = {
      rayVersion              = var.ray_version
      enableInTreeAutoscaling = false # fixed worker counts; ha-serving places by itself
      gcsFaultToleranceOptions = {
        redisAddress = var.redis.address
        redisPassword = {
          valueFrom = {
            secretKeyRef = {
              name = var.redis.password_secret.name
              key  = var.redis.password_secret.key
            }
          }
        }
        externalStorageNamespace = local.storage_namespace
      }
      headGroupSpec    = local.head_group
      workerGroupSpecs = local.worker_groups
    }
  }
}

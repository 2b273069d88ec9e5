# The Keepers' state store: an external MySQL/MariaDB endpoint (a managed, replicated
# server is the HA choice), or an in-cluster MariaDB StatefulSet with a headless Service.
# Passwords come from Secrets by reference (secretKeyRef); nothing secret is rendered.

locals {
  in_cluster = var.mode == "in-cluster"
  selector = {
    "app.kubernetes.io/name"     = "ha-serving-db"
    "app.kubernetes.io/instance" = var.name
  }
  labels = merge(var.labels, local.selector, {
    "app.kubernetes.io/part-of"    = "ha-serving"
    "app.kubernetes.io/component"  = "state-store"
    "app.kubernetes.io/managed-by" = "terraform"
  })

  host = local.in_cluster ? "${var.name}.${var.namespace}.svc.cluster.local" : coalesce(var.external_host, "-")
  port = local.in_cluster ? 3306 : var.external_port

  healthcheck = ["healthcheck.sh", "--connect", "--innodb_initialized"]

  statefulset = {
    apiVersion = "apps/v1"
    kind       = "StatefulSet"
    metadata   = { name = var.name, namespace = var.namespace, labels = local.labels }
    spec = {
      serviceName = var.name
      replicas    = 1 # one primary; for a replicated store use mode = "external"
      selector    = { matchLabels = local.selector }
      template = {
        metadata = { labels = local.labels }
        spec = {
          securityContext = {
            runAsNonRoot   = true
            runAsUser      = 999 # the image's mysql user
            runAsGroup     = 999
            fsGroup        = 999
            seccompProfile = { type = "RuntimeDefault" }
          }
          terminationGracePeriodSeconds = 60
          containers = [{
            name  = "mariadb"
            image = var.image
            env = [
              { name = "MARIADB_DATABASE", value = var.database },
              { name = "MARIADB_USER", value = var.username },
              {
                name      = "MARIADB_PASSWORD"
                valueFrom = { secretKeyRef = { name = var.password_secret.name, key = var.password_secret.key } }
              },
              {
                name = "MARIADB_ROOT_PASSWORD"
                valueFrom = {
                  secretKeyRef = {
                    name = try(var.root_password_secret.name, "")
                    key  = try(var.root_password_secret.key, "")
                  }
                }
              },
            ]
            ports          = [{ name = "mysql", containerPort = 3306, protocol = "TCP" }]
            volumeMounts   = [{ name = "data", mountPath = "/var/lib/mysql" }]
            readinessProbe = { exec = { command = local.healthcheck }, periodSeconds = 5, failureThreshold = 3 }
            livenessProbe  = { exec = { command = ["healthcheck.sh", "--connect"] }, initialDelaySeconds = 60, periodSeconds = 10, failureThreshold = 6 }
            resources = {
              requests = { cpu = var.resources.cpu, memory = var.resources.memory }
              limits   = { cpu = var.resources.cpu, memory = var.resources.memory }
            }
            securityContext = {
              allowPrivilegeEscalation = false
              capabilities             = { drop = ["ALL"] }
            }
          }]
        }
      }
      volumeClaimTemplates = [{
        metadata = { name = "data", labels = local.labels }
        spec = merge(
          {
            accessModes = ["ReadWriteOnce"]
            resources   = { requests = { storage = var.storage.size } }
          },
          # only when given: no storageClassName means the cluster's default class
          { for k, v in { storageClassName = var.storage.storage_class } : k => v if v != null },
        )
      }]
    }
  }

  headless_service = {
    apiVersion = "v1"
    kind       = "Service"
    metadata   = { name = var.name, namespace = var.namespace, labels = local.labels }
    spec = {
      clusterIP = "None"
      selector  = local.selector
      ports     = [{ name = "mysql", port = 3306, targetPort = "mysql", protocol = "TCP" }]
    }
  }

  manifests = [for m in [local.statefulset, local.headless_service] : m if local.in_cluster]
}

# The Keeper as Kubernetes objects, rendered, not applied: a Deployment of `replicas`
# pods spread by required anti-affinity, a Service for its gRPC control API, and a
# PodDisruptionBudget that keeps all but one available. Its credentials (the store URL,
# the control-API token) come from Secrets by reference (secretKeyRef): no secret value
# passes through Terraform, its state, or a command line.

locals {
  selector = {
    "app.kubernetes.io/name"     = "ha-serving-keeper"
    "app.kubernetes.io/instance" = var.name
  }
  labels = merge(var.labels, local.selector, {
    "app.kubernetes.io/part-of"    = "ha-serving"
    "app.kubernetes.io/component"  = "keeper"
    "app.kubernetes.io/managed-by" = "terraform"
  })
  host    = coalesce(var.advertised_host, "${var.name}.${var.namespace}.svc.cluster.local")
  address = "${local.host}:${var.port}"

  # TLS (var.tls_secret): the Secret's files, read-only, and the settings naming them.
  # The AppMasters' link then has a port of its own (port + 1, mutual TLS). Kubernetes'
  # built-in gRPC probes speak no TLS, so the probes become TCP checks of the API port.
  tls       = var.tls_secret != null
  tls_dir   = "/etc/ha-serving/tls"
  link_port = var.port + 1
  tls_env = local.tls ? [
    { name = "HA_SERVING_TLS_CA", value = "${local.tls_dir}/ca.crt" },
    { name = "HA_SERVING_TLS_KEEPER_CERT", value = "${local.tls_dir}/tls.crt" },
    { name = "HA_SERVING_TLS_KEEPER_KEY", value = "${local.tls_dir}/tls.key" },
  ] : []
  probe = local.tls ? { tcpSocket = { port = var.port } } : { grpc = { port = var.port } }

  # with TLS only (absent, not empty, without: the YAML round-trips to the same objects)
  tls_mounts  = { for k, v in { volumeMounts = [{ name = "tls", mountPath = local.tls_dir, readOnly = true }] } : k => v if local.tls }
  tls_volumes = { for k, v in { volumes = [{ name = "tls", secret = { secretName = try(var.tls_secret.name, ""), defaultMode = 288 } }] } : k => v if local.tls } # 0440

  container = merge(local.container_base, local.tls_mounts)
  container_base = {
    name    = "keeper"
    image   = var.image
    command = ["ha-serving"]
    # --peers: what serving jobs give their AppMasters to link to (any Keeper will do).
    # The store URL is not an argument: the Keeper reads HA_SERVING_DB_URL.
    args = [
      "keeper", "run",
      "--id", "$(POD_NAME)",
      "--address", "$(POD_IP):${var.port}",
      "--peers", local.address,
    ]
    env = concat([
      { name = "POD_NAME", valueFrom = { fieldRef = { fieldPath = "metadata.name" } } },
      { name = "POD_IP", valueFrom = { fieldRef = { fieldPath = "status.podIP" } } },
      {
        name      = "HA_SERVING_DB_URL"
        valueFrom = { secretKeyRef = { name = var.db_url_secret.name, key = var.db_url_secret.key } }
      },
      {
        name      = "HA_SERVING_KEEPER_TOKEN"
        valueFrom = { secretKeyRef = { name = var.token_secret.name, key = var.token_secret.key } }
      },
      { name = "HA_SERVING_KEEPER_TTL", value = tostring(var.lease_ttl_s) },
    ], local.tls_env)
    ports = concat(
      [{ name = "grpc", containerPort = var.port, protocol = "TCP" }],
      local.tls ? [{ name = "link", containerPort = local.link_port, protocol = "TCP" }] : [],
    )
    # plaintext: the standard gRPC health service, which the Keeper serves without the token
    readinessProbe = merge(local.probe, { periodSeconds = 5, failureThreshold = 2 })
    livenessProbe  = merge(local.probe, { periodSeconds = 10, failureThreshold = 3, initialDelaySeconds = 10 })
    resources = {
      requests = { cpu = var.resources.cpu, memory = var.resources.memory }
      limits   = { cpu = var.resources.cpu, memory = var.resources.memory }
    }
    securityContext = {
      allowPrivilegeEscalation = false
      capabilities             = { drop = ["ALL"] }
    }
  }

  deployment = {
    apiVersion = "apps/v1"
    kind       = "Deployment"
    metadata   = { name = var.name, namespace = var.namespace, labels = local.labels }
    spec = {
      replicas = var.replicas
      selector = { matchLabels = local.selector }
      # one replica at a time, never below replicas - 1 (as the budget)
      strategy = { type = "RollingUpdate", rollingUpdate = { maxUnavailable = 1, maxSurge = 1 } }
      template = {
        metadata = { labels = local.labels }
        spec = merge({
          affinity = {
            podAntiAffinity = {
              requiredDuringSchedulingIgnoredDuringExecution = [{
                labelSelector = { matchLabels = local.selector }
                topologyKey   = var.topology_key
              }]
            }
          }
          securityContext = {
            runAsNonRoot   = true
            runAsUser      = 1000
            fsGroup        = 1000 # the TLS key's group: readable by the Keeper only
            seccompProfile = { type = "RuntimeDefault" }
          }
          terminationGracePeriodSeconds = 30
          containers                    = [local.container]
        }, local.tls_volumes)
      }
    }
  }

  service = {
    apiVersion = "v1"
    kind       = "Service"
    metadata   = { name = var.name, namespace = var.namespace, labels = local.labels }
    spec = {
      type     = var.service_type
      selector = local.selector
      ports = concat(
        [{ name = "grpc", port = var.port, targetPort = "grpc", protocol = "TCP", appProtocol = "grpc" }],
        local.tls ? [{ name = "link", port = local.link_port, targetPort = "link", protocol = "TCP", appProtocol = "grpc" }] : [],
      )
    }
  }

  pod_disruption_budget = {
    apiVersion = "policy/v1"
    kind       = "PodDisruptionBudget"
    metadata   = { name = var.name, namespace = var.namespace, labels = local.labels }
    spec = {
      minAvailable = var.replicas - 1
      selector     = { matchLabels = local.selector }
    }
  }

  manifests = [local.deployment, local.service, local.pod_disruption_budget]
}

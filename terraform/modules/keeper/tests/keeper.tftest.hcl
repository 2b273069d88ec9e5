# The rendered Keeper objects, and every validation block refusing what it exists to
# refuse (each failing run breaks exactly one rule; the others hold).

variables {
  namespace     = "ha-serving"
  image         = "ghcr.io/example/ha-serving:0.1.0"
  db_url_secret = { name = "ha-serving-db-url", key = "url" }
  token_secret  = { name = "ha-serving-keeper-token", key = "token" }
}

run "renders_deployment_service_and_budget" {
  command = plan

  assert {
    condition     = [for m in output.manifests : "${m.apiVersion}/${m.kind}"] == ["apps/v1/Deployment", "v1/Service", "policy/v1/PodDisruptionBudget"]
    error_message = "the Keeper is a Deployment, a Service and a PodDisruptionBudget"
  }
  assert {
    condition     = output.deployment.spec.replicas == 3
    error_message = "three replicas by default"
  }
  assert {
    condition     = output.pod_disruption_budget.spec.minAvailable == 2
    error_message = "the budget keeps 2 of 3 available"
  }
  assert {
    condition     = output.pod_disruption_budget.spec.selector == output.deployment.spec.selector && output.service.spec.selector == output.deployment.spec.selector.matchLabels
    error_message = "budget and Service must select the Deployment's pods"
  }
  assert {
    condition = output.deployment.spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution == [{
      labelSelector = output.deployment.spec.selector
      topologyKey   = "kubernetes.io/hostname"
    }]
    error_message = "replicas must be kept apart by required anti-affinity on the node"
  }
  assert {
    condition = {
      for e in output.deployment.spec.template.spec.containers[0].env : e.name => e.valueFrom.secretKeyRef if can(e.valueFrom.secretKeyRef)
      } == {
      HA_SERVING_DB_URL       = { name = "ha-serving-db-url", key = "url" }
      HA_SERVING_KEEPER_TOKEN = { name = "ha-serving-keeper-token", key = "token" }
    }
    error_message = "the store URL and the token come from the Secrets by reference"
  }
  assert {
    condition = alltrue([
      for e in output.deployment.spec.template.spec.containers[0].env : !can(e.value) || !can(regex("(?i)(password|token|secret|db_url)", e.name))
    ])
    error_message = "no credential may be a plain env value"
  }
  assert {
    condition     = !contains(output.deployment.spec.template.spec.containers[0].args, "--db-url")
    error_message = "the store URL must not be on the command line"
  }
  assert {
    condition     = output.service.spec.ports[0].port == 9400 && output.deployment.spec.template.spec.containers[0].ports[0].containerPort == 9400
    error_message = "gRPC on 9400"
  }
  assert {
    condition     = output.address == "ha-serving-keeper.ha-serving.svc.cluster.local:9400"
    error_message = "the address clients use is the Service's"
  }
  assert {
    condition     = !can(output.deployment.spec.template.spec.volumes) && !can(output.deployment.spec.template.spec.containers[0].volumeMounts) && can(output.deployment.spec.template.spec.containers[0].readinessProbe.grpc)
    error_message = "without tls_secret: no volume, and the gRPC health probes"
  }
  assert {
    condition     = [for y in output.manifests_yaml : yamldecode(y)] == output.manifests
    error_message = "manifests_yaml must be the manifests"
  }
}

run "five_replicas_keep_four" {
  command = plan
  variables {
    replicas        = 5
    topology_key    = "topology.kubernetes.io/zone"
    advertised_host = "keeper.example.com"
    port            = 9500
  }

  assert {
    condition     = output.deployment.spec.replicas == 5 && output.pod_disruption_budget.spec.minAvailable == 4
    error_message = "the budget is replicas - 1"
  }
  assert {
    condition     = output.deployment.spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey == "topology.kubernetes.io/zone"
    error_message = "topology_key not used"
  }
  assert {
    condition     = output.address == "keeper.example.com:9500" && contains(output.deployment.spec.template.spec.containers[0].args, "keeper.example.com:9500")
    error_message = "the advertised address is what AppMasters are given"
  }
}

run "tls_mounts_the_secret_and_opens_the_link_port" {
  command = plan
  variables {
    tls_secret = { name = "ha-serving-keeper-tls" }
  }

  assert {
    condition = {
      for e in output.deployment.spec.template.spec.containers[0].env : e.name => e.value if startswith(e.name, "HA_SERVING_TLS_")
      } == {
      HA_SERVING_TLS_CA          = "/etc/ha-serving/tls/ca.crt"
      HA_SERVING_TLS_KEEPER_CERT = "/etc/ha-serving/tls/tls.crt"
      HA_SERVING_TLS_KEEPER_KEY  = "/etc/ha-serving/tls/tls.key"
    }
    error_message = "the Keeper is told the mounted files' paths, never their contents"
  }
  assert {
    condition     = jsonencode(output.deployment.spec.template.spec.volumes) == jsonencode([{ name = "tls", secret = { defaultMode = 288, secretName = "ha-serving-keeper-tls" } }])
    error_message = "the TLS Secret is a volume, 0440"
  }
  assert {
    condition     = jsonencode(output.deployment.spec.template.spec.containers[0].volumeMounts) == jsonencode([{ mountPath = "/etc/ha-serving/tls", name = "tls", readOnly = true }])
    error_message = "mounted read-only where the env says"
  }
  assert {
    condition     = [for p in output.service.spec.ports : p.port] == [9400, 9401] && [for p in output.deployment.spec.template.spec.containers[0].ports : p.containerPort] == [9400, 9401]
    error_message = "the AppMasters' link on port + 1"
  }
  assert {
    condition     = output.deployment.spec.template.spec.containers[0].readinessProbe.tcpSocket.port == 9400 && !can(output.deployment.spec.template.spec.containers[0].livenessProbe.grpc)
    error_message = "built-in gRPC probes speak no TLS: TCP checks instead"
  }
  assert {
    condition     = [for y in output.manifests_yaml : yamldecode(y)] == output.manifests
    error_message = "manifests_yaml must be the manifests"
  }
}

run "rejects_a_bad_tls_secret_name" {
  command = plan
  variables { tls_secret = { name = "Keeper TLS" } }
  expect_failures = [var.tls_secret]
}

run "rejects_a_bad_name" {
  command = plan
  variables { name = "Keeper" }
  expect_failures = [var.name]
}

run "rejects_a_bad_namespace" {
  command = plan
  variables { namespace = "ha_serving" }
  expect_failures = [var.namespace]
}

run "rejects_an_unpinned_image" {
  command = plan
  variables { image = "ha-serving" }
  expect_failures = [var.image]
}

run "rejects_the_latest_tag" {
  command = plan
  variables { image = "ha-serving:latest" }
  expect_failures = [var.image]
}

run "rejects_two_replicas" {
  command = plan
  variables { replicas = 2 }
  expect_failures = [var.replicas]
}

run "rejects_a_privileged_port" {
  command = plan
  variables { port = 443 }
  expect_failures = [var.port]
}

run "rejects_a_bad_db_url_secret_name" {
  command = plan
  variables { db_url_secret = { name = "DB URL", key = "url" } }
  expect_failures = [var.db_url_secret]
}

run "rejects_a_bad_db_url_secret_key" {
  command = plan
  variables { db_url_secret = { name = "db-url", key = "url/1" } }
  expect_failures = [var.db_url_secret]
}

run "rejects_a_bad_token_secret_name" {
  command = plan
  variables { token_secret = { name = "-token", key = "token" } }
  expect_failures = [var.token_secret]
}

run "rejects_a_bad_token_secret_key" {
  command = plan
  variables { token_secret = { name = "token", key = "" } }
  expect_failures = [var.token_secret]
}

run "rejects_a_lease_too_short" {
  command = plan
  variables { lease_ttl_s = 0.5 }
  expect_failures = [var.lease_ttl_s]
}

run "rejects_bad_resources" {
  command = plan
  variables { resources = { cpu = "500", memory = "lots" } }
  expect_failures = [var.resources]
}

run "rejects_a_bad_topology_key" {
  command = plan
  variables { topology_key = "not a label" }
  expect_failures = [var.topology_key]
}

run "rejects_a_bad_service_type" {
  command = plan
  variables { service_type = "NodePort" }
  expect_failures = [var.service_type]
}

run "rejects_an_advertised_host_with_a_port" {
  command = plan
  variables { advertised_host = "keeper.example.com:9400" }
  expect_failures = [var.advertised_host]
}

run "rejects_bad_labels" {
  command = plan
  variables { labels = { "bad key!" = "x" } }
  expect_failures = [var.labels]
}

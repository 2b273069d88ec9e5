# The rendered RayCluster, and every validation block refusing what it exists to refuse
# (each failing run breaks exactly one rule; the others hold).

variables {
  name      = "c1"
  namespace = "ray-c1"
  tier      = "primary"
  zone      = "zone-a"
  image     = "ghcr.io/example/ha-serving:0.1.0"
  worker_groups = [
    { name = "cpu", replicas = 2, min_replicas = 1, max_replicas = 4, cpu = "4", memory = "16Gi" },
    { name = "small", replicas = 0, min_replicas = 0, max_replicas = 2, cpu = "500m", memory = "2Gi" },
  ]
  redis = {
    address         = "redis.ha-serving.svc.cluster.local:6379"
    password_secret = { name = "redis-password", key = "password" }
  }
}

run "renders_a_raycluster" {
  command = plan

  assert {
    condition     = output.manifest.apiVersion == "ray.io/v1" && output.manifest.kind == "RayCluster"
    error_message = "not a ray.io/v1 RayCluster"
  }
  assert {
    condition     = output.manifest.metadata.name == "c1" && output.manifest.metadata.namespace == "ray-c1"
    error_message = "name or namespace not rendered"
  }
  assert {
    condition     = output.manifest.spec.headGroupSpec.rayStartParams["num-cpus"] == "0"
    error_message = "the head must advertise num-cpus 0 (a string, as rayStartParams are)"
  }
  assert {
    condition     = output.manifest.spec.gcsFaultToleranceOptions.redisAddress == "redis.ha-serving.svc.cluster.local:6379"
    error_message = "GCS FT: redisAddress not rendered"
  }
  assert {
    condition = output.manifest.spec.gcsFaultToleranceOptions.redisPassword == {
      valueFrom = { secretKeyRef = { name = "redis-password", key = "password" } }
    }
    error_message = "GCS FT: the password must come from the Secret reference, and only from it"
  }
  assert {
    condition     = output.manifest.spec.gcsFaultToleranceOptions.externalStorageNamespace == "hasrv-ray-c1-c1"
    error_message = "GCS FT: the default storage namespace is hasrv-<namespace>-<name>"
  }
  assert {
    condition = alltrue([
      for l in [
        output.manifest.metadata.labels,
        output.manifest.spec.headGroupSpec.template.metadata.labels,
        output.manifest.spec.workerGroupSpecs[0].template.metadata.labels,
      ] : l["ha-serving.io/cluster"] == "c1" && l["ha-serving.io/tier"] == "primary" && l["ha-serving.io/zone"] == "zone-a"
    ])
    error_message = "the object and its pods must carry the cluster's name, tier and zone"
  }
  assert {
    condition     = [for g in output.manifest.spec.workerGroupSpecs : [g.groupName, g.replicas, g.minReplicas, g.maxReplicas]] == [["cpu", 2, 1, 4], ["small", 0, 0, 2]]
    error_message = "worker groups not rendered as given"
  }
  assert {
    condition     = output.manifest.spec.workerGroupSpecs[1].template.spec.containers[0].resources.limits == { cpu = "500m", memory = "2Gi" }
    error_message = "worker resources not rendered"
  }
  assert {
    condition     = output.manifest.spec.headGroupSpec.template.spec.nodeSelector == { "topology.kubernetes.io/zone" = "zone-a" }
    error_message = "pods must be pinned to the zone by default"
  }
  assert {
    condition     = output.gcs_address == "c1-head-svc.ray-c1.svc.cluster.local:6379" && output.dashboard_url == "http://c1-head-svc.ray-c1.svc.cluster.local:8265"
    error_message = "the head's addresses are KubeRay's head Service, ports 6379 and 8265"
  }
  assert {
    condition     = yamldecode(output.manifest_yaml) == output.manifest
    error_message = "manifest_yaml must be the manifest"
  }
  assert {
    condition     = output.register_args == ["cluster", "register", "c1", "--gcs", "c1-head-svc.ray-c1.svc.cluster.local:6379", "--dashboard", "http://c1-head-svc.ray-c1.svc.cluster.local:8265", "--tier", "primary", "--zone", "zone-a"]
    error_message = "register_args must be `ha-serving cluster register`'s argv"
  }
}

run "options_change_what_they_say" {
  command = plan
  variables {
    pin_to_zone                = false
    external_storage_namespace = "shared-ns"
    head_address               = "c1.ray.example.com"
    head_service_type          = "LoadBalancer"
    labels                     = { team = "serving", "ha-serving.io/tier" = "overridden" }
  }

  assert {
    condition     = output.manifest.spec.headGroupSpec.template.spec.nodeSelector == {}
    error_message = "pin_to_zone = false must leave scheduling alone"
  }
  assert {
    condition     = output.manifest.spec.gcsFaultToleranceOptions.externalStorageNamespace == "shared-ns"
    error_message = "external_storage_namespace not used"
  }
  assert {
    condition     = output.gcs_address == "c1.ray.example.com:6379" && output.manifest.spec.headGroupSpec.serviceType == "LoadBalancer"
    error_message = "head_address / head_service_type not used"
  }
  assert {
    condition     = output.manifest.metadata.labels.team == "serving" && output.manifest.metadata.labels["ha-serving.io/tier"] == "primary"
    error_message = "extra labels are added, but the module's own labels win"
  }
}

run "rejects_a_bad_name" {
  command = plan
  variables { name = "Cluster_1" }
  expect_failures = [var.name]
}

run "rejects_a_bad_namespace" {
  command = plan
  variables { namespace = "-ray" }
  expect_failures = [var.namespace]
}

run "rejects_a_bad_tier" {
  command = plan
  variables { tier = "Primary" }
  expect_failures = [var.tier]
}

run "rejects_a_bad_zone" {
  command = plan
  variables { zone = "zone a" }
  expect_failures = [var.zone]
}

run "rejects_an_unpinned_image" {
  command = plan
  variables { image = "ghcr.io/example/ha-serving" }
  expect_failures = [var.image]
}

run "rejects_the_latest_tag" {
  command = plan
  variables { image = "ghcr.io/example/ha-serving:latest" }
  expect_failures = [var.image]
}

run "rejects_a_bad_ray_version" {
  command = plan
  variables { ray_version = "2.60" }
  expect_failures = [var.ray_version]
}

run "rejects_bad_head_resources" {
  command = plan
  variables { head = { cpu = "two", memory = "8Gi" } }
  expect_failures = [var.head]
}

run "rejects_no_worker_group" {
  command = plan
  variables { worker_groups = [] }
  expect_failures = [var.worker_groups]
}

run "rejects_a_bad_worker_group_name" {
  command = plan
  variables { worker_groups = [{ name = "CPU", replicas = 1, min_replicas = 1, max_replicas = 1, cpu = "1", memory = "1Gi" }] }
  expect_failures = [var.worker_groups]
}

run "rejects_duplicate_worker_group_names" {
  command = plan
  variables {
    worker_groups = [
      { name = "cpu", replicas = 1, min_replicas = 1, max_replicas = 1, cpu = "1", memory = "1Gi" },
      { name = "cpu", replicas = 1, min_replicas = 1, max_replicas = 1, cpu = "1", memory = "1Gi" },
    ]
  }
  expect_failures = [var.worker_groups]
}

run "rejects_fractional_replicas" {
  command = plan
  variables { worker_groups = [{ name = "cpu", replicas = 1.5, min_replicas = 1, max_replicas = 2, cpu = "1", memory = "1Gi" }] }
  expect_failures = [var.worker_groups]
}

run "rejects_replicas_outside_min_max" {
  command = plan
  variables { worker_groups = [{ name = "cpu", replicas = 5, min_replicas = 1, max_replicas = 4, cpu = "1", memory = "1Gi" }] }
  expect_failures = [var.worker_groups]
}

run "rejects_bad_worker_resources" {
  command = plan
  variables { worker_groups = [{ name = "cpu", replicas = 1, min_replicas = 1, max_replicas = 1, cpu = "1", memory = "1 GB" }] }
  expect_failures = [var.worker_groups]
}

run "rejects_a_bad_redis_address" {
  command = plan
  variables {
    redis = { address = "redis:99999", password_secret = { name = "redis-password", key = "password" } }
  }
  expect_failures = [var.redis]
}

run "rejects_a_bad_redis_secret_name" {
  command = plan
  variables {
    redis = { address = "redis:6379", password_secret = { name = "Redis_Password", key = "password" } }
  }
  expect_failures = [var.redis]
}

run "rejects_a_bad_redis_secret_key" {
  command = plan
  variables {
    redis = { address = "redis:6379", password_secret = { name = "redis-password", key = "pass word" } }
  }
  expect_failures = [var.redis]
}

run "rejects_a_bad_storage_namespace" {
  command = plan
  variables { external_storage_namespace = "ns with spaces" }
  expect_failures = [var.external_storage_namespace]
}

run "rejects_a_bad_head_service_type" {
  command = plan
  variables { head_service_type = "ExternalName" }
  expect_failures = [var.head_service_type]
}

run "rejects_a_head_address_with_a_port" {
  command = plan
  variables { head_address = "c1.example.com:6379" }
  expect_failures = [var.head_address]
}

run "rejects_bad_labels" {
  command = plan
  variables { labels = { "team" = "not a label value" } }
  expect_failures = [var.labels]
}

# The composition (3 clusters in 2 tiers, Keeper, store), and every validation block of
# this root refusing what it exists to refuse (each failing run breaks exactly one rule).

variables {
  image = "ghcr.io/example/ha-serving:0.1.0"
}

run "three_clusters_in_two_tiers" {
  command = plan

  assert {
    condition     = sort(keys(output.clusters)) == tolist(["c1", "c2", "c3"]) && length(distinct([for c in output.clusters : c.tier])) == 2
    error_message = "by default: three clusters in two tiers"
  }
  assert {
    condition     = [for c in output.manifests.c1 : c.kind] == ["RayCluster"] && output.manifests.c3[0].metadata.labels["ha-serving.io/tier"] == "secondary"
    error_message = "each cluster's RayCluster is rendered, labelled with its tier"
  }
  assert {
    condition     = [for m in output.manifests["control-plane"] : m.kind] == ["StatefulSet", "Service", "Deployment", "Service", "PodDisruptionBudget"]
    error_message = "the control plane: the store (StatefulSet + headless Service), then the Keeper"
  }
  assert {
    condition = [
      for e in output.manifests["control-plane"][2].spec.template.spec.containers[0].env : e.valueFrom.secretKeyRef if e.name == "HA_SERVING_DB_URL"
    ] == [output.db.url_secret]
    error_message = "the Keeper reads the store URL from the state-db module's Secret"
  }
  assert {
    condition     = output.keepers == ["ha-serving-keeper.ha-serving.svc.cluster.local:9400"] && output.discovery.keepers == output.keepers
    error_message = "clients discover through the Keeper Service"
  }
  assert {
    condition     = output.register_commands[0] == "ha-serving cluster register c1 --gcs c1-head-svc.ray-c1.svc.cluster.local:6379 --dashboard http://c1-head-svc.ray-c1.svc.cluster.local:8265 --tier primary --zone zone-a"
    error_message = "register commands match `ha-serving cluster register`"
  }
  assert {
    condition     = alltrue([for name, ys in output.manifests_yaml : [for y in ys : yamldecode(y)] == output.manifests[name]])
    error_message = "manifests_yaml must be the manifests"
  }
}

run "an_external_store_renders_no_db_objects" {
  command = plan
  variables {
    db_mode          = "external"
    db_external_host = "mysql.example.internal"
    clusters = {
      east = { tier = "online", zone = "us-east-1a", namespace = "ray", head_address = "east.ray.example.com" }
    }
  }

  assert {
    condition     = [for m in output.manifests["control-plane"] : m.kind] == ["Deployment", "Service", "PodDisruptionBudget"]
    error_message = "an external store needs no objects"
  }
  assert {
    condition     = output.db.host == "mysql.example.internal" && output.clusters.east.gcs_address == "east.ray.example.com:6379"
    error_message = "external store host and head_address are used"
  }
}

run "rejects_an_unpinned_image" {
  command = plan
  variables { image = "ghcr.io/example/ha-serving:latest" }
  expect_failures = [var.image]
}

run "rejects_a_bad_namespace" {
  command = plan
  variables { namespace = "HA" }
  expect_failures = [var.namespace]
}

run "rejects_no_cluster" {
  command = plan
  variables { clusters = {} }
  expect_failures = [var.clusters]
}

run "rejects_a_bad_cluster_name" {
  command = plan
  variables { clusters = { C1 = { tier = "primary", zone = "zone-a" } } }
  expect_failures = [var.clusters]
}

run "rejects_a_bad_tier" {
  command = plan
  variables { clusters = { c1 = { tier = "Primary", zone = "zone-a" } } }
  expect_failures = [var.clusters]
}

run "rejects_a_tier_in_one_zone" {
  command = plan
  variables {
    clusters = {
      c1 = { tier = "primary", zone = "zone-a" }
      c2 = { tier = "primary", zone = "zone-a" }
    }
  }
  expect_failures = [var.clusters]
}

run "rejects_a_bad_db_mode" {
  command = plan
  variables { db_mode = "sqlite" }
  expect_failures = [var.db_mode]
}

run "rejects_a_bad_secret_ref" {
  command = plan
  variables {
    secret_refs = {
      keeper_token     = { name = "Keeper Token", key = "token" }
      db_url           = { name = "ha-serving-db-url", key = "url" }
      db_password      = { name = "ha-serving-db", key = "password" }
      db_root_password = { name = "ha-serving-db", key = "root-password" }
    }
  }
  expect_failures = [var.secret_refs]
}

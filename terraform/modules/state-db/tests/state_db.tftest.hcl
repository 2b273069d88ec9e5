# Both modes rendered, and every validation block refusing what it exists to refuse
# (each failing run breaks exactly one rule; the others hold).

variables {
  namespace       = "ha-serving"
  external_host   = "mysql.example.internal"
  password_secret = { name = "ha-serving-db", key = "password" }
  url_secret      = { name = "ha-serving-db-url", key = "url" }
}

run "external_renders_nothing_but_the_endpoint" {
  command = plan

  assert {
    condition     = output.manifests == [] && output.manifests_yaml == []
    error_message = "an external server needs no objects"
  }
  assert {
    condition     = output.host == "mysql.example.internal" && output.port == 3306
    error_message = "the endpoint is the one given"
  }
  assert {
    condition     = output.url_redacted == "mysql+pymysql://hasrv:***@mysql.example.internal:3306/ha_serving"
    error_message = "url_redacted must name user, host, port and database, and mask the password"
  }
  assert {
    condition     = output.url_secret == { name = "ha-serving-db-url", key = "url" }
    error_message = "url_secret is passed through"
  }
}

run "in_cluster_renders_a_statefulset_and_headless_service" {
  command = plan
  variables {
    mode                 = "in-cluster"
    external_host        = null
    root_password_secret = { name = "ha-serving-db", key = "root-password" }
    storage              = { size = "20Gi", storage_class = "fast-ssd" }
  }

  assert {
    condition     = [for m in output.manifests : "${m.apiVersion}/${m.kind}"] == ["apps/v1/StatefulSet", "v1/Service"]
    error_message = "in-cluster: a StatefulSet and its Service"
  }
  assert {
    condition     = output.manifests[1].spec.clusterIP == "None" && output.manifests[0].spec.serviceName == output.manifests[1].metadata.name
    error_message = "the Service must be headless and be the StatefulSet's serviceName"
  }
  assert {
    condition = {
      for e in output.manifests[0].spec.template.spec.containers[0].env : e.name => e.valueFrom.secretKeyRef if can(e.valueFrom.secretKeyRef)
      } == {
      MARIADB_PASSWORD      = { name = "ha-serving-db", key = "password" }
      MARIADB_ROOT_PASSWORD = { name = "ha-serving-db", key = "root-password" }
    }
    error_message = "both passwords come from the Secret by reference"
  }
  assert {
    condition = alltrue([
      for e in output.manifests[0].spec.template.spec.containers[0].env : !can(e.value) || !can(regex("(?i)password", e.name))
    ])
    error_message = "no password may be a plain env value"
  }
  assert {
    condition     = output.manifests[0].spec.volumeClaimTemplates[0].spec.resources.requests.storage == "20Gi" && output.manifests[0].spec.volumeClaimTemplates[0].spec.storageClassName == "fast-ssd"
    error_message = "storage not rendered"
  }
  assert {
    condition     = output.host == "ha-serving-db.ha-serving.svc.cluster.local" && output.port == 3306
    error_message = "in-cluster, the Keepers connect to the headless Service"
  }
}

run "in_cluster_without_a_storage_class_uses_the_default" {
  command = plan
  variables {
    mode                 = "in-cluster"
    root_password_secret = { name = "ha-serving-db", key = "root-password" }
  }

  assert {
    condition     = !can(output.manifests[0].spec.volumeClaimTemplates[0].spec.storageClassName)
    error_message = "no storage class given: none rendered"
  }
}

run "rejects_a_bad_mode" {
  command = plan
  variables { mode = "sqlite" }
  expect_failures = [var.mode]
}

run "rejects_a_bad_name" {
  command = plan
  variables { name = "db_1" }
  expect_failures = [var.name]
}

run "rejects_a_bad_namespace" {
  command = plan
  variables { namespace = "Ha" }
  expect_failures = [var.namespace]
}

run "rejects_a_bad_database" {
  command = plan
  variables { database = "ha-serving" }
  expect_failures = [var.database]
}

run "rejects_root_as_the_user" {
  command = plan
  variables { username = "root" }
  expect_failures = [var.username]
}

run "rejects_external_without_a_host" {
  command = plan
  variables { external_host = null }
  expect_failures = [var.external_host]
}

run "rejects_a_host_with_a_port" {
  command = plan
  variables { external_host = "mysql:3306" }
  expect_failures = [var.external_host]
}

run "rejects_a_bad_port" {
  command = plan
  variables { external_port = 0 }
  expect_failures = [var.external_port]
}

run "rejects_a_bad_password_secret_name" {
  command = plan
  variables { password_secret = { name = "DB", key = "password" } }
  expect_failures = [var.password_secret]
}

run "rejects_a_bad_password_secret_key" {
  command = plan
  variables { password_secret = { name = "db", key = "pass word" } }
  expect_failures = [var.password_secret]
}

run "rejects_in_cluster_without_a_root_password_secret" {
  command = plan
  variables { mode = "in-cluster" }
  expect_failures = [var.root_password_secret]
}

run "rejects_a_bad_root_password_secret" {
  command = plan
  variables { root_password_secret = { name = "db", key = "" } }
  expect_failures = [var.root_password_secret]
}

run "rejects_a_bad_url_secret_name" {
  command = plan
  variables { url_secret = { name = "db url", key = "url" } }
  expect_failures = [var.url_secret]
}

run "rejects_a_bad_url_secret_key" {
  command = plan
  variables { url_secret = { name = "db-url", key = "url?" } }
  expect_failures = [var.url_secret]
}

run "rejects_an_unpinned_image" {
  command = plan
  variables { image = "mariadb:latest" }
  expect_failures = [var.image]
}

run "rejects_a_bad_storage_size" {
  command = plan
  variables { storage = { size = "10G" } }
  expect_failures = [var.storage]
}

run "rejects_bad_resources" {
  command = plan
  variables { resources = { cpu = "1 core", memory = "2Gi" } }
  expect_failures = [var.resources]
}

run "rejects_bad_labels" {
  command = plan
  variables { labels = { team = "-x" } }
  expect_failures = [var.labels]
}

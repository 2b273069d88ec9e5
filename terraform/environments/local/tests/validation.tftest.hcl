# Plan only (nothing runs): the defaults, and every validation block refusing what it
# exists to refuse (each failing run breaks exactly one rule; the others hold).

run "defaults_point_into_this_checkout" {
  command = plan

  assert {
    condition     = terraform_data.stack.input.repo_root == abspath("${path.module}/../../..")
    error_message = "repo_root defaults to the checkout holding this directory"
  }
  assert {
    condition     = terraform_data.stack.input.bin == "${terraform_data.stack.input.repo_root}/.venv/bin/ha-serving"
    error_message = "the binary defaults to the checkout's venv"
  }
  assert {
    condition     = terraform_data.stack.input.run_dir == "${terraform_data.stack.input.repo_root}/.run-terraform"
    error_message = "the run dir defaults to one apart from `make up`'s .run"
  }
  assert {
    condition     = terraform_data.stack.triggers_replace.settings.HA_SERVING_PORT_BASE == ""
    error_message = "unset ports stay at ha-serving's defaults"
  }
}

run "settings_reach_the_environment" {
  command = plan
  variables {
    clusters            = 3
    workers_per_cluster = 2
    port_base           = 12000
    keeper_port         = 9410
    db_url              = "mysql+pymysql://hasrv:not-in-state@db.example:3306/ha_serving"
  }

  assert {
    condition     = terraform_data.stack.triggers_replace.clusters == 3 && terraform_data.stack.triggers_replace.workers_per_cluster == 2
    error_message = "clusters / workers not planned"
  }
  assert {
    condition     = terraform_data.stack.triggers_replace.settings.HA_SERVING_PORT_BASE == "12000" && terraform_data.stack.triggers_replace.settings.HA_SERVING_KEEPER_PORT == "9410"
    error_message = "ports must reach the environment as text"
  }
  assert {
    condition     = !strcontains(jsonencode(terraform_data.stack.triggers_replace), "not-in-state") && !strcontains(jsonencode(terraform_data.stack.input), "not-in-state")
    error_message = "the DB URL must not be stored in the resource"
  }
}

run "rejects_a_relative_repo_root" {
  command = plan
  variables { repo_root = "work/main" }
  expect_failures = [var.repo_root]
}

run "rejects_a_relative_binary" {
  command = plan
  variables { ha_serving_bin = ".venv/bin/ha-serving" }
  expect_failures = [var.ha_serving_bin]
}

run "rejects_a_relative_run_dir" {
  command = plan
  variables { run_dir = ".run" }
  expect_failures = [var.run_dir]
}

run "rejects_ten_clusters" {
  command = plan
  variables { clusters = 10 }
  expect_failures = [var.clusters]
}

run "rejects_no_workers" {
  command = plan
  variables { workers_per_cluster = 0 }
  expect_failures = [var.workers_per_cluster]
}

run "rejects_a_non_sqlalchemy_db_url" {
  command = plan
  variables { db_url = "postgres://u:p@db/x" }
  expect_failures = [var.db_url]
}

run "rejects_a_port_base_above_21000" {
  command = plan
  variables { port_base = 30000 }
  expect_failures = [var.port_base]
}

run "rejects_a_privileged_keeper_port" {
  command = plan
  variables { keeper_port = 80 }
  expect_failures = [var.keeper_port]
}

run "rejects_a_fractional_db_port" {
  command = plan
  variables { db_port = 9306.5 }
  expect_failures = [var.db_port]
}

run "rejects_a_redis_port_out_of_range" {
  command = plan
  variables { redis_port = 70000 }
  expect_failures = [var.redis_port]
}

# HEAVY: really brings the local stack up (MariaDB, Redis, Ray clusters, 3 Keepers),
# checks what the outputs report, and is taken down again by the test framework
# (terraform_data.stack's destroy provisioner: `ha-serving down`). Several minutes and
# most of a 2-core machine: run it alone, with `make tf-test TF_APPLY=1`, which gives
# it a fresh run directory (TF_VAR_run_dir).
#
# Ports apart from `make up`'s defaults, so it runs beside a developer's stack (with
# one worker per cluster, neither stack's port blocks overlap the other's).

variables {
  clusters            = 2
  workers_per_cluster = 1
  port_base           = 10500
  keeper_port         = 9410
  db_port             = 9316
  redis_port          = 9389
}

run "stack_up" {
  command = apply

  assert {
    condition     = length(output.keeper_addresses) == 3 && alltrue([for a in output.keeper_addresses : endswith(a, ":9410")])
    error_message = "three Keepers on port 9410: ${jsonencode(output.keeper_addresses)}"
  }
  assert {
    condition     = alltrue([for k in output.status.keepers : k.alive]) && length([for k in output.status.keepers : k if k.leader]) == 1
    error_message = "every Keeper alive, exactly one leading: ${output.status_json}"
  }
  assert {
    condition     = length(output.status.clusters) == 2 && alltrue([for c in output.status.clusters : c.gcs_alive && length(c.nodes) == 2 && alltrue([for n in c.nodes : n.alive])])
    error_message = "two clusters, each a live head and worker: ${output.status_json}"
  }
  assert {
    condition     = output.status.db.alive && output.status.redis.alive && output.status.redis.gcs_fault_tolerance
    error_message = "DB and Redis (GCS fault tolerance) alive: ${output.status_json}"
  }
  assert {
    condition     = sort(keys(output.clusters)) == tolist(["a", "b"]) && alltrue([for c in output.status.clusters : output.clusters[c.name].gcs_address == c.gcs_address])
    error_message = "the registry lists the clusters at the GCS addresses status shows: ${jsonencode(output.clusters)}"
  }
  assert {
    condition     = alltrue([for name, c in output.clusters : startswith(c.dashboard_url, "http://127.0.") && c.zone == "zone-${name}"])
    error_message = "each cluster registered with its dashboard URL and zone: ${jsonencode(output.clusters)}"
  }
  assert {
    condition     = output.status.run_dir == output.run_dir
    error_message = "status is the stack of this run dir"
  }
}

# ha-serving: local HA serving stack on Ray. `make up` / `make test` on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLUSTERS ?= 2
PYTEST_ARGS ?=

.PHONY: venv up down status demo test test-unit test-integration test-security lint fmt clean loadtest

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

## up: private DB + Redis + $(CLUSTERS) local Ray clusters (CLUSTERS=3 make up)
up: venv
	$(BIN)/ha-serving up --clusters '$(CLUSTERS)'

## down: stop exactly what `up` started
down: venv
	$(BIN)/ha-serving down

status: venv
	$(BIN)/ha-serving status

## demo: the HA story: echo deployed through the Keepers on both clusters, SDK calls while
## cluster b is killed whole and restarted, traffic per second live, then a summary
demo: venv
	$(BIN)/python -m loadtest.demo

## test: unit + integration tests (real MariaDB, real Ray clusters), then the 500-instance
## rolling-update load test against its SLO (its report summary ends the output)
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory loadtest SCENARIO=rolling-update-500

test-unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

## test-security: on a stack of its own with a service deployed through the Keepers, no
## secret of <run_dir>/secrets/ in the run dir, Ray's logs, any command line (but Ray's
## Redis password on its heads), the stack's environments, Ray's Job/state APIs, the store
## or `status`; each credential's scope on the real Keepers (tests/security)
test-security: venv
	$(BIN)/python -m pytest tests/security $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: down
	rm -rf .run

## loadtest: 500 instances across 2 clusters, rolling update under Locust load, SLA report
## (stands the stack up if needed; exit status = SLO verdict)
SCENARIO ?= rolling-update-500
loadtest: venv
	$(BIN)/python -m pip install -q -e '.[loadtest]'
	$(BIN)/python -m loadtest.run $(SCENARIO)

## autoscale-scenario: issue 13's proof. SCENARIO=step-5x (default here), diurnal or noise:
## four copies of echo on one stack (static for the peak, a Ray-Serve-like baseline, ours
## reactive, ours predictive), the same seeded Locust trace at each from one start; reports
## in loadtest/reports/autoscale-<scenario>-<timestamp>/ (own stack if none is up; exit
## status = the scenario's goals met). AUTOSCALE_ARGS passes more: --compress 2 (a 10 min
## day), --rate/--users (the 1x load), --seed, --history live... (`python -m
## loadtest.autoscale --help`). Trace 7 / 20 / 36 min + stack and deploys; bounded by
## --max-minutes (default: the trace + 15 min). `make loadtest SCENARIO=step-5x` runs it too.
AUTOSCALE_ARGS ?=
AUTOSCALE_SCENARIO = $(if $(filter file,$(origin SCENARIO)),step-5x,$(SCENARIO))
.PHONY: autoscale-scenario
autoscale-scenario: venv
	$(BIN)/python -m pip install -q -e '.[loadtest]'
	$(BIN)/python -m loadtest.autoscale '$(AUTOSCALE_SCENARIO)' $(AUTOSCALE_ARGS)

## proto: regenerate the data-plane stubs after editing ha_serving/proto/serving.proto
proto: venv
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. ha_serving/proto/serving.proto ha_serving/proto/keeper.proto ha_serving/proto/direct.proto

## docs: regenerate docs/settings.md from the settings tree (ha_serving/_settings.py);
## tests/unit/test_docs_settings.py fails while it is out of date
.PHONY: docs
docs: venv
	$(BIN)/python -m tools.settings_doc

## bench: ha_serving's proxy vs Ray Serve's gRPC proxy, same echo, one run (own temp stack,
## ~1.5 min). Installs Ray Serve's Python deps on first use, but not uvicorn[standard]'s
## uvloop: once importable, Ray makes it the event loop of every async actor, ours included.
SERVE_DEPS := 'starlette>=1.0.1' 'fastapi>=0.133.0' 'uvicorn>=0.26.0' watchfiles \
	grpcio-reflection mmh3 'numpy>=1.20' jinja2
BENCH_ARGS ?=
.PHONY: bench
bench: venv
	@$(BIN)/python -c 'import ray.serve' 2>/dev/null || $(BIN)/python -m pip install -q $(SERVE_DEPS)
	$(BIN)/python bench/grpc_vs_serve.py $(BENCH_ARGS)

## soak-recovery: kill and restart cluster b ROUNDS times under constant client load,
## printing per round kill -> registered -> serving again and failed calls (own stack if
## none is up; exit status = every round recovered within BOUND_S, nothing lost)
ROUNDS ?= 20
BOUND_S ?= 60
.PHONY: soak-recovery
soak-recovery: venv
	$(BIN)/python -m loadtest.soak_recovery --rounds $(ROUNDS) --bound-s $(BOUND_S)

## chaos: the fault-drill catalogue (Chaos Toolkit experiments in chaos/drills/) under
## constant client load and control operations: a control run, then each drill; journals,
## history, summary.md and timeline.png in chaos/reports/<run>/ (own stack if none is up;
## exit status = every drill passed with 0 violations). DRILL=kill-keeper-leader runs one;
## SET=smoke runs the smoke set CI runs. MODE=random SEED=7 DURATION=600: faults drawn
## from the catalogue at random (seeded: the same SEED, the same plan; printed first), one
## after another against one stack for DURATION seconds, judged over the whole run.
DRILL ?=
MODE ?= catalogue
SET ?= all
SEED ?=
DURATION ?= 600
.PHONY: chaos
chaos: venv
	$(BIN)/python -m pip install -q -e '.[chaos]'
	$(BIN)/python -m chaos.run --mode '$(MODE)' --set '$(SET)' $(if $(DRILL),--drill '$(DRILL)') \
		$(if $(SEED),--seed '$(SEED)') --duration-s '$(DURATION)'

## tf-test: the Terraform packaging (terraform/), offline: fmt, init + validate + test of
## every provider-free module and environment, then the Python policy and render tests
## (HCL of the provider wrappers; rendered manifests against Kubernetes' and KubeRay's
## schemas; --noconftest: they need no fixture of tests/, nor its port slot). TF_APPLY=1
## also runs environments/local's apply test: a real stack up, its status checked, and
## down again (minutes; run it alone).
TF_APPLY ?=
TF_PYTESTS := tests/unit/test_terraform_policy.py tests/unit/test_terraform_render.py \
	tests/unit/test_terraform_local.py
.PHONY: tf-test
tf-test: venv
	TF_APPLY='$(TF_APPLY)' bash terraform/check.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider --noconftest $(TF_PYTESTS)

## scale-sim: the control-plane scale simulation (issue #16, docs/scale.md): real Keeper
## processes (leadership, reconciler, link, Watch) on a private MariaDB at 127.0.120.1,
## SIM_CLUSTERS simulated clusters of real AppMaster cores over a timed fake runtime,
## discovery watchers; scenarios steady, release-wave, cluster-loss, leader-failover (or
## all); report in sim/reports/<timestamp>/. SIM_ARGS passes more (--profile, --hold-s,
## --time-scale, --wave-fraction...; `python -m sim run --help`).
SIM_SCENARIO ?= all
SIM_SERVICES ?= 20
SIM_CLUSTERS ?= 3
SIM_INSTANCES ?= 10
SIM_ARGS ?=
.PHONY: scale-sim scale-sim-growth
scale-sim: venv
	$(BIN)/python -m sim run --scenario '$(SIM_SCENARIO)' --services '$(SIM_SERVICES)' \
		--clusters '$(SIM_CLUSTERS)' --instances '$(SIM_INSTANCES)' $(SIM_ARGS)

## scale-sim-growth: steady runs as S doubles from SIM_SERVICES (I fixed), then as I
## doubles from SIM_INSTANCES (S fixed), SIM_DOUBLINGS times each: table + log-log plot
SIM_DOUBLINGS ?= 2
scale-sim-growth: venv
	$(BIN)/python -m sim growth --services '$(SIM_SERVICES)' --instances '$(SIM_INSTANCES)' \
		--clusters '$(SIM_CLUSTERS)' --doublings '$(SIM_DOUBLINGS)' $(SIM_ARGS)

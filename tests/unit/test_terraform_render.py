"""The objects terraform/ renders, validated as the API servers would take them.

environments/kubernetes-multi (which composes every render module) is planned offline,
in both store modes, and its rendered objects are checked: the Kubernetes core objects
with kubernetes-validate against Kubernetes' own OpenAPI schemas (strict: unknown
fields fail), the RayClusters against terraform/schemas/raycluster.schema.json (KubeRay's
API) and their pod templates against Kubernetes' PodTemplateSpec; and no credential is
a plain value anywhere. The validators are shown to reject broken objects, so a pass
means something.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.terraform_tools import TERRAFORM_DIR, init, needs_terraform, planned_outputs

pytestmark = needs_terraform

K8S_VERSION = "1.31.0"
"""The oldest Kubernetes minor still in standard support at the big clouds' managed
services when this was written; kubernetes-validate bundles its schemas. The objects
use nothing newer (gRPC probes: 1.27, policy/v1 budgets: 1.21)."""
CORE_KINDS = {"Deployment", "Service", "Secret", "PodDisruptionBudget", "StatefulSet"}
ROOT = TERRAFORM_DIR / "environments" / "kubernetes-multi"
SCHEMA = TERRAFORM_DIR / "schemas" / "raycluster.schema.json"
IMAGE = "ghcr.io/example/ha-serving:0.1.0"
SECRET_NAME = re.compile(r"(?i)(password|passwd|token|secret|credential|db_url|api_key)")


def _tree() -> set[Path]:
    return set(TERRAFORM_DIR.rglob("*"))


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], set[Path]]:
    """Outputs of the root in "in-cluster" (the default) and "external" store modes, and
    whatever the planning added under terraform/ (it must add nothing)."""
    work = tmp_path_factory.mktemp("kubernetes-multi")
    before = _tree()
    env = init(ROOT, work / "data")
    outputs = {
        "in-cluster": planned_outputs(ROOT, env, work / "in-cluster", {"image": IMAGE}),
        "external": planned_outputs(
            ROOT,
            env,
            work / "external",
            {
                "image": IMAGE,
                "db_mode": "external",
                "db_external_host": "mysql.example.internal",
                "clusters": {
                    "east": {"tier": "online", "zone": "us-east-1a"},
                    "west": {"tier": "online", "zone": "us-west-2a", "namespace": "ray"},
                },
            },
        ),
    }
    return outputs, _tree() - before


@pytest.fixture
def rendered(planned: tuple[dict[str, Any], set[Path]]) -> dict[str, dict[str, Any]]:
    return planned[0]


def _objects(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    return [obj for group in outputs["manifests"].values() for obj in group]


def _all_objects(rendered: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for outputs in rendered.values():
        yield from _objects(outputs)


def _k8s_problem(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def _schema() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _ray_problems(obj: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in _schema().iter_errors(obj)
    ]


def _pod_templates(raycluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = raycluster["spec"]
    return [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec.get("workerGroupSpecs", [])
    ]


def _as_pod_template(template: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """A RayCluster's pod template as a core PodTemplate object, for kubernetes-validate."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "template": template,
    }


# --- what is rendered -------------------------------------------------------------------


def test_the_expected_objects_are_rendered(rendered: dict[str, dict[str, Any]]) -> None:
    kinds = {mode: sorted(o["kind"] for o in _objects(out)) for mode, out in rendered.items()}
    assert kinds["in-cluster"] == sorted(
        ["RayCluster"] * 3
        + ["StatefulSet", "Service", "Deployment", "Service", "PodDisruptionBudget"]
    )
    assert kinds["external"] == sorted(
        ["RayCluster"] * 2 + ["Deployment", "Service", "PodDisruptionBudget"]
    )


def test_no_secret_object_is_rendered(rendered: dict[str, dict[str, Any]]) -> None:
    """Secrets are made outside Terraform (its state would keep them in plain text);
    the objects only reference them."""
    assert [o for o in _all_objects(rendered) if o["kind"] == "Secret"] == []


# --- Kubernetes core objects -----------------------------------------------------------


def test_core_objects_are_valid_kubernetes(rendered: dict[str, dict[str, Any]]) -> None:
    checked = 0
    problems = {}
    for obj in _all_objects(rendered):
        if obj["kind"] not in CORE_KINDS:
            continue
        checked += 1
        problem = _k8s_problem(obj)
        if problem is not None:
            problems[f"{obj['kind']}/{obj['metadata']['name']}"] = problem
    assert problems == {}
    assert checked == 8  # 5 in-cluster, 3 external: none was skipped


def test_raycluster_pod_templates_are_valid_kubernetes(
    rendered: dict[str, dict[str, Any]],
) -> None:
    problems = {}
    for obj in _all_objects(rendered):
        if obj["kind"] != "RayCluster":
            continue
        for i, template in enumerate(_pod_templates(obj)):
            meta = obj["metadata"]
            pod = _as_pod_template(template, f"{meta['name']}-{i}", meta["namespace"])
            problem = _k8s_problem(pod)
            if problem is not None:
                problems[f"{meta['name']} template {i}"] = problem
    assert problems == {}


def test_the_validator_rejects_broken_core_objects(rendered: dict[str, dict[str, Any]]) -> None:
    deployment = next(o for o in _objects(rendered["in-cluster"]) if o["kind"] == "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    assert _k8s_problem(typo) is not None
    bad_port = copy.deepcopy(deployment)
    bad_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    assert _k8s_problem(bad_port) is not None
    budget = next(o for o in _objects(rendered["in-cluster"]) if o["kind"] == "PodDisruptionBudget")
    wrong = copy.deepcopy(budget)
    wrong["spec"]["minAvailable"] = [2]
    assert _k8s_problem(wrong) is not None


# --- RayClusters ------------------------------------------------------------------------


def test_rayclusters_match_kuberay_api(rendered: dict[str, dict[str, Any]]) -> None:
    rayclusters = [o for o in _all_objects(rendered) if o["kind"] == "RayCluster"]
    assert len(rayclusters) == 5
    assert {o["metadata"]["name"]: _ray_problems(o) for o in rayclusters} == {
        o["metadata"]["name"]: [] for o in rayclusters
    }


def test_rayclusters_are_ha_as_rendered(rendered: dict[str, dict[str, Any]]) -> None:
    """Head without user work, GCS fault tolerance with the password by reference and a
    storage namespace of its own per cluster, and the cluster's identity on every pod."""
    outputs = rendered["in-cluster"]
    seen_namespaces = set()
    for name, group in outputs["manifests"].items():
        if name == "control-plane":
            continue
        [rc] = group
        spec = rc["spec"]
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        ft = spec["gcsFaultToleranceOptions"]
        assert set(ft["redisPassword"]) == {"valueFrom"}
        assert set(ft["redisPassword"]["valueFrom"]["secretKeyRef"]) == {"name", "key"}
        seen_namespaces.add(ft["externalStorageNamespace"])
        registration = outputs["clusters"][name]
        for template in _pod_templates(rc):
            labels = template["metadata"]["labels"]
            assert labels["ha-serving.io/cluster"] == name
            assert labels["ha-serving.io/tier"] == registration["tier"]
            assert labels["ha-serving.io/zone"] == registration["zone"]
    assert len(seen_namespaces) == 3  # no two clusters share GCS state in Redis


def test_the_schema_rejects_what_kuberay_would(rendered: dict[str, dict[str, Any]]) -> None:
    rc = next(o for o in _objects(rendered["in-cluster"]) if o["kind"] == "RayCluster")
    assert _ray_problems(rc) == []
    number = copy.deepcopy(rc)
    number["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # not a string
    assert any("rayStartParams/num-cpus" in p for p in _ray_problems(number))
    misspelt = copy.deepcopy(rc)
    misspelt["spec"]["gcsFaultTolerance"] = misspelt["spec"].pop("gcsFaultToleranceOptions")
    assert _ray_problems(misspelt)
    no_address = copy.deepcopy(rc)
    del no_address["spec"]["gcsFaultToleranceOptions"]["redisAddress"]
    assert _ray_problems(no_address)
    both = copy.deepcopy(rc)
    both["spec"]["gcsFaultToleranceOptions"]["redisPassword"]["value"] = "x"
    assert _ray_problems(both)
    old_api = copy.deepcopy(rc)
    old_api["apiVersion"] = "ray.io/v1alpha1"
    assert _ray_problems(old_api)
    negative = copy.deepcopy(rc)
    negative["spec"]["workerGroupSpecs"][0]["minReplicas"] = -1
    assert _ray_problems(negative)


# --- credentials ------------------------------------------------------------------------


def _env_entries(node: Any) -> Iterator[dict[str, Any]]:
    """Every container env entry anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from (e for e in value if isinstance(e, dict))
            else:
                yield from _env_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _env_entries(value)


def _plain_credentials(objects: list[dict[str, Any]]) -> list[str]:
    return [
        e["name"]
        for obj in objects
        for e in _env_entries(obj)
        if SECRET_NAME.search(e["name"]) and "value" in e
    ]


def test_no_credential_is_a_plain_value(rendered: dict[str, dict[str, Any]]) -> None:
    objects = list(_all_objects(rendered))
    names = {e["name"] for o in objects for e in _env_entries(o)}
    # the credentials are there, by reference
    assert {"HA_SERVING_DB_URL", "HA_SERVING_KEEPER_TOKEN", "MARIADB_PASSWORD"} <= names
    assert _plain_credentials(objects) == []
    planted = copy.deepcopy(objects)
    keeper = next(o for o in planted if o["kind"] == "Deployment")
    keeper["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "HA_SERVING_KEEPER_TOKEN", "value": "hunter2"}
    )
    assert _plain_credentials(planted) == ["HA_SERVING_KEEPER_TOKEN"]


def test_outputs_give_what_register_and_discovery_need(
    rendered: dict[str, dict[str, Any]],
) -> None:
    outputs = rendered["external"]
    assert outputs["clusters"]["west"] == {
        "name": "west",
        "gcs_address": "west-head-svc.ray.svc.cluster.local:6379",
        "dashboard_url": "http://west-head-svc.ray.svc.cluster.local:8265",
        "tier": "online",
        "zone": "us-west-2a",
    }
    assert (
        "ha-serving cluster register west --gcs west-head-svc.ray.svc.cluster.local:6379 "
        "--dashboard http://west-head-svc.ray.svc.cluster.local:8265 --tier online "
        "--zone us-west-2a"
    ) in outputs["register_commands"]
    assert outputs["discovery"]["keepers"] == [
        "ha-serving-keeper.ha-serving.svc.cluster.local:9400"
    ]
    assert outputs["db"]["url_redacted"] == (
        "mysql+pymysql://hasrv:***@mysql.example.internal:3306/ha_serving"
    )


def test_rendered_yaml_is_the_objects(rendered: dict[str, dict[str, Any]]) -> None:
    import yaml

    for outputs in rendered.values():
        as_yaml = {k: [yaml.safe_load(d) for d in v] for k, v in outputs["manifests_yaml"].items()}
        assert as_yaml == outputs["manifests"]


def test_register_output_matches_the_cli(rendered: dict[str, dict[str, Any]]) -> None:
    """Every registration the root outputs passes the CLI's own validation."""
    from ha_serving.cli._clusters import parse_registration

    for outputs in rendered.values():
        for r in outputs["clusters"].values():
            reg = parse_registration(
                name=r["name"],
                gcs=r["gcs_address"],
                dashboard=r["dashboard_url"],
                tier=r["tier"],
                zone=r["zone"],
            )
            assert (reg.gcs, reg.dashboard) == (r["gcs_address"], r["dashboard_url"])


def test_nothing_was_written_into_the_tree(planned: tuple[dict[str, Any], set[Path]]) -> None:
    """init and plan kept their files in the temp dir: no .terraform, state, lock or
    plan appeared under terraform/."""
    assert planned[1] == set()


def test_the_keeper_command_is_one_the_cli_takes(
    rendered: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Deployment's command line runs `ha-serving keeper run` with the store URL from
    the environment only (as the pod has it), and is refused without it."""
    from typer.testing import CliRunner

    from ha_serving.cli import _app
    from ha_serving.store import StoreRef

    deployment = next(o for o in _objects(rendered["in-cluster"]) if o["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["ha-serving"]
    connected: list[str] = []

    class Connected(Exception):
        pass

    def connect(ref: StoreRef, **_: object) -> None:
        assert ref.password_file is None  # the pod's URL is given whole
        connected.append(ref.url)
        raise Connected  # the options parsed; stop before a Keeper would start

    monkeypatch.setattr(_app.Store, "connect", connect)
    url = "mysql+pymysql://hasrv:pw@db:3306/ha_serving"
    result = CliRunner().invoke(_app.app, container["args"], env={"HA_SERVING_DB_URL": url})
    assert isinstance(result.exception, Connected), result.output
    assert connected == [url]
    result = CliRunner().invoke(_app.app, container["args"], env={"HA_SERVING_DB_URL": ""})
    assert result.exit_code == 2
    assert "--db-url" in result.output
    assert connected == [url]

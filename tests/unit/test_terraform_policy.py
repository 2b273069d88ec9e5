"""Policy over every Terraform file in terraform/, read with python-hcl2 (no terraform
binary needed): the provider wrappers (modules/kubernetes/*), which cannot be
initialised offline, are checked only here.

- every module and environment has variables.tf, outputs.tf, versions.tf and a README;
- every variable is typed and described, every output described;
- required_version is bounded; providers are pinned to patch releases; modules
  configure no provider (the root does: one alias per cluster);
- the KubeRay chart is pinned to an exact, validated version;
- no secret in a plain value: a variable named like a credential is sensitive (or is a
  Secret reference, {name, key}); no credential-named attribute holds a literal;
- every validation block has an `expect_failures` run in the module's tests.

Each check is also run on a planted violation, to show it can fail.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.terraform_tools import TERRAFORM_DIR, is_literal_string, unquote

SECRET_WORD = re.compile(r"(?i)(password|passwd|token|secret|credential|private_key|api_key)")
SECRET_REF = re.compile(
    r"object\(\{\s*(name\s*=\s*string\s*,\s*key|key\s*=\s*string\s*,\s*name)\s*=\s*string\s*,?\s*\}\)"
    r"|object\(\{\s*name\s*=\s*string\s*,?\s*\}\)"
)
"""A Secret reference's type: object({name = string, key = string}), in either order
(one data key), or object({name = string}) (a whole Secret, e.g. a kubernetes.io/tls one
mounted as a volume)."""
PINNED = re.compile(r"^(=\s*|~>\s*)?\d+\.\d+\.\d+$")
"""An exact version, or ~> X.Y.Z (patch releases only)."""
EXACT = re.compile(r"^\d+\.\d+\.\d+$")

MODULES = sorted(
    {
        p.parent
        for p in TERRAFORM_DIR.rglob("*.tf")
        if "tests" not in p.relative_to(TERRAFORM_DIR).parts
    }
)
WRAPPERS = {
    TERRAFORM_DIR / "modules" / "kubernetes" / "operator": {"helm": "hashicorp/helm"},
    TERRAFORM_DIR / "modules" / "kubernetes" / "cluster": {"kubernetes": "hashicorp/kubernetes"},
}
PROVIDER_FREE = [m for m in MODULES if m not in WRAPPERS]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(TERRAFORM_DIR)) for p in paths]


def load(module: Path) -> dict[str, list[Any]]:
    """Every top-level block of ``module``'s .tf files, by block type."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(module.glob("*.tf")):
        with path.open() as f:
            for kind, blocks in hcl2.load(f).items():
                if not kind.startswith("__"):
                    merged.setdefault(kind, []).extend(blocks)
    return merged


def labelled(blocks: list[Any]) -> dict[str, dict[str, Any]]:
    """{label: body} of one-label blocks (variable "x" {...})."""
    return {unquote(k): v for block in blocks for k, v in block.items() if not k.startswith("__")}


def runs_of(module: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for path in sorted((module / "tests").glob("*.tftest.hcl")):
        with path.open() as f:
            runs += list(labelled(hcl2.load(f).get("run", [])).values())
    return runs


# --- checks (each returns its findings; [] is a pass) ---------------------------------


def is_reference_type(type_expr: str) -> bool:
    """Whether a variable's type holds Secret references and nothing else: a reference,
    or an object/map/list of them (its value names Secrets; it holds none)."""
    if not SECRET_REF.search(type_expr):
        return False
    rest = SECRET_REF.sub("", type_expr)
    return not re.search(r"\b(string|number|bool|any)\b", rest)


def layout_problems(module: Path) -> list[str]:
    need = ["variables.tf", "outputs.tf", "versions.tf", "README.md"]
    return [f"missing {n}" for n in need if not (module / n).is_file()]


def variable_problems(hcl: dict[str, list[Any]]) -> list[str]:
    problems = []
    for name, body in labelled(hcl.get("variable", [])).items():
        if "type" not in body:
            problems.append(f"variable {name}: no type")
        if not unquote(body.get("description", "")).strip():
            problems.append(f"variable {name}: no description")
    for name, body in labelled(hcl.get("output", [])).items():
        if not unquote(body.get("description", "")).strip():
            problems.append(f"output {name}: no description")
    return problems


def version_problems(hcl: dict[str, list[Any]], expected: dict[str, str]) -> list[str]:
    """required_version bounded both ways; exactly the expected providers, each pinned."""
    problems = []
    blocks = hcl.get("terraform", [])
    required = unquote(blocks[0].get("required_version", "")) if blocks else ""
    if ">=" not in required or "<" not in required.replace("<=", "<"):
        problems.append(f"required_version {required!r} is not bounded both ways")
    providers: dict[str, Any] = {}
    for block in blocks:
        for group in block.get("required_providers", []):
            providers.update({k: v for k, v in group.items() if not k.startswith("__")})
    if set(providers) != set(expected):
        problems.append(f"required_providers {sorted(providers)}, expected {sorted(expected)}")
    for name, spec in providers.items():
        source = unquote(spec.get("source", ""))
        version = unquote(spec.get("version", ""))
        if source != expected.get(name):
            problems.append(f"provider {name}: source {source!r}")
        if not PINNED.match(version):
            problems.append(f"provider {name}: version {version!r} is not pinned to patches")
    if hcl.get("provider"):
        problems.append("a module must not configure providers (the root passes them)")
    return problems


def secret_problems(hcl: dict[str, list[Any]]) -> list[str]:
    problems = []
    for name, body in labelled(hcl.get("variable", [])).items():
        if not SECRET_WORD.search(name):
            continue
        is_reference = is_reference_type(str(body.get("type", "")))
        if body.get("sensitive") is not True and not is_reference:
            problems.append(f"variable {name} looks like a credential: mark it sensitive")
        default = body.get("default")
        if default is not None and not is_reference:
            problems.append(f"variable {name} has a default value")

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.startswith("__"):
                    continue
                if SECRET_WORD.search(unquote(key)) and is_literal_string(value):
                    problems.append(f"{where}.{unquote(key)} is a literal credential")
                walk(value, f"{where}.{unquote(key)}")
            # env-style {name = "X_PASSWORD", value = "..."} pairs, set {} blocks
            name = unquote(node.get("name", ""))
            if (
                isinstance(name, str)
                and SECRET_WORD.search(name)
                and is_literal_string(node.get("value"))
            ):
                problems.append(f"{where}: {name} is given a literal value")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for kind in ("resource", "locals", "module", "provider", "data", "output"):
        walk(hcl.get(kind, []), kind)
    return problems


def validation_coverage_problems(module: Path, hcl: dict[str, list[Any]]) -> list[str]:
    """Each variable needs as many expect_failures runs as it has validation blocks."""
    blocks = {
        name: len(body.get("validation", []))
        for name, body in labelled(hcl.get("variable", [])).items()
    }
    expected_failures: Counter[str] = Counter()
    for run in runs_of(module):
        for ref in run.get("expect_failures", []):
            match = re.fullmatch(r"\$\{var\.(\w+)\}", str(ref))
            if match:
                expected_failures[match.group(1)] += 1
    return [
        f"variable {name}: {n} validation block(s), "
        f"{expected_failures[name]} expect_failures run(s)"
        for name, n in blocks.items()
        if expected_failures[name] < n
    ]


# --- the repository's Terraform --------------------------------------------------------


def test_every_module_and_environment_is_found() -> None:
    assert set(_ids(MODULES)) == {
        "modules/ray-cluster",
        "modules/keeper",
        "modules/state-db",
        "modules/kubernetes/operator",
        "modules/kubernetes/cluster",
        "environments/local",
        "environments/kubernetes-multi",
    }


@pytest.mark.parametrize("module", MODULES, ids=_ids(MODULES))
def test_layout(module: Path) -> None:
    assert layout_problems(module) == []


@pytest.mark.parametrize("module", MODULES, ids=_ids(MODULES))
def test_variables_typed_and_described(module: Path) -> None:
    assert variable_problems(load(module)) == []


@pytest.mark.parametrize("module", MODULES, ids=_ids(MODULES))
def test_versions_bounded_and_providers_pinned(module: Path) -> None:
    assert version_problems(load(module), WRAPPERS.get(module, {})) == []


@pytest.mark.parametrize("module", MODULES, ids=_ids(MODULES))
def test_no_plain_secret(module: Path) -> None:
    assert secret_problems(load(module)) == []


@pytest.mark.parametrize("module", PROVIDER_FREE, ids=_ids(PROVIDER_FREE))
def test_every_validation_block_has_a_failing_run(module: Path) -> None:
    assert validation_coverage_problems(module, load(module)) == []


def test_the_kuberay_chart_is_pinned() -> None:
    hcl = load(TERRAFORM_DIR / "modules" / "kubernetes" / "operator")
    releases = labelled([labelled(hcl["resource"])["helm_release"]])
    [release] = releases.values()
    assert unquote(release["chart"]) == "kuberay-operator"
    assert release["version"] == "${var.chart_version}"
    chart = labelled(hcl["variable"])["chart_version"]
    assert EXACT.match(unquote(chart["default"]))
    assert chart.get("validation"), "the chart version must be validated"


def test_the_manifest_wrapper_applies_rendered_yaml() -> None:
    hcl = load(TERRAFORM_DIR / "modules" / "kubernetes" / "cluster")
    resources = labelled(hcl["resource"])
    assert set(resources) == {"kubernetes_manifest"}
    variable = labelled(hcl["variable"])["manifests_yaml"]
    assert variable["type"] == "${list(string)}"


# --- the checks catch what they are for -------------------------------------------------


def _parse(tmp_path: Path, text: str) -> dict[str, list[Any]]:
    (tmp_path / "main.tf").write_text(text)
    return load(tmp_path)


def test_layout_check_catches_a_missing_file(tmp_path: Path) -> None:
    for name in ("variables.tf", "outputs.tf", "versions.tf"):
        (tmp_path / name).write_text("")
    assert layout_problems(tmp_path) == ["missing README.md"]


def test_variable_check_catches_untyped_and_undescribed(tmp_path: Path) -> None:
    hcl = _parse(
        tmp_path,
        'variable "a" {\n  description = "ok"\n}\nvariable "b" {\n  type = string\n}\n'
        'output "c" {\n  value = 1\n}\n',
    )
    assert variable_problems(hcl) == [
        "variable a: no type",
        "variable b: no description",
        "output c: no description",
    ]


def test_version_check_catches_loose_pins_and_provider_blocks(tmp_path: Path) -> None:
    hcl = _parse(
        tmp_path,
        'terraform {\n  required_version = ">= 1.9.0"\n  required_providers {\n'
        '    helm = {\n      source  = "hashicorp/helm"\n      version = ">= 2.0"\n    }\n'
        '  }\n}\nprovider "helm" {}\n',
    )
    assert version_problems(hcl, {"helm": "hashicorp/helm"}) == [
        "required_version '>= 1.9.0' is not bounded both ways",
        "provider helm: version '>= 2.0' is not pinned to patches",
        "a module must not configure providers (the root passes them)",
    ]
    assert "required_providers ['helm'], expected ['kubernetes']" in version_problems(
        hcl, {"kubernetes": "hashicorp/kubernetes"}
    )


def test_secret_check_catches_plain_credentials(tmp_path: Path) -> None:
    hcl = _parse(
        tmp_path,
        'variable "db_password" {\n  type = string\n  description = "x"\n  default = "pw"\n}\n'
        'variable "api_token" {\n  type = string\n  description = "x"\n  sensitive = true\n}\n'
        'variable "token_secret" {\n  type = object({ name = string, key = string })\n'
        '  description = "a reference"\n}\n'
        'variable "secret_refs" {\n  type = object({\n'
        "    a = object({ key = string, name = string })\n"
        '  })\n  description = "references"\n}\n'
        'variable "tls_secret" {\n  type = object({ name = string })\n'
        '  description = "a whole Secret, by name"\n  default = { name = "keeper-tls" }\n}\n'
        'variable "tls_secret_pem" {\n  type = object({ name = string, pem = string })\n'
        '  description = "not a reference: a key in it"\n}\n'
        'variable "redis_secret" {\n'
        "  type = object({ name = string, key = string, value = string })\n"
        '  description = "a reference with a value in it"\n}\n'
        'resource "helm_release" "r" {\n  set {\n    name  = "redis.password"\n'
        '    value = "hunter2"\n  }\n  set {\n    name  = "redis.password"\n'
        "    value = var.api_token\n  }\n}\n"
        'locals {\n  admin_password = "letmein"\n  token = var.api_token\n}\n',
    )
    assert secret_problems(hcl) == [
        "variable db_password looks like a credential: mark it sensitive",
        "variable db_password has a default value",
        "variable tls_secret_pem looks like a credential: mark it sensitive",
        "variable redis_secret looks like a credential: mark it sensitive",
        "resource[0].helm_release.r.set[0]: redis.password is given a literal value",
        "locals[0].admin_password is a literal credential",
    ]


def test_coverage_check_catches_an_untested_validation(tmp_path: Path) -> None:
    hcl = _parse(
        tmp_path,
        'variable "a" {\n  type = string\n  description = "x"\n'
        '  validation {\n    condition = var.a != ""\n    error_message = "e"\n  }\n'
        '  validation {\n    condition = var.a != "x"\n    error_message = "e"\n  }\n}\n',
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "a.tftest.hcl").write_text(
        'run "one" {\n  command = plan\n  variables {\n    a = ""\n  }\n'
        "  expect_failures = [var.a]\n}\n"
    )
    assert validation_coverage_problems(tmp_path, hcl) == [
        "variable a: 2 validation block(s), 1 expect_failures run(s)"
    ]

"""Fuzzing the spec parser: valid specs round-trip through YAML; anything else, however
mangled, is an InvalidSpec with a one-line, bounded message, never another exception."""

from __future__ import annotations

import json

import hypothesis.strategies as st
from hypothesis import HealthCheck, example, given, settings

from ha_serving._errors import InvalidSpec
from ha_serving._spec import ServiceSpec, loads_spec, parse_spec
from tests.unit.strategies import dump, mutated_yaml, spec_like_documents, valid_specs

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parsed_or_refused(text: str | bytes) -> ServiceSpec | None:
    """The spec, or None after checking the refusal is a clear one-line InvalidSpec."""
    try:
        return loads_spec(text, source="fuzz.yaml")
    except InvalidSpec as exc:
        message = str(exc)
        assert message.startswith("invalid fuzz.yaml: "), message[:200]
        assert "\n" not in message
        assert len(message) < 2000
        return None


@FUZZ
@given(valid_specs())
def test_valid_specs_round_trip_through_yaml(data: dict[str, object]) -> None:
    spec = loads_spec(dump(data))
    assert spec == ServiceSpec.model_validate(data)
    dumped = spec.model_dump(mode="json")
    assert loads_spec(dump(dumped)) == spec  # what the platform stores reads back the same
    assert parse_spec(json.loads(json.dumps(dumped))) == spec  # and through the Keeper's JSON


@FUZZ
@given(mutated_yaml())
@example("name: &a echo\nversion: *a\n")
@example("config: !!python/object/apply:os.system ['true']\n")
@example("[" * 10_000)
@example("x: " + "1" * 5000)
@example("code: {dir: code, import_path: 'a:B'}\nname: echo\nversion: v1\nconfig: {a: .nan}\n")
@example("!!timestamp name: a\nversion: '0'\n")  # PyYAML's own constructor crashed on it
def test_mutated_specs_parse_or_are_refused_clearly(text: str) -> None:
    _parsed_or_refused(text)


@FUZZ
@given(st.binary(max_size=512) | st.text(max_size=512))
def test_garbage_is_refused_clearly(raw: bytes | str) -> None:
    _parsed_or_refused(raw)


@FUZZ
@given(spec_like_documents())
def test_spec_shaped_documents_parse_or_are_refused_clearly(document: object) -> None:
    spec = _parsed_or_refused(dump(document))
    if spec is not None:  # anything accepted is a spec the platform can store and reread
        assert loads_spec(dump(spec.model_dump(mode="json"))) == spec
        json.dumps(spec.model_dump(mode="json"), allow_nan=False)

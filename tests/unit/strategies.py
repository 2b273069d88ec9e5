"""Hypothesis strategies shared by the fuzz tests: specs (valid, and mutated into
garbage), JSON-like values, and routing tables."""

from __future__ import annotations

import string
from typing import Any

import hypothesis.strategies as st
import yaml

from ha_serving._wire import RouteEntry, RoutingTable

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
json_values = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
"""Whatever JSON (and so a spec's ``config``) may hold."""

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
import_paths = st.from_regex(
    r"[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8}){0,2}:[A-Z][A-Za-z0-9_]{0,8}", fullmatch=True
)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec as a user writes it (a dict, before YAML): every field within its bounds."""
    spec: dict[str, Any] = {
        "name": draw(names),
        "version": draw(st.text(min_size=1, max_size=64)),
        "code": {
            "dir": draw(st.sampled_from(["code", ".", "src/svc"])),
            "import_path": draw(import_paths),
        },
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "instances": st.integers(0, 5000),
        "instances_per_worker": st.integers(1, 100),
        "proxies": st.integers(1, 16),
        "max_concurrency": st.integers(1, 10_000),
        "config": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "num_cpus": st.floats(0, 256, allow_nan=False),
                "memory_mb": st.integers(1, 10**6),
            },
        ),
        "rollout": st.fixed_dictionaries(
            {},
            optional={
                "max_unavailable": st.integers(1, 100),
                "max_surge": st.just(0),
                "drain_timeout_s": st.floats(0.001, 600),
                "failure_threshold": st.integers(1, 10),
            },
        ),
        "placement": st.one_of(
            st.fixed_dictionaries({"any": st.integers(1, 9)}),
            st.lists(names.map(lambda n: n[:31]), max_size=3, unique=True).map(
                lambda ns: {"clusters": [{"name": n} for n in ns]}
            ),
        ),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            spec[key] = draw(strategy)
    return spec


def dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False)


YAML_TOKENS = [
    "&a ",
    "*a",
    "<<: *a\n",
    "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system",
    "!!binary ",
    "!!set ",
    "!!timestamp ",
    "!!float ",
    "!!int ",
    "!ha ",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "? ",
    "|\n",
    ">\n",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "\t",
    "\n",
    '"',
    "'",
    "#",
    ".inf",
    "-.inf",
    ".nan",
    "1" * 5000,
    "2001-13-45",
    "0x1F",
    "0o17",
    "1_000",
    "~",
    "\x00",
    "\ufeff",
    "\x85",
    "[" * 200,
    "- " * 100,
]


@st.composite
def mutated_yaml(draw: st.DrawFn) -> str:
    """A valid spec's YAML with a few random edits: characters deleted, replaced, or
    YAML's special tokens (anchors, aliases, tags, flow brackets...) spliced in."""
    text = dump(draw(valid_specs()))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(
            st.sampled_from(YAML_TOKENS)
            | st.text(alphabet=string.printable, max_size=4)
            | st.text(max_size=3)
        )
        if edit == "insert":
            text = text[:at] + piece + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


@st.composite
def spec_like_documents(draw: st.DrawFn) -> object:
    """A valid spec with random keys added or values swapped for arbitrary JSON-like
    values, or a document that is no spec at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values)
    spec: dict[Any, Any] = draw(valid_specs())
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from([*spec.keys(), "extra", "code", "resources", "config"]))
        spec[key] = draw(json_values)
    return spec


route_entries = st.builds(
    RouteEntry,
    instance_id=st.text(min_size=1, max_size=12),
    worker=st.text(min_size=1, max_size=12),
    version=st.text(max_size=8),
    max_concurrency=st.integers(1, 10_000),
    group=st.sampled_from(["stable", "candidate", "retiring"]),
    address=st.sampled_from(["", "127.0.1.1:40001", "10.0.0.7:5"]),
)


@st.composite
def routing_tables(draw: st.DrawFn) -> RoutingTable:
    entries = draw(st.lists(route_entries, max_size=6, unique_by=lambda e: e.instance_id))
    return RoutingTable(
        service=draw(names),
        version=draw(st.integers(-1, 2**40)),
        entries=tuple(entries),
        candidate_weight=draw(st.integers(0, 100)),
    )

"""Hostile spec files: bounded, safe, finite, and confined to the spec's folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ha_serving._errors import InvalidSpec
from ha_serving._spec import MAX_YAML_BYTES, code_dir, load_spec, load_yaml, loads_spec
from ha_serving.backend import make_package

HEAD = "name: echo\nversion: v1\ncode: {dir: code, import_path: 'echo:Echo'}\n"

LAUGHS = HEAD + (
    "config:\n"
    '  a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    "  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_yaml_aliases_are_refused_not_expanded(tmp_path: Path) -> None:
    """Before: this ~400-byte spec became a ~4.7 MB config (a billion laughs, shortened)."""
    spec = _write(tmp_path / "laughs.yaml", LAUGHS)
    with pytest.raises(InvalidSpec, match=r"aliases \(\*name\) are not allowed \(line 6, "):
        load_spec(spec)


def test_a_spec_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    padding = "# padding\n" * (MAX_YAML_BYTES // 10 + 1)
    spec = _write(tmp_path / "big.yaml", HEAD + padding)
    with pytest.raises(InvalidSpec, match=f"larger than {MAX_YAML_BYTES} bytes"):
        load_spec(spec)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
        (HEAD + "instances: 1" + "0" * 5000 + "\n", "not valid YAML: ValueError"),
        (HEAD + "config: {when: 2001-13-45}\n", "not valid YAML: ValueError"),
        (b"name: \xff\xfe echo\n", "not UTF-8 text"),
    ],
    ids=["deep nesting", "an int of 5000 digits", "a date past December", "not UTF-8"],
)
def test_input_pyyaml_or_python_chokes_on_is_a_clear_invalid_spec(
    text: str | bytes, problem: str
) -> None:
    """Before: RecursionError, ValueError or UnicodeDecodeError escaped as tracebacks."""
    with pytest.raises(InvalidSpec, match=problem):
        loads_spec(text)


@pytest.mark.parametrize(
    "extra",
    [
        "resources: {num_cpus: .inf}\n",
        "resources: {num_cpus: .nan}\n",
        "rollout: {drain_timeout_s: .nan}\n",
        "config: {threshold: .inf}\n",
        "config: {threshold: [1, .nan]}\n",
    ],
)
def test_numbers_must_be_finite(extra: str) -> None:
    """Before: ``num_cpus: .inf`` was accepted, and a NaN in the config went on to the
    store (MySQL's JSON has no NaN)."""
    with pytest.raises(InvalidSpec):
        loads_spec(HEAD + extra)


def test_python_tags_are_refused_never_run_and_said_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = _write(
        tmp_path / "tag.yaml",
        f"name: !!python/object/apply:os.system ['touch {marker}']\nversion: v1\n",
    )
    with pytest.raises(InvalidSpec) as caught:
        load_spec(spec)
    assert not marker.exists()
    message = str(caught.value)
    assert "\n" not in message
    assert "python/object/apply:os.system" in message
    assert "(line 1, column 7)" in message


def test_load_yaml_reads_a_plain_config(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.yaml", "greeting: hi\nlimits: {rps: 10.5}\n")
    assert load_yaml(config) == {"greeting": "hi", "limits": {"rps": 10.5}}


def _spec_in(folder: Path, directory: str) -> Path:
    return _write(
        folder / "svc.yaml",
        f"name: echo\nversion: v1\ncode: {{dir: '{directory}', import_path: 'echo:Echo'}}\n",
    )


@pytest.mark.parametrize("directory", ["{outside}", "../outside", "code/../../outside", "link"])
def test_code_dir_must_stay_inside_the_specs_folder(tmp_path: Path, directory: str) -> None:
    """Before: an absolute code.dir, ``..`` or a symlinked folder packaged (and uploaded
    to the store) whatever folder it named on the deployer's disk."""
    outside = tmp_path / "outside"
    _write(outside / "secret.py", "KEY = 'hunter2'\n")
    folder = tmp_path / "project"
    (folder / "code").mkdir(parents=True)
    (folder / "link").symlink_to(outside, target_is_directory=True)
    spec_path = _spec_in(folder, directory.format(outside=outside))
    spec = load_spec(spec_path)
    with pytest.raises(InvalidSpec, match=r"code\.dir"):
        code_dir(spec, spec_path)


def test_code_dir_inside_the_specs_folder_is_resolved(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    (folder / "code" / "sub").mkdir(parents=True)
    for directory, expected in (("code", "code"), ("./code/sub", "code/sub"), (".", "")):
        spec_path = _spec_in(folder, directory)
        assert code_dir(load_spec(spec_path), spec_path) == (folder / expected).resolve()


def test_a_symlink_leading_out_of_the_code_is_refused_when_packaging(tmp_path: Path) -> None:
    """Before: a symlinked file was packaged as what it pointed to, wherever that was."""
    secret = _write(tmp_path / "home" / ".ssh" / "id_ed25519", "PRIVATE KEY")
    code = tmp_path / "code"
    _write(code / "echo.py", "class Echo: ...\n")
    (code / "key.txt").symlink_to(secret)
    with pytest.raises(InvalidSpec, match=r"key\.txt is a symlink leading outside"):
        make_package(code)
    (code / "key.txt").unlink()
    (code / "home").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(InvalidSpec, match="home is a symlink leading outside"):
        make_package(code)


def test_a_symlink_inside_the_code_is_packaged_as_its_target(tmp_path: Path) -> None:
    code = tmp_path / "code"
    _write(code / "echo.py", "class Echo: ...\n")
    (code / "alias.py").symlink_to("echo.py")  # relative, as ln -s makes it
    (code / "dangling.py").symlink_to(code / "gone.py")  # points nowhere: skipped
    names = zipfile.ZipFile(io.BytesIO(make_package(code).data)).namelist()
    assert names == ["alias.py", "echo.py"]


def test_a_surge_is_refused_not_ignored() -> None:
    """``rollout.max_surge`` was accepted and validated, but no planner read it. Updates
    are in place, so 0 is its only value (saved specs carry it) and any other is refused
    in one line."""
    assert loads_spec(HEAD + "rollout: {max_surge: 0}\n").rollout.max_surge == 0
    with pytest.raises(InvalidSpec, match="max_surge") as refused:
        loads_spec(HEAD + "rollout: {max_surge: 2}\n")
    assert "\n" not in str(refused.value)

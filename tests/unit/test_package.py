"""Content-addressed code packages and loading them into fresh namespaces."""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import pytest

from ha_serving._errors import InvalidSpec
from ha_serving.backend import (
    Package,
    load_class,
    make_package,
    namespace_of,
    unload_namespace,
)
from tests.unit.fixtures.dataplane import package


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_same_directory_gives_same_digest_whatever_the_timestamps(tmp_path: Path) -> None:
    code = _write(tmp_path / "c", {"b.py": "B = 1\n", "a/x.py": "X = 2\n"})
    first = make_package(code)
    os.utime(code / "b.py", (1, 1))
    assert make_package(code) == first
    (code / "b.py").write_text("B = 2\n")
    assert make_package(code).digest != first.digest


def test_package_skips_pycache_compiled_and_hidden_files(tmp_path: Path) -> None:
    code = _write(
        tmp_path / "c",
        {
            "m.py": "",
            "__pycache__/m.cpython-311.pyc": "x",
            "stale.pyc": "x",
            ".env": "SECRET=1",
            ".git/config": "x",
        },
    )
    names = zipfile.ZipFile(io.BytesIO(make_package(code).data)).namelist()
    assert names == ["m.py"]


def test_code_over_the_size_limit_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    code = _write(tmp_path / "c", {"big.py": "#" * 2000})
    with pytest.raises(InvalidSpec, match="more than 1024 bytes"):
        make_package(code, max_bytes=1024)


def test_missing_or_empty_directory_is_invalid_spec(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="not a directory"):
        make_package(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidSpec, match="no files"):
        make_package(tmp_path / "empty")


def test_two_versions_of_one_module_coexist_without_seeing_each_other() -> None:
    v1 = load_class(package("echo_v1"), "echo:Echo", namespace_id="i1")
    v2 = load_class(package("echo_v2"), "echo:Echo", namespace_id="i1")
    assert v1 is not v2
    assert namespace_of(v1) != namespace_of(v2)
    assert sys.modules[v1.__module__].VERSION == "v1"  # via its relative import of .tag
    assert sys.modules[v2.__module__].VERSION == "v2"
    for cls in (v1, v2):
        unload_namespace(namespace_of(cls) or "")


def test_every_load_gets_fresh_module_state_even_for_the_same_code() -> None:
    pkg = package("oddities")
    a = load_class(pkg, "odd:Health", namespace_id="a")
    b = load_class(pkg, "odd:Health", namespace_id="b")
    a(), a(), b()
    assert sys.modules[a.__module__].COUNTER == {"constructed": 2}
    assert sys.modules[b.__module__].COUNTER == {"constructed": 1}
    for cls in (a, b):
        unload_namespace(namespace_of(cls) or "")


@pytest.mark.parametrize("path", ["echo", "echo:", ":Echo", "echo:Echo.x", "1echo:Echo", "e/cho:E"])
def test_malformed_import_path_is_invalid_spec(path: str) -> None:
    with pytest.raises(InvalidSpec, match="module:Class"):
        load_class(package("echo_v1"), path, namespace_id="x")


@pytest.mark.parametrize(
    ("code", "path", "message"),
    [
        ("echo_v1", "nomodule:Echo", "No module named"),
        ("echo_v1", "echo:Missing", "'Missing' is nothing, not a class"),
        ("oddities", "odd:NOT_A_CLASS", "is int, not a class"),
    ],
)
def test_missing_module_or_class_is_invalid_spec_naming_it(
    code: str, path: str, message: str
) -> None:
    before = set(sys.modules)
    with pytest.raises(InvalidSpec, match=message):
        load_class(package(code), path, namespace_id="x")
    assert not [m for m in set(sys.modules) - before if m.startswith("_hasrv_")]


def test_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    code = _write(tmp_path / "c", {"svc.py": "class S:\n    def f(self:\n        pass\n"})
    with pytest.raises(InvalidSpec, match=r"SyntaxError: .* \(svc.py, line 2\)"):
        load_class(make_package(code), "svc:S", namespace_id="x")


def test_import_time_error_is_invalid_spec_and_leaves_no_modules_behind(tmp_path: Path) -> None:
    code = _write(tmp_path / "c", {"svc.py": "raise RuntimeError('no GPU here')\n"})
    before = set(sys.modules)
    with pytest.raises(InvalidSpec, match="RuntimeError: no GPU here"):
        load_class(make_package(code), "svc:S", namespace_id="x")
    assert not [m for m in set(sys.modules) - before if m.startswith("_hasrv_")]


def test_bytes_from_the_store_are_checked_against_their_digest() -> None:
    pkg = package("echo_v1")
    assert Package.from_bytes(pkg.data, expected_digest=pkg.digest) == pkg
    with pytest.raises(InvalidSpec, match="does not match"):
        Package.from_bytes(pkg.data + b"x", expected_digest=pkg.digest)
    with pytest.raises(InvalidSpec, match="do not match"):
        load_class(Package("0" * 64, pkg.data), "echo:Echo", namespace_id="x")


def test_zip_member_escaping_the_package_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.py", "X = 1\n")
    with pytest.raises(InvalidSpec, match="escapes the package"):
        load_class(Package.from_bytes(buf.getvalue()), "evil:X", namespace_id="x")


def test_unload_namespace_forgets_all_its_modules() -> None:
    cls = load_class(package("echo_v1"), "echo:Echo", namespace_id="u")
    ns = namespace_of(cls)
    assert ns is not None
    assert {f"{ns}.echo", f"{ns}.tag"} <= set(sys.modules)
    unload_namespace(ns)
    assert not [m for m in sys.modules if m == ns or m.startswith(ns + ".")]
    assert namespace_of(int) is None


def test_unload_namespace_while_another_thread_imports() -> None:
    """Instances of one worker load code in parallel: one's unload (the loop thread)
    must not trip over another's imports (a control-pool thread) changing sys.modules."""
    import threading
    import types

    stop = threading.Event()

    def importer() -> None:  # stands in for another instance importing its code
        n = 0
        while not stop.is_set():
            name = f"_hasrv_test_churn_{n % 50}"
            sys.modules[name] = types.ModuleType(name)
            sys.modules.pop(f"_hasrv_test_churn_{(n + 25) % 50}", None)
            n += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    thread = threading.Thread(target=importer, daemon=True)
    thread.start()
    try:
        for i in range(300):
            cls = load_class(package("echo_v1"), "echo:Echo", namespace_id=f"c{i}")
            unload_namespace(namespace_of(cls) or "")
    finally:
        stop.set()
        thread.join(timeout=5)
        sys.setswitchinterval(interval)
        for n in range(50):
            sys.modules.pop(f"_hasrv_test_churn_{n}", None)

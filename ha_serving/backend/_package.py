"""User code as a content-addressed package, imported into a fresh namespace per load.

A *package* is a deterministic zip of a code directory (sorted entries, fixed
timestamps and modes, no ``__pycache__``/``.pyc``/hidden files), named by the sha256 of
its bytes. The same directory always gives the same digest, so the digest is the code's
identity in the DB and across clusters, and a worker can verify what it was sent.

Loading imports ``module:Class`` inside a *synthetic top-level package* made for this
load only (``_hasrv_<digest[:12]>_<label>_<n>``) whose ``__path__`` is the extracted
directory. Two versions of one module therefore live side by side in one process, and a
new version never sees the module objects of an old one (or of another instance).

The user's contract: modules in the package refer to each other with **relative
imports** (``from . import util``, ``from .models import Net``); an absolute
``import util`` would look on ``sys.path`` and miss the package. Third-party libraries
are imported as usual.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import importlib.machinery
import importlib.util
import io
import itertools
import re
import shutil
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ha_serving._errors import InvalidSpec
from ha_serving._settings import MAX_PACKAGE_BYTES

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip's epoch: fixed so the digest depends on content only
_NAMESPACE_PREFIX = "_hasrv_"
_counter = itertools.count(1)
_lock = threading.Lock()  # guards extraction and the counter; loads may run in threads
_extract_root: Path | None = None
_extracted: dict[str, Path] = {}


@dataclass(frozen=True, slots=True)
class Package:
    """A zipped code directory and the sha256 (hex) of its bytes."""

    digest: str
    data: bytes

    @classmethod
    def from_bytes(cls, data: bytes, *, expected_digest: str | None = None) -> Package:
        """Wrap bytes read from the store, checking them against ``expected_digest``."""
        digest = hashlib.sha256(data).hexdigest()
        if expected_digest is not None and digest != expected_digest:
            raise InvalidSpec(
                "package", [f"content digest {digest} does not match expected {expected_digest}"]
            )
        if len(data) > MAX_PACKAGE_BYTES:
            raise InvalidSpec("package", [f"{len(data)} bytes exceed {MAX_PACKAGE_BYTES}"])
        return cls(digest, data)


def make_package(code_dir: str | Path, *, max_bytes: int = MAX_PACKAGE_BYTES) -> Package:
    """Zip ``code_dir`` deterministically; InvalidSpec if missing, empty or too big."""
    root = Path(code_dir)
    if not root.is_dir():
        raise InvalidSpec("package", [f"{root} is not a directory"])
    files = sorted(_package_files(root), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise InvalidSpec("package", [f"{root} holds no files to package"])
    total = 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            total += path.stat().st_size  # checked before reading: a stray 10 GB file
            if total > max_bytes:
                raise InvalidSpec(
                    "package", [f"{root} holds more than {max_bytes} bytes of code ({path})"]
                )
            content = path.read_bytes()
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, content)
    data = buf.getvalue()
    return Package(hashlib.sha256(data).hexdigest(), data)


def _package_files(root: Path) -> list[Path]:
    """The files to package. A symlink is packaged as what it points to only when that
    lies inside ``root``; one leading outside (a secret, a home directory) is refused
    rather than uploaded to the store."""
    base = root.resolve()
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).parts
        if any(p.startswith(".") or p == "__pycache__" for p in rel):
            continue
        if path.is_symlink() and not _inside(path, base):
            raise InvalidSpec(
                "package",
                [
                    f"{path.relative_to(root).as_posix()} is a symlink leading outside {root}: "
                    "copy what it points to into the code directory, or remove it"
                ],
            )
        if path.suffix in (".pyc", ".pyo") or not path.is_file():
            continue
        out.append(path)
    return out


def _inside(link: Path, base: Path) -> bool:
    try:
        return link.resolve().is_relative_to(base)
    except (OSError, RuntimeError):  # a symlink loop leads nowhere useful
        return False


def load_class(package: Package, import_path: str, *, namespace_id: str) -> type:
    """Import ``module:Class`` from ``package`` in a new namespace; return the class.

    ``namespace_id`` (e.g. the instance id) is only part of the namespace's name, for
    debugging; every call makes a new namespace. InvalidSpec on a bad import path, a
    missing module or class, or an error while importing (syntax error included).
    """
    module_name, class_name = _parse_import_path(import_path)
    directory = _extract(package)
    label = re.sub(r"\W", "_", namespace_id)[:32]
    with _lock:
        namespace = f"{_NAMESPACE_PREFIX}{package.digest[:12]}_{label}_{next(_counter)}"
    try:
        _make_namespace(namespace, directory)
        module = importlib.import_module(f"{namespace}.{module_name}")
    except Exception as exc:  # any import-time failure of user code is the user's to fix
        unload_namespace(namespace)
        raise InvalidSpec("code", [f"importing {module_name!r}: {_describe(exc)}"]) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        unload_namespace(namespace)
        found = "nothing" if cls is None else type(cls).__name__
        raise InvalidSpec("code", [f"{import_path}: {class_name!r} is {found}, not a class"])
    return cls


def namespace_of(cls: type) -> str | None:
    """The synthetic namespace ``cls`` was loaded into, or None for ordinary classes."""
    top = cls.__module__.split(".", 1)[0]
    return top if top.startswith(_NAMESPACE_PREFIX) else None


def unload_namespace(namespace: str) -> None:
    """Forget a namespace's modules so they can be collected once nothing uses them.

    Call it only when no object of the namespace runs any more: a function-level
    relative import in old code would fail after this.
    """
    # ``sys.modules.copy()`` is one C call the GIL does not leave, so the snapshot is whole;
    # iterating ``sys.modules`` itself while another instance's code imports in the control
    # pool raised "dictionary changed size during iteration" (code-update-500, 2026-11-30:
    # 5 of 250 instances of one cluster failed their code update, which rolled it back).
    for name in [n for n in sys.modules.copy() if n == namespace or n.startswith(namespace + ".")]:
        sys.modules.pop(name, None)


def _parse_import_path(import_path: str) -> tuple[str, str]:
    module, sep, cls = import_path.partition(":")
    ident = r"[A-Za-z_]\w*"
    if not sep or not re.fullmatch(rf"{ident}(\.{ident})*", module) or not re.fullmatch(ident, cls):
        raise InvalidSpec("import path", [f"{import_path!r} is not of the form 'module:Class'"])
    return module, cls


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = Path(exc.filename).name if exc.filename else "?"
        return f"SyntaxError: {exc.msg} ({where}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}"


def _make_namespace(namespace: str, directory: Path) -> None:
    """Register an empty package ``namespace`` whose submodules are found in ``directory``."""
    init = directory / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(
            namespace, init, submodule_search_locations=[str(directory)]
        )
    else:
        spec = importlib.machinery.ModuleSpec(namespace, None, is_package=True)
        spec.submodule_search_locations = [str(directory)]
    if spec is None:  # pragma: no cover - spec_from_file_location on an existing .py file
        raise ImportError(f"cannot make a module spec for {directory}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[namespace] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)


def _extract(package: Package) -> Path:
    """The package's files in a process-private directory, extracted once per digest."""
    global _extract_root  # noqa: PLW0603 - one lazily made directory per process
    with _lock:
        if (done := _extracted.get(package.digest)) is not None:
            return done
        if hashlib.sha256(package.data).hexdigest() != package.digest:
            raise InvalidSpec("package", [f"bytes do not match digest {package.digest}"])
        if _extract_root is None:
            _extract_root = Path(tempfile.mkdtemp(prefix="ha_serving_pkgs_"))  # mode 0700
            atexit.register(shutil.rmtree, _extract_root, ignore_errors=True)
        target = _extract_root / package.digest
        staging = Path(tempfile.mkdtemp(dir=_extract_root))
        try:
            with zipfile.ZipFile(io.BytesIO(package.data)) as zf:
                total = 0
                for info in zf.infolist():
                    total += info.file_size
                    _check_member(info.filename, total)
                    zf.extract(info, staging)
        except (zipfile.BadZipFile, InvalidSpec) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InvalidSpec("package", [f"cannot unpack {package.digest}: {exc}"]) from None
        staging.rename(target)
        importlib.invalidate_caches()  # finders may have cached a listing without it
        _extracted[package.digest] = target
        return target


def _check_member(name: str, total: int) -> None:
    # Refuse zip-slip paths and zip bombs: packages come from the DB, not from us alone.
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidSpec("package", [f"member {name!r} escapes the package"])
    if total > MAX_PACKAGE_BYTES:
        raise InvalidSpec("package", [f"unpacks to more than {MAX_PACKAGE_BYTES} bytes"])

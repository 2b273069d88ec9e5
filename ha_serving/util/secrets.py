"""Secrets kept in files: written mode 0600 in a 0700 directory, passed on by path.

A secret's *value* never crosses a process boundary that someone else can read: not a
command line (``ps`` shows it to every user), not the topology file, not a Ray job's
environment (Ray's Job API shows it), not an actor's arguments (Ray's state API and
dashboard show them), not a log line. What crosses is the file's *path*; the process
that needs the value reads it here, when it needs it. (The local stack runs on one
machine, so a path means the same file to every process; elsewhere, mount the secret
at the same path, as a Kubernetes Secret volume does.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ha_serving._errors import InvalidSpec

DIR_MODE = 0o700
FILE_MODE = 0o600
SECRET_BYTES = 32
"""Random bytes per generated secret (256 bits), as URL-safe base64: no character of it
needs quoting in SQL, a URL, a config file or an HTTP header."""


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def secret_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (made if missing, and tightened
    if it was there with looser permissions)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def write_secret(path: Path, value: str) -> Path:
    """Write ``value`` to ``path``, mode 0600 from the first byte on (never a window in
    which the umask's mode lets others read it), atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask did to the mode above
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    tmp.replace(path)
    return path


def read_secret(path: Path | str, *, what: str = "secret file") -> str:
    """The secret in ``path`` (surrounding whitespace stripped); a one-line InvalidSpec
    naming the path, never the content, when it is missing, unreadable or empty."""
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise InvalidSpec(what, [f"cannot read {path}: {exc.strerror}"]) from None
    if not value:
        raise InvalidSpec(what, [f"{path} is empty"])
    return value


def split_password(url: str) -> tuple[str, str | None]:
    """A SQLAlchemy URL without its password, and the password (None if it had none)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidSpec("store url", ["cannot parse the URL"]) from None
    password = parsed.password
    if password is None:
        return url, None
    # not ``parsed.set(password=None)``: ``URL.set`` ignores None, keeping the password
    bare = URL.create(
        parsed.drivername,
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return bare.render_as_string(hide_password=False), str(password)


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` put in (the inverse of ``split_password``)."""
    if password is None:
        return url
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def masked_url(url: str) -> str:
    """``url`` with any password shown as ``***``: fit for logs, errors and ``status``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"

"""Start and stop processes by process group, never by name.

Every process the stack starts gets its own session (``setsid``), so its process group
id equals its pid and one ``killpg`` reaches it and every helper it forks. Ray's worker
processes call ``setsid`` themselves, so they leave the node's group: stopping a node
therefore also signals the node's descendants found by parent pid, collected *before*
the kill (afterwards they are orphans and the tree is gone).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from ha_serving.util.secrets import read_secret
from infra.topology import Proc

NOT_INHERITED = frozenset(
    {
        "HA_SERVING_DB_URL",
        "HA_SERVING_DB_PASSWORD_FILE",
        "HA_SERVING_KEEPER_TOKEN",
        "HA_SERVING_KEEPER_TOKEN_FILE",
        "HA_SERVING_KEEPER_DISCOVERY_TOKEN_FILE",
        "HA_SERVING_KEEPER_CREDENTIALS_DIR",
        "HA_SERVING_TLS_CA",
        "HA_SERVING_TLS_KEEPER_CERT",
        "HA_SERVING_TLS_KEEPER_KEY",
        "HA_SERVING_TLS_PROXY_CERT",
        "HA_SERVING_TLS_PROXY_KEY",
        "HA_SERVING_TLS_APPMASTER_CERT",
        "HA_SERVING_TLS_APPMASTER_KEY",
    }
)
"""Variables of the caller's environment a started process does not inherit: a store
URL given to `up` may carry a password, and a token is one; a process that needs
either gets it (a path to it, rather) in ``env`` explicitly."""


def spawn(
    argv: list[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    secret_args: Mapping[str, Path] | None = None,
) -> Proc:
    """Start ``argv`` in a new session, output appended to ``log``; returns its Proc.

    ``secret_args`` (option -> file) are appended as ``--option=<value>``, each value
    read from its file now; the Proc records the files, never the values. Only for a
    program that takes a secret nowhere else (Ray's ``--redis-password``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(env or {})
    secrets = dict(secret_args or {})
    full = argv + [
        f"{option}={read_secret(path, what=f'secret of {option}')}"
        for option, path in secrets.items()
    ]
    with log.open("ab") as out:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**{k: v for k, v in os.environ.items() if k not in NOT_INHERITED}, **extra},
            start_new_session=True,
        )
    return Proc(pid=popen.pid, pgid=popen.pid, argv=argv, env=extra, log=log, secret_args=secrets)


def respawn(
    proc: Proc, *, argv: list[str] | None = None, env: Mapping[str, str] | None = None
) -> Proc:
    """Start ``proc``'s program again as it was started (command line, environment,
    secret options, log), or with ``argv`` / ``env`` instead."""
    return spawn(
        proc.argv if argv is None else argv,
        env=proc.env if env is None else env,
        log=proc.log,
        secret_args=proc.secret_args,
    )


def _live(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and _live(p):
                members.append(p)
    return members


def alive(proc: Proc) -> bool:
    """True while the process itself runs (a zombie counts as dead)."""
    try:
        p = psutil.Process(proc.pid)
        return _live(p) and os.getpgid(proc.pid) == proc.pgid
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False


def alive_pid(pid: int) -> bool:
    """True while ``pid`` runs (not a zombie)."""
    try:
        return _live(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def tree(proc: Proc) -> list[psutil.Process]:
    """The process, its group and all its descendants, whatever group they moved to."""
    found: dict[int, psutil.Process] = {p.pid: p for p in group_members(proc.pgid)}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(proc.pid)
        found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    return [p for p in found.values() if _live(p)]


def kill(proc: Proc, *, sig: int = signal.SIGKILL, grace_s: float = 0.0) -> int:
    """Signal the whole tree of ``proc``; with ``grace_s`` > 0, SIGTERM first, then SIGKILL.

    Returns how many processes were signalled. Waits until none of them is left.
    """
    victims = tree(proc)
    if not victims:
        _reap(proc.pid)
        return 0
    if grace_s > 0 and sig == signal.SIGKILL:
        _signal_all(proc.pgid, victims, signal.SIGTERM)
        _signal_all(proc.pgid, _wait_dead(victims, grace_s), signal.SIGKILL)
    else:
        _signal_all(proc.pgid, victims, sig)
    if sig == signal.SIGKILL:
        left = _wait_dead(victims, 10)
        if left:
            raise RuntimeError(f"processes survived SIGKILL: {[p.pid for p in left]}")
    _reap(proc.pid)
    return len(victims)


def resume(proc: Proc) -> None:
    """SIGCONT the process group (harmless if it is not stopped)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pgid, signal.SIGCONT)


def _wait_dead(victims: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until no victim runs; returns those still running at the timeout.

    A zombie counts as dead: our orphans are reaped by init on its own schedule, and
    ``psutil.wait_procs`` would wait for that too.
    """
    deadline = time.monotonic() + timeout_s
    left = [p for p in victims if _live(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _live(p)]
    return left


def _signal_all(pgid: int, victims: list[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_for(
    what: str,
    check: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.25,
    on_fail: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            detail = f": {on_fail()}" if on_fail else ""
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s{detail}")
        time.sleep(interval_s)


def log_lines(path: Path, pattern: re.Pattern[str], last: int) -> str:
    """The last ``last`` lines of a log matching ``pattern``, joined; "" if none."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join([line for line in text if pattern.search(line)][-last:])


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, for error messages that point at the cause."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"

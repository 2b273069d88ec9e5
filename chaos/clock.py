"""A Keeper's wall clock, faked with libfaketime (Debian: ``libfaketime``).

A faked Keeper runs with ``LD_PRELOAD`` of ``libfaketimeMT.so.1`` (the thread-safe
build: a Keeper has threads) and reads its offset from a file of its own,
``<run_dir>/faketime/<keeper>.rc`` (``+90`` or ``-90``: seconds), at most a second old
(``FAKETIME_CACHE_DURATION=1``): rewriting the file jumps the clock of the running
process, as an NTP step would. Only the wall clock moves
(``FAKETIME_DONT_FAKE_MONOTONIC=1``): a real clock step never moves CLOCK_MONOTONIC, and
libfaketime moving it makes Python's timed waits hang (tried: ``Event.wait`` never
returns). ``clockshim/sitecustomize.py`` works around libfaketime's ``clock_nanosleep``
EINVAL in that mode (see there).

The Keeper's leadership is built to be immune: its lease expires by the DB's clock
(``ha_serving/store/_lease.py``), and its local deadline to stop acting is on the
monotonic clock (``ha_serving/keeper/_leadership.py``); the drill checks that it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

SHIM = Path(__file__).resolve().with_name("clockshim")
LIBRARIES = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
MARK = "HA_SERVING_CHAOS_FAKETIME"
"""Set in a faked Keeper's environment: the values the fake replaced (JSON), to restore."""
FAKED = (
    "LD_PRELOAD",
    "FAKETIME_TIMESTAMP_FILE",
    "FAKETIME_CACHE_DURATION",
    "FAKETIME_DONT_FAKE_MONOTONIC",
    "PYTHONPATH",
)


def library() -> Path | None:
    """libfaketime's thread-safe build, if installed."""
    for pattern in LIBRARIES:
        for found in sorted(Path("/").glob(pattern.lstrip("/"))):
            return found
    return None


def offset_file(run_dir: Path, keeper_id: str) -> Path:
    return run_dir / "faketime" / f"{keeper_id}.rc"


def write_offset(path: Path, offset_s: float) -> None:
    """The clock offset the faked process reads (whole seconds), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{round(offset_s):+d}\n")
    tmp.replace(path)


def read_offset(path: Path) -> int:
    return int(path.read_text().strip())


def faked_env(env: Mapping[str, str], lib: Path, rc: Path) -> dict[str, str]:
    """``env`` (what the Keeper's process adds to the inherited environment) plus what
    runs it under libfaketime, reading its offset from ``rc``."""
    base = {k: v for k, v in env.items() if k != MARK}
    before = {k: base.get(k) for k in FAKED}
    inherited = base.get("PYTHONPATH") or os.environ.get("PYTHONPATH", "")
    return {
        **base,
        "LD_PRELOAD": str(lib),
        "FAKETIME_TIMESTAMP_FILE": str(rc),
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(SHIM), inherited) if p),
        MARK: json.dumps(before),
    }


def is_faked(env: Mapping[str, str]) -> bool:
    return MARK in env


def real_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as it was before ``faked_env``."""
    if MARK not in env:
        return dict(env)
    before: dict[str, str | None] = json.loads(env[MARK])
    restored = {k: v for k, v in env.items() if k != MARK and k not in FAKED}
    restored.update({k: v for k, v in before.items() if v is not None})
    return restored

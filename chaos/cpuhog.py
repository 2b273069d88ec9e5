"""CPU starvation for a drill: ``workers`` busy processes for ``seconds`` at most, as one
process group of our own.

``stress-ng --cpu N --timeout Ss`` when it is installed (Debian: ``stress-ng``), else
``python -m chaos.cpuhog``: the same, in Python (forked workers spinning until a
deadline). Either stops by itself at the deadline; ``start`` returns its ``Proc``, and
the drill stops it earlier with ``infra.procs.kill`` (its process group and every
descendant).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from infra import procs
from infra.topology import Proc

ROOT = Path(__file__).resolve().parents[1]
MAX_WORKERS = 16
MAX_SECONDS = 600.0


def argv(workers: int, seconds: float, *, stress_ng: str | None = None) -> list[str]:
    if not 1 <= workers <= MAX_WORKERS or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"1..{MAX_WORKERS} workers for (0, {MAX_SECONDS:g}] seconds")
    if stress_ng:
        return [
            stress_ng, "--cpu", str(workers), "--timeout", f"{math.ceil(seconds)}s", "--quiet",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "chaos.cpuhog",
        "--workers", str(workers), "--seconds", f"{seconds:g}",
    ]  # fmt: skip


def start(workers: int, seconds: float, *, log: Path) -> Proc:
    """Start the hog in a process group of its own; it ends by itself after ``seconds``."""
    cmd = argv(workers, seconds, stress_ng=shutil.which("stress-ng"))
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return procs.spawn(cmd, env={"PYTHONPATH": path}, log=log)


def spin(deadline: float) -> int:
    """Busy until ``deadline`` (monotonic); how many rounds it spun."""
    rounds = 0
    x = 1
    while time.monotonic() < deadline:
        for _ in range(10_000):
            x = (x * 1_103_515_245 + 12_345) % 2_147_483_648
        rounds += 1
    return rounds


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Busy CPU workers until a deadline.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    opts = parser.parse_args(args)
    argv(opts.workers, opts.seconds)  # the same bounds as a drill's
    deadline = time.monotonic() + opts.seconds
    # forked, so the workers stay in this process group (a drill kills it by PGID)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=spin, args=(deadline,)) for _ in range(opts.workers - 1)]
    for w in workers:
        w.start()
    spin(deadline)
    for w in workers:
        w.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

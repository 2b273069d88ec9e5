"""``ray start`` with a patient wait for the node's own raylet to register.

    python -m infra.ray_start --register-wait-s 90 start --block --head ...

Ray 2.60's ``ray._private.node.Node.__init__`` gives a just-started raylet 30 s
(``raylet_start_wait_time_s``, hard-coded, no setting) to appear in the GCS's node table,
then ``ray start`` exits and the node is gone. A head restarted under GCS fault tolerance
first restores its tables from Redis; on this 2-core machine, with two other clusters,
the Keepers and client load sharing the CPU (Ray's processes run at nice 15), that took
longer than 30 s in a CI run (2026-11-30, `kill-head`: two starts died at 33 s and 34 s,
the third came up 17 s in). Each failed start also threw the GCS's restore away, so the
next one began from nothing under the same load.

This launcher runs Ray's own ``ray start`` CLI unchanged, except that the node-table
lookup in that wait (``ray._private.services.get_node``) keeps asking until
``--register-wait-s`` has passed since the first ask. A node that never registers still
fails, later. ``infra.stack.await_nodes`` bounds the whole start from outside and retries
it (tenacity) from a clean temp dir. ``tests/unit/test_ray_start.py`` fails if a Ray
upgrade changes the code this relies on.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

WAIT_LOOP_MARK = "raylet_start_wait_time_s = 30"
"""The line of ``ray._private.node`` this launcher works around (checked by a test)."""


def patient(
    get_node: Callable[..., Any], wait_s: float, *, poll_s: float = 0.5
) -> Callable[..., Any]:
    """``get_node`` that retries a "not found yet" (``RuntimeError``) for ``wait_s``
    counted from its first call; other errors and the last miss propagate."""
    first: list[float] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not first:
            first.append(time.monotonic())
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() - first[0] >= wait_s:
                    raise
                time.sleep(poll_s)

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--register-wait-s", type=float, required=True)
    parser.add_argument("ray_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    from ray._private import services
    from ray.scripts.scripts import main as ray_main

    services.get_node = patient(services.get_node, args.register_wait_s)
    sys.argv = ["ray", *args.ray_args]
    ray_main()  # type: ignore[no-untyped-call]  # Ray leaves its CLI unannotated
    return 0


if __name__ == "__main__":
    sys.exit(main())

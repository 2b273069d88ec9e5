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

And a second wait, in the raylet (C++): it waits for its dashboard agent to write its
HTTP port to ``<session dir>/dashboard_agent_listen_port_<node id>``, 15 s hard-coded
(``agent_register_timeout_ms`` does not reach it), and then crashes on purpose ("An
unexpected system state has occurred ... Timed out waiting for file"). The agent writes
it only once its HTTP server is up, after importing much: on this machine, under a
drill's load, a restarted head's agent took ~43 s, so every start of the head crashed
(CI run 20, `kill-head`; run 19, a cluster restart). Our nodes are given a fixed
``--dashboard-agent-listen-port``, so the file's content is known before the agent
starts: the launcher writes it (``announced``) just before Ray starts the raylet, and the
agent later overwrites it with the same port. Until the agent is up, what asks it (the
Job Submission API's agent) fails and is retried, as on any slow start.
"""

from __future__ import annotations

import argparse
import inspect
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


def announced(
    start_raylet: Callable[..., Any], persist_port: Callable[..., Any]
) -> Callable[..., Any]:
    """``start_raylet`` (``ray._private.services``) that first writes the dashboard
    agent's listen port file when that port is fixed, so the raylet need not wait for
    the agent (``persist_port``: ``ray._raylet.persist_port``)."""
    signature = inspect.signature(start_raylet)

    def call(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        port = bound.get("dashboard_agent_listen_port")
        if isinstance(port, int) and port > 0:
            persist_port(bound["session_dir"], bound["node_id"], LISTEN_PORT_NAME, port)
        return start_raylet(*args, **kwargs)

    return call


LISTEN_PORT_NAME = "dashboard_agent_listen_port"
"""Ray's ``DASHBOARD_AGENT_LISTEN_PORT_NAME`` (checked by a test)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--register-wait-s", type=float, required=True)
    parser.add_argument("ray_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    from ray._private import services
    from ray._raylet import persist_port  # type: ignore[attr-defined]
    from ray.scripts.scripts import main as ray_main

    services.get_node = patient(services.get_node, args.register_wait_s)
    services.start_raylet = announced(services.start_raylet, persist_port)
    sys.argv = ["ray", *args.ray_args]
    ray_main()  # type: ignore[no-untyped-call]  # Ray leaves its CLI unannotated
    return 0


if __name__ == "__main__":
    sys.exit(main())

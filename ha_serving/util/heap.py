"""Keep the collector's full passes off the data plane's latency.

A proxy or worker process holds ~100k long-lived objects before it serves a call: Ray's,
gRPC's and our modules. CPython's oldest-generation collection walks all of them, and on
this machine one took 27-92 ms (measured in a process with those imports) - the size of
the data plane's p99. ``gc.freeze()`` moves every object alive at that moment to a
permanent generation the collector never walks (the fix Instagram described for their
forked web workers), so later full passes only visit what the process made since.

Done once per process, at startup (the actor's constructor), and only in a Ray actor's
own process: freezing again after user code is loaded would pin that code's cyclic
garbage for good when a later update replaces it (a frozen object is still freed by
reference counting, never by the collector), and a test that builds the class in its
own process must not have its heap frozen under it.
"""

from __future__ import annotations

import gc
import sys

_frozen = False


def freeze_startup_heap() -> bool:
    """In a Ray actor's process, the first time: collect once, then freeze what is left.
    Returns whether this call froze."""
    global _frozen  # noqa: PLW0603 - once per process, by design
    if _frozen or not _in_ray_actor():
        return False
    gc.collect()
    gc.freeze()
    _frozen = True
    return True


def _in_ray_actor() -> bool:
    if "ray" not in sys.modules:  # an actor's process has imported Ray long before
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None

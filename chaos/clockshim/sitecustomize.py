"""Loaded first by a Keeper a drill runs under libfaketime (its PYTHONPATH starts here).

The drill fakes the wall clock only (``FAKETIME_DONT_FAKE_MONOTONIC=1``): an NTP step
moves CLOCK_REALTIME, never CLOCK_MONOTONIC. libfaketime 0.9.10 (Debian 12) then answers
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, …)``, which is how Python's
``time.sleep`` waits, with EINVAL. So ``time.sleep`` waits on an event with a timeout
instead (a futex wait on the monotonic clock, which libfaketime leaves alone): the same
real seconds. Nothing else is changed; the shim does nothing outside such a process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    wait = float(seconds)
    if wait < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(wait)


if os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1" and "faketime" in os.environ.get(
    "LD_PRELOAD", ""
):
    time.sleep = _sleep

"""Locust file of the autoscaling scenarios (run by ``loadtest/autoscale.py``, one Locust
process per service): ``locustfile.py``'s users, and a ``LoadTestShape`` playing a trace
of ``loadtest/shapes.py``.

Configured through the environment, besides ``locustfile.py``'s variables:
``HA_LOADTEST_TRACE`` (the trace's ``TraceParams`` as JSON), ``HA_LOADTEST_T0`` (the
trace's start, epoch seconds: the same for every process, so the four services see the
same second of the trace at the same time), ``HA_LOADTEST_USERS_1X`` (users at 1x).
Before T0 the shape holds the trace's first second (a warm-up); at its end it stops,
and a headless Locust then quits.
"""

from __future__ import annotations

import json
import os
import time

from locust import LoadTestShape

# its import makes gRPC cooperate with gevent (nothing above makes a gRPC object), and
# its users are the ones Locust runs
from loadtest.locustfile import ServingUser
from loadtest.shapes import TraceParams, build

__all__ = ["ServingUser", "TraceShape"]

TRACE = build(TraceParams(**json.loads(os.environ["HA_LOADTEST_TRACE"])))
T0 = float(os.environ["HA_LOADTEST_T0"])
USERS_1X = int(os.environ["HA_LOADTEST_USERS_1X"])
SPAWN_RATE = float(max(1, TRACE.users(0, USERS_1X), round(TRACE.peak * USERS_1X)))
"""Users started or stopped per second: at least the largest change, so each second's
count is reached within that second (Locust asks the shape once a second)."""


class TraceShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        t = time.time() - T0
        if t >= TRACE.duration_s:
            return None
        return TRACE.users(t, USERS_1X), SPAWN_RATE

"""The smallest service: echoes its input, with a prefix from its config."""

from __future__ import annotations

import random
import threading
import time

VERSION = "1"


class Echo:
    def __init__(self) -> None:
        self.prefix = ""
        self.fail_ratio = 0.0
        self.slots: threading.BoundedSemaphore | None = None

    def reconfigure(self, config: dict[str, object]) -> None:
        """Called in place on every config update; no restart, no new process.

        ``reconfigure_delay_s`` stands in for a slow model load (used by tests to make a
        rollout last long enough to kill the AppMaster in the middle of it);
        ``fail_ratio`` makes that share of calls fail (a bad release); ``slots`` (0: no
        limit) is how many ``work`` calls the instance runs at once, the others waiting
        their turn: an instance's capacity, as a model server's parallelism is."""
        time.sleep(float(config.get("reconfigure_delay_s", 0)))  # type: ignore[arg-type]
        self.prefix = str(config.get("prefix", ""))
        self.fail_ratio = float(config.get("fail_ratio", 0))  # type: ignore[arg-type]
        slots = int(config.get("slots", 0))  # type: ignore[call-overload]
        self.slots = threading.BoundedSemaphore(slots) if slots > 0 else None

    def echo(self, value: object) -> dict[str, object]:
        """``fail_ratio`` of the calls raise: a bad release, for canary drills."""
        if self.fail_ratio and random.random() < self.fail_ratio:  # noqa: S311 - a drill
            raise RuntimeError(f"bad release {self.prefix!r}: failing on purpose")
        return {"echo": value, "prefix": self.prefix, "version": VERSION}

    def work(self, seconds: float) -> float:
        """Hold the call ``seconds`` (a stand-in for a model's latency); tests use it to
        keep a known number of calls in flight on an instance. With ``slots``, a call
        first waits for a free slot, so a load above the instance's capacity queues and
        its latency grows (the autoscaling scenarios)."""
        if self.slots is None:
            time.sleep(float(seconds))
            return seconds
        with self.slots:
            time.sleep(float(seconds))
        return seconds

    def check_health(self) -> bool:
        return True

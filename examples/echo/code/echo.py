"""The smallest service: echoes its input, with a prefix from its config."""

from __future__ import annotations

import random
import time

VERSION = "1"


class Echo:
    def __init__(self) -> None:
        self.prefix = ""
        self.fail_ratio = 0.0

    def reconfigure(self, config: dict[str, object]) -> None:
        """Called in place on every config update; no restart, no new process.

        ``reconfigure_delay_s`` stands in for a slow model load (used by tests to make a
        rollout last long enough to kill the AppMaster in the middle of it);
        ``fail_ratio`` makes that share of calls fail (a bad release)."""
        time.sleep(float(config.get("reconfigure_delay_s", 0)))  # type: ignore[arg-type]
        self.prefix = str(config.get("prefix", ""))
        self.fail_ratio = float(config.get("fail_ratio", 0))  # type: ignore[arg-type]

    def echo(self, value: object) -> dict[str, object]:
        """``fail_ratio`` of the calls raise: a bad release, for canary drills."""
        if self.fail_ratio and random.random() < self.fail_ratio:  # noqa: S311 - a drill
            raise RuntimeError(f"bad release {self.prefix!r}: failing on purpose")
        return {"echo": value, "prefix": self.prefix, "version": VERSION}

    def work(self, seconds: float) -> float:
        """Hold the call ``seconds`` (a stand-in for a model's latency); tests use it to
        keep a known number of calls in flight on an instance."""
        time.sleep(float(seconds))
        return seconds

    def check_health(self) -> bool:
        return True

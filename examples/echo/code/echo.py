"""The smallest service: echoes its input, with a prefix from its config."""

from __future__ import annotations

import time

VERSION = "1"


class Echo:
    def __init__(self) -> None:
        self.prefix = ""

    def reconfigure(self, config: dict[str, object]) -> None:
        """Called in place on every config update; no restart, no new process.

        ``reconfigure_delay_s`` stands in for a slow model load (used by tests to make a
        rollout last long enough to kill the AppMaster in the middle of it)."""
        time.sleep(float(config.get("reconfigure_delay_s", 0)))  # type: ignore[arg-type]
        self.prefix = str(config.get("prefix", ""))

    def echo(self, value: object) -> dict[str, object]:
        return {"echo": value, "prefix": self.prefix, "version": VERSION}

    def check_health(self) -> bool:
        return True

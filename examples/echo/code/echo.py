"""The smallest service: echoes its input, with a prefix from its config."""

from __future__ import annotations

VERSION = "1"


class Echo:
    def __init__(self) -> None:
        self.prefix = ""

    def reconfigure(self, config: dict[str, object]) -> None:
        """Called in place on every config update; no restart, no new process."""
        self.prefix = str(config.get("prefix", ""))

    def echo(self, value: object) -> dict[str, object]:
        return {"echo": value, "prefix": self.prefix, "version": VERSION}

    def check_health(self) -> bool:
        return True

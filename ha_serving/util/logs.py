"""Structured logs with bound context: every line of a component names its subject."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class Bound(logging.LoggerAdapter[logging.Logger]):
    """A logger that appends ``key=value`` context (cluster, service, epoch…) to lines."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        context = " ".join(f"{k}={v}" for k, v in extra.items())
        return (f"{msg} [{context}]" if context else msg), kwargs

    def bind(self, **context: Any) -> Bound:
        return Bound(self.logger, {**(self.extra or {}), **context})


def bound(name: str, **context: Any) -> Bound:
    return Bound(logging.getLogger(name), context)

"""Background tasks that never fail silently.

Every long-running loop (reconciler, heartbeat, watch) starts through ``guard``: its
unexpected exit or exception is logged with the task's name, and the task object is kept
referenced so the event loop cannot garbage-collect it mid-flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

_tasks: set[asyncio.Task[Any]] = set()


def guard(
    coro: Coroutine[Any, Any, Any],
    *,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    loop: asyncio.AbstractEventLoop | None = None,
    finite: bool = False,
) -> asyncio.Task[Any]:
    """Start ``coro`` as a task on ``loop`` (default: the running loop), supervised.

    ``finite``: the task is meant to end (a probe, a drain), so only its failure is logged.
    """
    task = (loop or asyncio.get_running_loop()).create_task(coro, name=name)
    _tasks.add(task)

    def _done(t: asyncio.Task[Any]) -> None:
        _tasks.discard(t)
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            logger.error("background task %s failed", name, exc_info=exc)
        elif not finite:
            logger.warning("background task %s exited", name)

    task.add_done_callback(_done)
    return task

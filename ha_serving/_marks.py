"""Marks a service's class may put on its methods: ``from ha_serving import cheap``.

A mark is a plain attribute of the function, so a class that does not want to import
ha_serving can set it by hand (``echo.__ha_serving_cheap__ = True`` after the method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

CHEAP_ATTR = "__ha_serving_cheap__"
"""The attribute ``cheap`` sets on a method's function."""

_F = TypeVar("_F", bound=Callable[..., Any])


def cheap(fn: _F) -> _F:
    """Run this sync method on the worker's event loop, not in its thread pool.

    For methods that return in microseconds and never block (no I/O, no sleep, no lock,
    no long computation), where the hop to a thread and back costs more than the method.
    While one runs nothing else of the worker does: its other calls, its other
    instances, its direct server and its control calls all wait, so a blocking method
    marked cheap stalls the whole worker. ``async def`` methods need no mark: they run
    on the loop already.
    """
    setattr(fn, CHEAP_ATTR, True)
    return fn


def is_cheap(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` (a function or a bound method) is marked ``cheap``."""
    try:
        return getattr(fn, CHEAP_ATTR, False) is True
    except Exception:  # an odd callable whose attribute lookup raises is not marked
        return False

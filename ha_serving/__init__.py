"""ha-serving: a high-availability serving stack on Ray.

The supported API is what ``__all__`` lists; everything in ``_``-prefixed modules and in
the subpackages is internal and may change.
"""

from ha_serving._errors import (
    ConflictError,
    HAServingError,
    InvalidSpec,
    LeaseLost,
    PlatformError,
    StackError,
    StoreUnavailable,
    TransientError,
    UnknownService,
    UserError,
)
from ha_serving._marks import cheap
from ha_serving._settings import Settings, StackSettings, StoreSettings

__all__ = [
    "ConflictError",
    "HAServingError",
    "InvalidSpec",
    "LeaseLost",
    "PlatformError",
    "Settings",
    "StackError",
    "StackSettings",
    "StoreSettings",
    "StoreUnavailable",
    "TransientError",
    "UnknownService",
    "UserError",
    "cheap",
]

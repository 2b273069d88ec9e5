"""Durable state: services, operations, AppMaster state, leases and the audit log.

One ``Store`` over SQLAlchemy Core serves MySQL/MariaDB (``mysql+pymysql://``, for HA)
and SQLite (``sqlite:///file``, for a laptop) with the same statements. The schema is
versioned and migrated by ``Store.connect``.
"""

from ha_serving.store._catalog import Endpoint, UnknownPackage
from ha_serving.store._control import (
    AppMasterBeat,
    AppMasterRecord,
    ClusterRecord,
    Instruction,
    InstructionsRead,
)
from ha_serving.store._credentials import CredentialRecord
from ha_serving.store._engine import TimeSource, db_now, safe_url, store_retry
from ha_serving.store._lease import KEEPER_LEADER, Lease
from ha_serving.store._records import (
    AlreadyExists,
    CapacityFloor,
    EventRecord,
    OperationRecord,
    ServiceRecord,
    UnknownOperation,
)
from ha_serving.store._ref import StoreRef
from ha_serving.store._schema import SCHEMA_VERSION, SchemaTooNew, migrate
from ha_serving.store._store import Store, Target

__all__ = [
    "KEEPER_LEADER",
    "SCHEMA_VERSION",
    "AlreadyExists",
    "AppMasterBeat",
    "AppMasterRecord",
    "CapacityFloor",
    "ClusterRecord",
    "CredentialRecord",
    "Endpoint",
    "EventRecord",
    "Instruction",
    "InstructionsRead",
    "Lease",
    "OperationRecord",
    "SchemaTooNew",
    "ServiceRecord",
    "Store",
    "StoreRef",
    "Target",
    "TimeSource",
    "UnknownOperation",
    "UnknownPackage",
    "db_now",
    "migrate",
    "safe_url",
    "store_retry",
]

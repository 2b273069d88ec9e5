from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeployRequest(_message.Message):
    __slots__ = ("spec_json", "package", "op_id", "kind", "options_json")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    package: bytes
    op_id: str
    kind: str
    options_json: str
    def __init__(self, spec_json: _Optional[str] = ..., package: _Optional[bytes] = ..., op_id: _Optional[str] = ..., kind: _Optional[str] = ..., options_json: _Optional[str] = ...) -> None: ...

class CommandRequest(_message.Message):
    __slots__ = ("op_id", "command")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    command: str
    def __init__(self, op_id: _Optional[str] = ..., command: _Optional[str] = ...) -> None: ...

class DeployReply(_message.Message):
    __slots__ = ("op_id", "duplicate")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    duplicate: bool
    def __init__(self, op_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ServiceRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("spec_json", "package", "generation")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    package: str
    generation: int
    def __init__(self, spec_json: _Optional[str] = ..., package: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class OperationInfo(_message.Message):
    __slots__ = ("op_id", "kind", "status", "step", "plan_json", "epoch", "error", "progress_json", "command")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_JSON_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    kind: str
    status: str
    step: int
    plan_json: str
    epoch: int
    error: str
    progress_json: str
    command: str
    def __init__(self, op_id: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., step: _Optional[int] = ..., plan_json: _Optional[str] = ..., epoch: _Optional[int] = ..., error: _Optional[str] = ..., progress_json: _Optional[str] = ..., command: _Optional[str] = ...) -> None: ...

class OperationsRequest(_message.Message):
    __slots__ = ("service", "op_id", "limit", "page_token")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    op_id: str
    limit: int
    page_token: str
    def __init__(self, service: _Optional[str] = ..., op_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class OperationsReply(_message.Message):
    __slots__ = ("operations", "next_page_token")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[OperationInfo]
    next_page_token: str
    def __init__(self, operations: _Optional[_Iterable[_Union[OperationInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InstructionsRequest(_message.Message):
    __slots__ = ("cluster", "service", "after", "actor_name", "epoch_seen")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_SEEN_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    service: str
    after: int
    actor_name: str
    epoch_seen: int
    def __init__(self, cluster: _Optional[str] = ..., service: _Optional[str] = ..., after: _Optional[int] = ..., actor_name: _Optional[str] = ..., epoch_seen: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("cluster", "service", "actor_name", "epoch_seen")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_SEEN_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    service: str
    actor_name: str
    epoch_seen: int
    def __init__(self, cluster: _Optional[str] = ..., service: _Optional[str] = ..., actor_name: _Optional[str] = ..., epoch_seen: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstructionMsg(_message.Message):
    __slots__ = ("id", "op_id", "epoch", "body_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    op_id: str
    epoch: int
    body_json: str
    def __init__(self, id: _Optional[int] = ..., op_id: _Optional[str] = ..., epoch: _Optional[int] = ..., body_json: _Optional[str] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "cluster", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    address: str
    cluster: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, address: _Optional[str] = ..., cluster: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Endpoints(_message.Message):
    __slots__ = ("service", "endpoints")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    service: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, service: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeeperStatus(_message.Message):
    __slots__ = ("keeper_id", "address", "leader", "epoch", "leader_id")
    KEEPER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    keeper_id: str
    address: str
    leader: bool
    epoch: int
    leader_id: str
    def __init__(self, keeper_id: _Optional[str] = ..., address: _Optional[str] = ..., leader: _Optional[bool] = ..., epoch: _Optional[int] = ..., leader_id: _Optional[str] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallRequest(_message.Message):
    __slots__ = ("service", "method", "payload", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    service: str
    method: str
    payload: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, service: _Optional[str] = ..., method: _Optional[str] = ..., payload: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("payload", "instance_id", "version", "cluster")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    instance_id: str
    version: str
    cluster: str
    def __init__(self, payload: _Optional[bytes] = ..., instance_id: _Optional[str] = ..., version: _Optional[str] = ..., cluster: _Optional[str] = ...) -> None: ...

class RoutesRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class RoutesReply(_message.Message):
    __slots__ = ("service", "version", "cluster", "candidate_weight", "workers")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: int
    cluster: str
    candidate_weight: int
    workers: _containers.RepeatedCompositeFieldContainer[DirectWorker]
    def __init__(self, service: _Optional[str] = ..., version: _Optional[int] = ..., cluster: _Optional[str] = ..., candidate_weight: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[DirectWorker, _Mapping]]] = ...) -> None: ...

class DirectWorker(_message.Message):
    __slots__ = ("worker", "address", "instances")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    worker: str
    address: str
    instances: _containers.RepeatedCompositeFieldContainer[DirectInstance]
    def __init__(self, worker: _Optional[str] = ..., address: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[DirectInstance, _Mapping]]] = ...) -> None: ...

class DirectInstance(_message.Message):
    __slots__ = ("instance_id", "version", "group", "max_concurrency")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    version: str
    group: str
    max_concurrency: int
    def __init__(self, instance_id: _Optional[str] = ..., version: _Optional[str] = ..., group: _Optional[str] = ..., max_concurrency: _Optional[int] = ...) -> None: ...

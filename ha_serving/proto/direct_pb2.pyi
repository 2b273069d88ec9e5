from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DirectCall(_message.Message):
    __slots__ = ("worker", "instance_id", "method", "payload")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    worker: str
    instance_id: str
    method: str
    payload: bytes
    def __init__(self, worker: _Optional[str] = ..., instance_id: _Optional[str] = ..., method: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class DirectResult(_message.Message):
    __slots__ = ("ok", "payload", "code", "message", "instance_id", "version", "reached_user_code")
    OK_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REACHED_USER_CODE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    payload: bytes
    code: str
    message: str
    instance_id: str
    version: str
    reached_user_code: bool
    def __init__(self, ok: _Optional[bool] = ..., payload: _Optional[bytes] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., instance_id: _Optional[str] = ..., version: _Optional[str] = ..., reached_user_code: _Optional[bool] = ...) -> None: ...

class DirectPing(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: str
    def __init__(self, worker: _Optional[str] = ...) -> None: ...

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

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

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from taskservice.v1 import permissions_pb2 as _permissions_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USER_KIND_UNSPECIFIED: _ClassVar[UserKind]
    USER_KIND_HUMAN: _ClassVar[UserKind]
    USER_KIND_SERVICE: _ClassVar[UserKind]
USER_KIND_UNSPECIFIED: UserKind
USER_KIND_HUMAN: UserKind
USER_KIND_SERVICE: UserKind

class User(_message.Message):
    __slots__ = ("id", "email", "is_active", "is_admin", "create_time", "update_time", "kind", "display_name", "permissions")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    IS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    IS_ADMIN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    id: int
    email: str
    is_active: bool
    is_admin: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    kind: UserKind
    display_name: str
    permissions: _containers.RepeatedScalarFieldContainer[_permissions_pb2.Permission]
    def __init__(self, id: _Optional[int] = ..., email: _Optional[str] = ..., is_active: _Optional[bool] = ..., is_admin: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[UserKind, str]] = ..., display_name: _Optional[str] = ..., permissions: _Optional[_Iterable[_Union[_permissions_pb2.Permission, str]]] = ...) -> None: ...

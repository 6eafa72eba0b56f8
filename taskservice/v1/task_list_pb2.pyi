import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskListRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_LIST_ROLE_UNSPECIFIED: _ClassVar[TaskListRole]
    TASK_LIST_ROLE_VIEWER: _ClassVar[TaskListRole]
    TASK_LIST_ROLE_EDITOR: _ClassVar[TaskListRole]
    TASK_LIST_ROLE_OWNER: _ClassVar[TaskListRole]
TASK_LIST_ROLE_UNSPECIFIED: TaskListRole
TASK_LIST_ROLE_VIEWER: TaskListRole
TASK_LIST_ROLE_EDITOR: TaskListRole
TASK_LIST_ROLE_OWNER: TaskListRole

class TaskList(_message.Message):
    __slots__ = ("id", "title", "description", "owner_id", "create_time", "update_time", "etag", "delete_time", "purge_time", "personal")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    PURGE_TIME_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_FIELD_NUMBER: _ClassVar[int]
    id: int
    title: str
    description: str
    owner_id: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    delete_time: _timestamp_pb2.Timestamp
    purge_time: _timestamp_pb2.Timestamp
    personal: bool
    def __init__(self, id: _Optional[int] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., owner_id: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., purge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., personal: _Optional[bool] = ...) -> None: ...

class TaskListMember(_message.Message):
    __slots__ = ("task_list_id", "user_id", "role", "create_time", "email")
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    task_list_id: int
    user_id: int
    role: TaskListRole
    create_time: _timestamp_pb2.Timestamp
    email: str
    def __init__(self, task_list_id: _Optional[int] = ..., user_id: _Optional[int] = ..., role: _Optional[_Union[TaskListRole, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., email: _Optional[str] = ...) -> None: ...

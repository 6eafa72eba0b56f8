from google.protobuf import field_mask_pb2 as _field_mask_pb2
from taskservice.v1 import permissions_pb2 as _permissions_pb2
from taskservice.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskListAccessChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_LIST_ACCESS_CHANGE_TYPE_UNSPECIFIED: _ClassVar[TaskListAccessChangeType]
    TASK_LIST_ACCESS_CHANGE_TYPE_GRANTED: _ClassVar[TaskListAccessChangeType]
    TASK_LIST_ACCESS_CHANGE_TYPE_REVOKED: _ClassVar[TaskListAccessChangeType]

class TaskChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_CHANGE_TYPE_UNSPECIFIED: _ClassVar[TaskChangeType]
    TASK_CHANGE_TYPE_CREATED: _ClassVar[TaskChangeType]
    TASK_CHANGE_TYPE_UPDATED: _ClassVar[TaskChangeType]
    TASK_CHANGE_TYPE_DELETED: _ClassVar[TaskChangeType]
    TASK_CHANGE_TYPE_UNDELETED: _ClassVar[TaskChangeType]
    TASK_CHANGE_TYPE_PURGED: _ClassVar[TaskChangeType]
    TASK_CHANGE_TYPE_HIDDEN: _ClassVar[TaskChangeType]
TASK_LIST_ACCESS_CHANGE_TYPE_UNSPECIFIED: TaskListAccessChangeType
TASK_LIST_ACCESS_CHANGE_TYPE_GRANTED: TaskListAccessChangeType
TASK_LIST_ACCESS_CHANGE_TYPE_REVOKED: TaskListAccessChangeType
TASK_CHANGE_TYPE_UNSPECIFIED: TaskChangeType
TASK_CHANGE_TYPE_CREATED: TaskChangeType
TASK_CHANGE_TYPE_UPDATED: TaskChangeType
TASK_CHANGE_TYPE_DELETED: TaskChangeType
TASK_CHANGE_TYPE_UNDELETED: TaskChangeType
TASK_CHANGE_TYPE_PURGED: TaskChangeType
TASK_CHANGE_TYPE_HIDDEN: TaskChangeType

class ListTasksRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "owner_id", "filter", "order_by", "show_deleted")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    SHOW_DELETED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: _task_pb2.TaskStatus
    owner_id: int
    filter: str
    order_by: str
    show_deleted: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[_task_pb2.TaskStatus, str]] = ..., owner_id: _Optional[int] = ..., filter: _Optional[str] = ..., order_by: _Optional[str] = ..., show_deleted: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token", "revision")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    next_page_token: str
    revision: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class CreateTaskRequest(_message.Message):
    __slots__ = ("task", "request_id")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    request_id: str
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task", "revision")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    revision: int
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class BatchGetTasksRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class BatchGetTasksResponse(_message.Message):
    __slots__ = ("tasks", "revision")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    revision: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class UpdateTaskRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class UpdateTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class PatchTaskRequest(_message.Message):
    __slots__ = ("task", "update_mask")
    TASK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class PatchTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class DeleteTaskRequest(_message.Message):
    __slots__ = ("id", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: int
    etag: str
    def __init__(self, id: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class DeleteTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class MoveTaskRequest(_message.Message):
    __slots__ = ("id", "parent_id", "previous_id", "etag", "task_list_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    parent_id: int
    previous_id: int
    etag: str
    task_list_id: int
    def __init__(self, id: _Optional[int] = ..., parent_id: _Optional[int] = ..., previous_id: _Optional[int] = ..., etag: _Optional[str] = ..., task_list_id: _Optional[int] = ...) -> None: ...

class MoveTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class UndeleteTaskRequest(_message.Message):
    __slots__ = ("id", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: int
    etag: str
    def __init__(self, id: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class UndeleteTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class WatchTasksRequest(_message.Message):
    __slots__ = ("start_revision", "filter", "owner_id", "max_changes_per_response")
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_CHANGES_PER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    start_revision: int
    filter: str
    owner_id: int
    max_changes_per_response: int
    def __init__(self, start_revision: _Optional[int] = ..., filter: _Optional[str] = ..., owner_id: _Optional[int] = ..., max_changes_per_response: _Optional[int] = ...) -> None: ...

class WatchTasksResponse(_message.Message):
    __slots__ = ("revision", "change", "access_change", "events")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_CHANGE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    change: TaskChange
    access_change: TaskListAccessChange
    events: _containers.RepeatedCompositeFieldContainer[WatchTasksEvent]
    def __init__(self, revision: _Optional[int] = ..., change: _Optional[_Union[TaskChange, _Mapping]] = ..., access_change: _Optional[_Union[TaskListAccessChange, _Mapping]] = ..., events: _Optional[_Iterable[_Union[WatchTasksEvent, _Mapping]]] = ...) -> None: ...

class WatchTasksEvent(_message.Message):
    __slots__ = ("revision", "change", "access_change")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_CHANGE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    change: TaskChange
    access_change: TaskListAccessChange
    def __init__(self, revision: _Optional[int] = ..., change: _Optional[_Union[TaskChange, _Mapping]] = ..., access_change: _Optional[_Union[TaskListAccessChange, _Mapping]] = ...) -> None: ...

class TaskListAccessChange(_message.Message):
    __slots__ = ("type", "task_list_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    type: TaskListAccessChangeType
    task_list_id: int
    def __init__(self, type: _Optional[_Union[TaskListAccessChangeType, str]] = ..., task_list_id: _Optional[int] = ...) -> None: ...

class TaskChange(_message.Message):
    __slots__ = ("type", "task")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    type: TaskChangeType
    task: _task_pb2.Task
    def __init__(self, type: _Optional[_Union[TaskChangeType, str]] = ..., task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

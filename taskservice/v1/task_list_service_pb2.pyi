from google.protobuf import field_mask_pb2 as _field_mask_pb2
from taskservice.v1 import permissions_pb2 as _permissions_pb2
from taskservice.v1 import task_list_pb2 as _task_list_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListTaskListsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "member_id", "show_deleted")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SHOW_DELETED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    member_id: int
    show_deleted: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., member_id: _Optional[int] = ..., show_deleted: _Optional[bool] = ...) -> None: ...

class ListTaskListsResponse(_message.Message):
    __slots__ = ("task_lists", "next_page_token")
    TASK_LISTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_lists: _containers.RepeatedCompositeFieldContainer[_task_list_pb2.TaskList]
    next_page_token: str
    def __init__(self, task_lists: _Optional[_Iterable[_Union[_task_list_pb2.TaskList, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateTaskListRequest(_message.Message):
    __slots__ = ("task_list", "request_id")
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    task_list: _task_list_pb2.TaskList
    request_id: str
    def __init__(self, task_list: _Optional[_Union[_task_list_pb2.TaskList, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTaskListResponse(_message.Message):
    __slots__ = ("task_list",)
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    task_list: _task_list_pb2.TaskList
    def __init__(self, task_list: _Optional[_Union[_task_list_pb2.TaskList, _Mapping]] = ...) -> None: ...

class GetTaskListRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class GetTaskListResponse(_message.Message):
    __slots__ = ("task_list",)
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    task_list: _task_list_pb2.TaskList
    def __init__(self, task_list: _Optional[_Union[_task_list_pb2.TaskList, _Mapping]] = ...) -> None: ...

class UpdateTaskListRequest(_message.Message):
    __slots__ = ("task_list", "update_mask")
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    task_list: _task_list_pb2.TaskList
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, task_list: _Optional[_Union[_task_list_pb2.TaskList, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateTaskListResponse(_message.Message):
    __slots__ = ("task_list",)
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    task_list: _task_list_pb2.TaskList
    def __init__(self, task_list: _Optional[_Union[_task_list_pb2.TaskList, _Mapping]] = ...) -> None: ...

class DeleteTaskListRequest(_message.Message):
    __slots__ = ("id", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: int
    etag: str
    def __init__(self, id: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class DeleteTaskListResponse(_message.Message):
    __slots__ = ("task_list",)
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    task_list: _task_list_pb2.TaskList
    def __init__(self, task_list: _Optional[_Union[_task_list_pb2.TaskList, _Mapping]] = ...) -> None: ...

class UndeleteTaskListRequest(_message.Message):
    __slots__ = ("id", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: int
    etag: str
    def __init__(self, id: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class UndeleteTaskListResponse(_message.Message):
    __slots__ = ("task_list",)
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    task_list: _task_list_pb2.TaskList
    def __init__(self, task_list: _Optional[_Union[_task_list_pb2.TaskList, _Mapping]] = ...) -> None: ...

class ListTaskListMembersRequest(_message.Message):
    __slots__ = ("task_list_id", "page_size", "page_token")
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_list_id: int
    page_size: int
    page_token: str
    def __init__(self, task_list_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTaskListMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[_task_list_pb2.TaskListMember]
    next_page_token: str
    def __init__(self, members: _Optional[_Iterable[_Union[_task_list_pb2.TaskListMember, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AddTaskListMemberRequest(_message.Message):
    __slots__ = ("task_list_id", "member", "email")
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    task_list_id: int
    member: _task_list_pb2.TaskListMember
    email: str
    def __init__(self, task_list_id: _Optional[int] = ..., member: _Optional[_Union[_task_list_pb2.TaskListMember, _Mapping]] = ..., email: _Optional[str] = ...) -> None: ...

class AddTaskListMemberResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: _task_list_pb2.TaskListMember
    def __init__(self, member: _Optional[_Union[_task_list_pb2.TaskListMember, _Mapping]] = ...) -> None: ...

class UpdateTaskListMemberRequest(_message.Message):
    __slots__ = ("task_list_id", "user_id", "role")
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    task_list_id: int
    user_id: int
    role: _task_list_pb2.TaskListRole
    def __init__(self, task_list_id: _Optional[int] = ..., user_id: _Optional[int] = ..., role: _Optional[_Union[_task_list_pb2.TaskListRole, str]] = ...) -> None: ...

class UpdateTaskListMemberResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: _task_list_pb2.TaskListMember
    def __init__(self, member: _Optional[_Union[_task_list_pb2.TaskListMember, _Mapping]] = ...) -> None: ...

class RemoveTaskListMemberRequest(_message.Message):
    __slots__ = ("task_list_id", "user_id")
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    task_list_id: int
    user_id: int
    def __init__(self, task_list_id: _Optional[int] = ..., user_id: _Optional[int] = ...) -> None: ...

class RemoveTaskListMemberResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveTaskListRequest(_message.Message):
    __slots__ = ("task_list_id",)
    TASK_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    task_list_id: int
    def __init__(self, task_list_id: _Optional[int] = ...) -> None: ...

class LeaveTaskListResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

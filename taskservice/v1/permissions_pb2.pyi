from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class Permission(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERMISSION_UNSPECIFIED: _ClassVar[Permission]
    PERMISSION_PUBLIC: _ClassVar[Permission]
    PERMISSION_TASKS_READ: _ClassVar[Permission]
    PERMISSION_TASKS_WRITE: _ClassVar[Permission]
    PERMISSION_TASKS_READ_ALL: _ClassVar[Permission]
    PERMISSION_TASKS_WRITE_ALL: _ClassVar[Permission]
    PERMISSION_USERS_READ: _ClassVar[Permission]
    PERMISSION_USERS_MANAGE: _ClassVar[Permission]
    PERMISSION_API_KEYS_MANAGE: _ClassVar[Permission]
    PERMISSION_AUDIT_READ: _ClassVar[Permission]
    PERMISSION_ACCOUNT_MANAGE: _ClassVar[Permission]
PERMISSION_UNSPECIFIED: Permission
PERMISSION_PUBLIC: Permission
PERMISSION_TASKS_READ: Permission
PERMISSION_TASKS_WRITE: Permission
PERMISSION_TASKS_READ_ALL: Permission
PERMISSION_TASKS_WRITE_ALL: Permission
PERMISSION_USERS_READ: Permission
PERMISSION_USERS_MANAGE: Permission
PERMISSION_API_KEYS_MANAGE: Permission
PERMISSION_AUDIT_READ: Permission
PERMISSION_ACCOUNT_MANAGE: Permission
REQUIRES_FIELD_NUMBER: _ClassVar[int]
requires: _descriptor.FieldDescriptor
PERMISSION_NAME_FIELD_NUMBER: _ClassVar[int]
permission_name: _descriptor.FieldDescriptor

"""TaskListService: task lists and their members, for both edges.

The HTTP edge calls these same methods with no gRPC context (None), so they never touch it.
"""

from __future__ import annotations

from typing import Any

import grpc

from taskservice.api.authentication import authenticated
from taskservice.api.convert import time_fields
from taskservice.db.models import TaskList
from taskservice.services.principal import Principal
from taskservice.services.shared_lists import Member, TaskListService, list_etag
from taskservice.v1 import task_list_pb2, task_list_service_pb2_grpc
from taskservice.v1 import task_list_service_pb2 as pb


def task_list_fields(task_list: TaskList) -> dict[str, Any]:
    """A list's message fields."""
    fields: dict[str, Any] = {
        "id": task_list.id,
        "title": task_list.title,
        "description": task_list.description,
        "owner_id": task_list.owner_id,
        "create_time": time_fields(task_list.create_time),
        "update_time": time_fields(task_list.update_time),
        "etag": list_etag(task_list),
        "personal": task_list.personal,
    }
    if task_list.delete_time is not None:
        fields["delete_time"] = time_fields(task_list.delete_time)
    if task_list.purge_time is not None:
        fields["purge_time"] = time_fields(task_list.purge_time)
    return fields


def member_to_proto(member: Member) -> task_list_pb2.TaskListMember:
    """A membership as clients see it."""
    return task_list_pb2.TaskListMember(
        task_list_id=member.task_list_id,
        user_id=member.user_id,
        role=member.role,
        create_time=time_fields(member.create_time),
        email=member.email,
    )


class TaskListServicer(task_list_service_pb2_grpc.TaskListServiceServicer):
    """Adapts TaskListService requests to the task list service."""

    def __init__(self, lists: TaskListService) -> None:
        self._lists = lists

    @authenticated
    async def ListTaskLists(
        self,
        request: pb.ListTaskListsRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.ListTaskListsResponse:
        """One page of the lists the caller (or `member_id`) is a member of."""
        page = await self._lists.list_lists(
            principal,
            request.page_size,
            request.page_token,
            request.member_id if request.HasField("member_id") else None,
            request.show_deleted,
        )
        return pb.ListTaskListsResponse(
            task_lists=[task_list_fields(task_list) for task_list in page.task_lists],
            next_page_token=page.next_page_token,
        )

    @authenticated
    async def CreateTaskList(
        self,
        request: pb.CreateTaskListRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.CreateTaskListResponse:
        """Create a list with the caller as its owner."""
        task_list = await self._lists.create_list(
            principal,
            request.task_list.title,
            request.task_list.description,
            request.request_id,
        )
        return pb.CreateTaskListResponse(task_list=task_list_fields(task_list))

    @authenticated
    async def GetTaskList(
        self,
        request: pb.GetTaskListRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.GetTaskListResponse:
        """One list."""
        task_list = await self._lists.get_list(principal, request.id)
        return pb.GetTaskListResponse(task_list=task_list_fields(task_list))

    @authenticated
    async def UpdateTaskList(
        self,
        request: pb.UpdateTaskListRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.UpdateTaskListResponse:
        """Change the fields named in the update mask."""
        task_list = await self._lists.update_list(
            principal,
            request.task_list.id,
            frozenset(request.update_mask.paths),
            request.task_list.title,
            request.task_list.description,
            request.task_list.etag,
        )
        return pb.UpdateTaskListResponse(task_list=task_list_fields(task_list))

    @authenticated
    async def DeleteTaskList(
        self,
        request: pb.DeleteTaskListRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.DeleteTaskListResponse:
        """Move a list and its tasks to the trash."""
        task_list = await self._lists.delete_list(principal, request.id, request.etag)
        return pb.DeleteTaskListResponse(task_list=task_list_fields(task_list))

    @authenticated
    async def UndeleteTaskList(
        self,
        request: pb.UndeleteTaskListRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.UndeleteTaskListResponse:
        """Bring a list and its tasks back from the trash."""
        task_list = await self._lists.undelete_list(principal, request.id, request.etag)
        return pb.UndeleteTaskListResponse(task_list=task_list_fields(task_list))

    @authenticated
    async def ListTaskListMembers(
        self,
        request: pb.ListTaskListMembersRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.ListTaskListMembersResponse:
        """One page of a list's members."""
        page = await self._lists.list_members(
            principal, request.task_list_id, request.page_size, request.page_token
        )
        return pb.ListTaskListMembersResponse(
            members=[member_to_proto(member) for member in page.members],
            next_page_token=page.next_page_token,
        )

    @authenticated
    async def AddTaskListMember(
        self,
        request: pb.AddTaskListMemberRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.AddTaskListMemberResponse:
        """Add a member with a role."""
        member = await self._lists.add_member(
            principal,
            request.task_list_id,
            request.member.user_id,
            request.email,
            request.member.role,
        )
        return pb.AddTaskListMemberResponse(member=member_to_proto(member))

    @authenticated
    async def UpdateTaskListMember(
        self,
        request: pb.UpdateTaskListMemberRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.UpdateTaskListMemberResponse:
        """Change a member's role."""
        member = await self._lists.update_member(
            principal, request.task_list_id, request.user_id, request.role
        )
        return pb.UpdateTaskListMemberResponse(member=member_to_proto(member))

    @authenticated
    async def RemoveTaskListMember(
        self,
        request: pb.RemoveTaskListMemberRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.RemoveTaskListMemberResponse:
        """Remove a member."""
        await self._lists.remove_member(principal, request.task_list_id, request.user_id)
        return pb.RemoveTaskListMemberResponse()

    @authenticated
    async def LeaveTaskList(
        self,
        request: pb.LeaveTaskListRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.LeaveTaskListResponse:
        """The caller leaves a list."""
        await self._lists.leave_list(principal, request.task_list_id)
        return pb.LeaveTaskListResponse()

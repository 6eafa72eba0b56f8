"""TaskService over gRPC: owner-scoped task CRUD and lists."""

from __future__ import annotations

import grpc

from taskservice.api.authentication import authenticated
from taskservice.api.convert import status_from_proto, task_to_proto, task_values
from taskservice.services.principal import Principal
from taskservice.services.tasks import TaskService
from taskservice.v1 import task_service_pb2 as pb
from taskservice.v1 import task_service_pb2_grpc


class TaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """Adapts TaskService requests to the task service."""

    def __init__(self, tasks: TaskService) -> None:
        self._tasks = tasks

    @authenticated
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.ListTasksResponse:
        """One page of tasks, filtered and ordered as asked."""
        status, bad_status = status_from_proto(request.status, "status")
        page = await self._tasks.list_tasks(
            principal,
            request.page_size,
            request.page_token,
            status,
            request.owner_id if request.HasField("owner_id") else None,
            request.filter,
            request.order_by,
            request.show_deleted,
            [bad_status] if bad_status else [],
        )
        return pb.ListTasksResponse(
            tasks=[task_to_proto(task) for task in page.tasks],
            next_page_token=page.next_page_token,
        )

    @authenticated
    async def CreateTask(
        self, request: pb.CreateTaskRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.CreateTaskResponse:
        """Create a task, once per request_id."""
        task = await self._tasks.create_task(
            principal, task_values(request.task), request.task.owner_id, request.request_id
        )
        return pb.CreateTaskResponse(task=task_to_proto(task))

    @authenticated
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.GetTaskResponse:
        """One task."""
        return pb.GetTaskResponse(
            task=task_to_proto(await self._tasks.get_task(principal, request.id))
        )

    @authenticated
    async def BatchGetTasks(
        self,
        request: pb.BatchGetTasksRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.BatchGetTasksResponse:
        """Several tasks, in the order asked."""
        tasks = await self._tasks.batch_get_tasks(principal, list(request.ids))
        return pb.BatchGetTasksResponse(tasks=[task_to_proto(task) for task in tasks])

    @authenticated
    async def UpdateTask(
        self, request: pb.UpdateTaskRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.UpdateTaskResponse:
        """Replace a task's writable fields."""
        task = await self._tasks.update_task(
            principal, request.task.id, task_values(request.task), request.task.etag
        )
        return pb.UpdateTaskResponse(task=task_to_proto(task))

    @authenticated
    async def PatchTask(
        self, request: pb.PatchTaskRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.PatchTaskResponse:
        """Change the fields named in the update mask."""
        paths = frozenset(request.update_mask.paths)
        task = await self._tasks.patch_task(
            principal, request.task.id, paths, task_values(request.task, paths), request.task.etag
        )
        return pb.PatchTaskResponse(task=task_to_proto(task))

    @authenticated
    async def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.DeleteTaskResponse:
        """Move a task to the trash."""
        task = await self._tasks.delete_task(principal, request.id, request.etag)
        return pb.DeleteTaskResponse(task=task_to_proto(task))

    @authenticated
    async def MoveTask(
        self, request: pb.MoveTaskRequest, context: grpc.aio.ServicerContext, principal: Principal
    ) -> pb.MoveTaskResponse:
        """Put a task (and its subtree) under a parent, after a sibling."""
        task = await self._tasks.move_task(
            principal, request.id, request.parent_id, request.previous_id, request.etag
        )
        return pb.MoveTaskResponse(task=task_to_proto(task))

    @authenticated
    async def UndeleteTask(
        self,
        request: pb.UndeleteTaskRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> pb.UndeleteTaskResponse:
        """Bring a task back from the trash."""
        task = await self._tasks.undelete_task(principal, request.id, request.etag)
        return pb.UndeleteTaskResponse(task=task_to_proto(task))

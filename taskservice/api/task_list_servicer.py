"""TaskListService: task lists and their members, for both edges.

The HTTP edge calls these same methods with no gRPC context (None), so they never touch it.
"""

from __future__ import annotations

from taskservice.v1 import task_list_service_pb2_grpc


class TaskListServicer(task_list_service_pb2_grpc.TaskListServiceServicer):
    """Adapts TaskListService requests to the task list service."""

"""Helpers for WatchTasks tests: read a stream until a condition holds, within a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from taskservice.v1 import task_service_pb2 as pb

#: Generous bound for anything a stream should deliver on a loaded 2-core machine.
DEADLINE = 20.0


async def read_until(
    stream: Any,
    done: Callable[[list[pb.WatchTasksResponse]], bool],
    deadline: float = DEADLINE,
) -> list[pb.WatchTasksResponse]:
    """Read responses until `done(responses)` holds; fail if the stream ends or the time passes."""
    responses: list[pb.WatchTasksResponse] = []
    async with asyncio.timeout(deadline):
        while not done(responses):
            response = await stream.read()
            assert response is not grpc.aio.EOF, "the stream ended early"
            responses.append(response)
    return responses


def changes(responses: list[pb.WatchTasksResponse]) -> list[pb.WatchTasksResponse]:
    """The responses that carry a change (not bookmarks)."""
    return [r for r in responses if r.HasField("change")]


def reached(revision: int) -> Callable[[list[pb.WatchTasksResponse]], bool]:
    """A condition: a response at `revision` or later has arrived."""
    return lambda responses: bool(responses) and responses[-1].revision >= revision


async def ended_with(stream: Any, deadline: float = DEADLINE) -> tuple[list[Any], Any]:
    """Read the stream to its end; return what came and the AioRpcError it ended with."""
    responses = []
    async with asyncio.timeout(deadline):
        try:
            while (response := await stream.read()) is not grpc.aio.EOF:
                responses.append(response)
        except grpc.aio.AioRpcError as error:
            return responses, error
    raise AssertionError("the stream ended without an error")

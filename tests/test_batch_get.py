"""BatchGetTasks (AIP-231): request order, duplicates, limits, and all or nothing."""

from __future__ import annotations

import grpc
import pytest

from taskservice.server import Application
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, make_admin, register


async def _tasks(stubs: Stubs, who: Account, count: int) -> list[task_pb2.Task]:
    return [
        (
            await stubs.tasks.CreateTask(
                pb.CreateTaskRequest(task=task_pb2.Task(title=f"task {n}")), metadata=who.metadata
            )
        ).task
        for n in range(count)
    ]


async def _batch(stubs: Stubs, who: Account, ids: list[int]) -> list[task_pb2.Task]:
    request = pb.BatchGetTasksRequest(ids=ids)
    return list((await stubs.tasks.BatchGetTasks(request, metadata=who.metadata)).tasks)


async def test_tasks_come_back_in_request_order_with_duplicates(stubs: Stubs) -> None:
    alice = await register(stubs)
    first, second, third = await _tasks(stubs, alice, 3)
    ids = [third.id, first.id, third.id, second.id]
    got = await _batch(stubs, alice, ids)
    assert [task.id for task in got] == ids
    assert got[0] == third
    assert await _batch(stubs, alice, []) == []


async def test_one_invisible_or_missing_id_fails_the_whole_batch(
    app: Application, stubs: Stubs
) -> None:
    alice, bob = await register(stubs), await register(stubs)
    (mine,) = await _tasks(stubs, alice, 1)
    (theirs,) = await _tasks(stubs, bob, 1)
    missing = theirs.id + 1000
    foreign = await fails(
        stubs.tasks.BatchGetTasks(
            pb.BatchGetTasksRequest(ids=[mine.id, theirs.id, missing]), metadata=alice.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert foreign.reason == "TASK_NOT_FOUND"
    assert str(theirs.id) in foreign.message
    absent = await fails(
        stubs.tasks.BatchGetTasks(
            pb.BatchGetTasksRequest(ids=[missing, mine.id]), metadata=alice.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # A foreign task and a missing one read alike: no existence oracle.
    assert absent.message == foreign.message.replace(str(theirs.id), str(missing))
    admin = await make_admin(app, stubs)
    assert [t.id for t in await _batch(stubs, admin, [theirs.id, mine.id])] == [theirs.id, mine.id]


@pytest.mark.parametrize(
    ("ids", "field"),
    [([1] * 101, "ids"), ([1, 0, 2], "ids[1]"), ([-5], "ids[0]")],
)
async def test_too_many_or_non_positive_ids_are_invalid(
    stubs: Stubs, ids: list[int], field: str
) -> None:
    alice = await register(stubs)
    failure = await fails(
        stubs.tasks.BatchGetTasks(pb.BatchGetTasksRequest(ids=ids), metadata=alice.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {field}


async def test_a_hundred_ids_are_allowed(stubs: Stubs) -> None:
    alice = await register(stubs)
    (task,) = await _tasks(stubs, alice, 1)
    assert len(await _batch(stubs, alice, [task.id] * 100)) == 100

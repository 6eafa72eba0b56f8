"""The trash (AIP-164): DeleteTask hides and freezes a task, UndeleteTask restores it.

Purging ends it, driven by the test's own clock (`purge_expired(now)`), never by waiting.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from taskservice.server import Application, build_server
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs, make_settings, stubs_for
from tests.helpers import Account, fails, register

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
async def alice(stubs: Stubs) -> Account:
    return await register(stubs)


async def _create(stubs: Stubs, who: Account, request_id: str = "") -> task_pb2.Task:
    request = pb.CreateTaskRequest(task=task_pb2.Task(title="a task"), request_id=request_id)
    return (await stubs.tasks.CreateTask(request, metadata=who.metadata)).task


async def _delete(stubs: Stubs, who: Account, task_id: int) -> task_pb2.Task:
    request = pb.DeleteTaskRequest(id=task_id)
    return (await stubs.tasks.DeleteTask(request, metadata=who.metadata)).task


async def _listed(stubs: Stubs, who: Account) -> list[int]:
    response = await stubs.tasks.ListTasks(pb.ListTasksRequest(), metadata=who.metadata)
    return [task.id for task in response.tasks]


def _time(stamp: object) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined,no-any-return]


async def test_a_deleted_task_is_hidden_from_lists_but_still_readable(
    stubs: Stubs, alice: Account
) -> None:
    kept, trashed = await _create(stubs, alice), await _create(stubs, alice)
    deleted = await _delete(stubs, alice, trashed.id)
    assert deleted.HasField("delete_time")
    assert _time(deleted.purge_time) - _time(deleted.delete_time) == timedelta(days=30)
    assert deleted.etag != trashed.etag
    assert await _listed(stubs, alice) == [kept.id]
    got = await stubs.tasks.GetTask(pb.GetTaskRequest(id=trashed.id), metadata=alice.metadata)
    assert got.task == deleted
    batch = await stubs.tasks.BatchGetTasks(
        pb.BatchGetTasksRequest(ids=[trashed.id, kept.id]), metadata=alice.metadata
    )
    assert [task.id for task in batch.tasks] == [trashed.id, kept.id]


async def test_a_trashed_task_refuses_writes_and_keeps_its_values(
    stubs: Stubs, alice: Account
) -> None:
    task = await _create(stubs, alice)
    deleted = await _delete(stubs, alice, task.id)
    for call in (
        stubs.tasks.UpdateTask(
            pb.UpdateTaskRequest(task=task_pb2.Task(id=task.id, title="new")),
            metadata=alice.metadata,
        ),
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, title="new"), update_mask={"paths": ["title"]}
            ),
            metadata=alice.metadata,
        ),
        stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=task.id), metadata=alice.metadata),
    ):
        failure = await fails(call, PRECONDITION)
        assert failure.reason == "TASK_DELETED"
    got = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=alice.metadata)
    assert got.task == deleted


async def test_undelete_restores_the_task(stubs: Stubs, alice: Account) -> None:
    task = await _create(stubs, alice)
    deleted = await _delete(stubs, alice, task.id)
    stale = await fails(
        stubs.tasks.UndeleteTask(
            pb.UndeleteTaskRequest(id=task.id, etag=task.etag), metadata=alice.metadata
        ),
        grpc.StatusCode.ABORTED,
    )
    assert stale.reason == "ETAG_MISMATCH"
    restored = (
        await stubs.tasks.UndeleteTask(
            pb.UndeleteTaskRequest(id=task.id, etag=deleted.etag), metadata=alice.metadata
        )
    ).task
    assert not restored.HasField("delete_time")
    assert not restored.HasField("purge_time")
    assert restored.etag not in (task.etag, deleted.etag)
    assert restored.title == task.title
    assert await _listed(stubs, alice) == [task.id]
    live = await fails(
        stubs.tasks.UndeleteTask(pb.UndeleteTaskRequest(id=task.id), metadata=alice.metadata),
        PRECONDITION,
    )
    assert live.reason == "TASK_NOT_DELETED"


async def test_undelete_of_anothers_or_a_missing_task_is_not_found(
    stubs: Stubs, alice: Account
) -> None:
    bob = await register(stubs)
    theirs = await _create(stubs, bob)
    await _delete(stubs, bob, theirs.id)
    for task_id in (theirs.id, theirs.id + 1000):
        failure = await fails(
            stubs.tasks.UndeleteTask(pb.UndeleteTaskRequest(id=task_id), metadata=alice.metadata),
            grpc.StatusCode.NOT_FOUND,
        )
        assert failure.reason == "TASK_NOT_FOUND"
    invalid = await fails(
        stubs.tasks.UndeleteTask(pb.UndeleteTaskRequest(), metadata=alice.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(invalid.fields) == {"id"}


async def test_purge_ends_a_task_at_its_purge_time_and_forgets_its_request_id(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    assert app.tasks is not None
    task = await _create(stubs, alice, request_id="once")
    deleted = await _delete(stubs, alice, task.id)
    purge_time = _time(deleted.purge_time)
    assert await app.tasks.purge_expired(purge_time - timedelta(seconds=1)) == 0
    await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=alice.metadata)
    assert await app.tasks.purge_expired(purge_time) == 1
    gone = await fails(
        stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=alice.metadata),
        grpc.StatusCode.NOT_FOUND,
    )
    assert gone.reason == "TASK_NOT_FOUND"
    await fails(
        stubs.tasks.UndeleteTask(pb.UndeleteTaskRequest(id=task.id), metadata=alice.metadata),
        grpc.StatusCode.NOT_FOUND,
    )
    again = await _create(stubs, alice, request_id="once")
    assert again.id != task.id


async def test_live_tasks_are_never_purged(app: Application, stubs: Stubs, alice: Account) -> None:
    assert app.tasks is not None
    task = await _create(stubs, alice)
    assert await app.tasks.purge_expired(datetime(9999, 1, 1, tzinfo=UTC)) == 0
    await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=alice.metadata)


async def test_the_retention_comes_from_the_settings(database_url: str) -> None:
    application = await build_server(make_settings(database_url, trash_retention_days=0.5))
    await application.start()
    try:
        async with stubs_for(application) as stubs:
            alice = await register(stubs)
            deleted = await _delete(stubs, alice, (await _create(stubs, alice)).id)
            assert _time(deleted.purge_time) - _time(deleted.delete_time) == timedelta(hours=12)
    finally:
        await application.stop(grace=None)


async def test_show_deleted_lists_the_trash_too(stubs: Stubs, alice: Account) -> None:
    kept, trashed = await _create(stubs, alice), await _create(stubs, alice)
    await _delete(stubs, alice, trashed.id)
    listed = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(show_deleted=True, page_size=1), metadata=alice.metadata
    )
    assert [task.id for task in listed.tasks] == [trashed.id]
    # A token is bound to show_deleted: the default list refuses it.
    failure = await fails(
        stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_token=listed.next_page_token, page_size=1),
            metadata=alice.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"page_token"}
    following = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(show_deleted=True, page_size=1, page_token=listed.next_page_token),
        metadata=alice.metadata,
    )
    assert [task.id for task in following.tasks] == [kept.id]
    in_trash = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(show_deleted=True, filter="NOT parent_id = 0 OR parent_id = 0"),
        metadata=alice.metadata,
    )
    assert len(in_trash.tasks) == 2

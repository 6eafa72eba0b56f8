"""Priority, labels and completion time: the task fields real task clients expect."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.server import Application
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, register

HIGH = task_pb2.TASK_PRIORITY_HIGH
DONE = task_pb2.TASK_STATUS_DONE
TODO = task_pb2.TASK_STATUS_TODO


@pytest.fixture
async def alice(stubs: Stubs) -> Account:
    return await register(stubs)


async def _create(stubs: Stubs, who: Account, **fields: object) -> task_pb2.Task:
    task = task_pb2.Task(title=str(fields.pop("title", "a task")), **fields)  # type: ignore[arg-type]
    response = await stubs.tasks.CreateTask(pb.CreateTaskRequest(task=task), metadata=who.metadata)
    return response.task


async def _get(stubs: Stubs, who: Account, task_id: int) -> task_pb2.Task:
    response = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task_id), metadata=who.metadata)
    return response.task


async def _patch(stubs: Stubs, who: Account, task: task_pb2.Task, *paths: str) -> task_pb2.Task:
    request = pb.PatchTaskRequest(task=task, update_mask={"paths": list(paths)})
    return (await stubs.tasks.PatchTask(request, metadata=who.metadata)).task


async def test_priority_is_stored_returned_and_patched(stubs: Stubs, alice: Account) -> None:
    task = await _create(stubs, alice, priority=HIGH)
    assert task.priority == HIGH
    assert (await _get(stubs, alice, task.id)).priority == HIGH
    urgent = task_pb2.Task(id=task.id, priority=task_pb2.TASK_PRIORITY_URGENT)
    assert (await _patch(stubs, alice, urgent, "priority")).priority == urgent.priority
    cleared = await _patch(stubs, alice, task_pb2.Task(id=task.id), "priority")
    assert cleared.priority == task_pb2.TASK_PRIORITY_UNSPECIFIED


async def test_an_unknown_priority_is_invalid_and_creates_nothing(
    stubs: Stubs, alice: Account
) -> None:
    failure = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t", priority=99)),  # type: ignore[arg-type]
            metadata=alice.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"task.priority"}
    listed = await stubs.tasks.ListTasks(pb.ListTasksRequest(), metadata=alice.metadata)
    assert not listed.tasks


async def test_labels_are_trimmed_merged_by_case_and_sorted(stubs: Stubs, alice: Account) -> None:
    task = await _create(
        stubs, alice, labels=["  work ", "Home", "home", "Äpfel", "HOME", "errand", "STRASSE"]
    )
    # Sorted by their case-folded code points, not by any locale's collation.
    assert list(task.labels) == ["errand", "Home", "STRASSE", "work", "Äpfel"]
    assert list((await _get(stubs, alice, task.id)).labels) == list(task.labels)
    # "straße" case-folds to "strasse": the same label, first spelling kept.
    merged = await _patch(
        stubs, alice, task_pb2.Task(id=task.id, labels=["straße", "STRASSE", "b"]), "labels"
    )
    assert list(merged.labels) == ["b", "straße"]


@pytest.mark.parametrize(
    ("labels", "bad_field"),
    [
        (["ok", "   "], "task.labels[1]"),
        (["x" * 51], "task.labels[0]"),
        (["tab\there"], "task.labels[0]"),
        (["nul\x00"], "task.labels[0]"),
        (["del\x7f"], "task.labels[0]"),
        (["c1\x9b"], "task.labels[0]"),
        ([f"label {n}" for n in range(21)], "task.labels"),
    ],
)
async def test_bad_labels_are_invalid_and_change_nothing(
    stubs: Stubs, alice: Account, labels: list[str], bad_field: str
) -> None:
    task = await _create(stubs, alice, labels=["kept"])
    for call in (
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t", labels=labels)),
            metadata=alice.metadata,
        ),
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, labels=labels), update_mask={"paths": ["labels"]}
            ),
            metadata=alice.metadata,
        ),
    ):
        failure = await fails(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert bad_field in failure.fields
    after = await _get(stubs, alice, task.id)
    assert list(after.labels) == ["kept"]
    assert after.etag == task.etag


async def test_twenty_labels_differing_only_in_case_from_twenty_more_are_allowed(
    stubs: Stubs, alice: Account
) -> None:
    labels = [f"l{n}" for n in range(20)] + [f"L{n}" for n in range(20)]
    task = await _create(stubs, alice, labels=labels)
    assert len(task.labels) == 20


async def test_update_replaces_labels_and_priority(stubs: Stubs, alice: Account) -> None:
    task = await _create(stubs, alice, labels=["a", "b"], priority=HIGH)
    replaced = await stubs.tasks.UpdateTask(
        pb.UpdateTaskRequest(task=task_pb2.Task(id=task.id, title="t")), metadata=alice.metadata
    )
    assert not replaced.task.labels
    assert replaced.task.priority == task_pb2.TASK_PRIORITY_UNSPECIFIED


async def test_complete_time_follows_the_done_status(stubs: Stubs, alice: Account) -> None:
    task = await _create(stubs, alice)
    assert not task.HasField("complete_time")
    done = await _patch(stubs, alice, task_pb2.Task(id=task.id, status=DONE), "status")
    assert done.HasField("complete_time")
    assert done.complete_time.ToDatetime() >= task.create_time.ToDatetime()
    # Other changes keep it; setting DONE again keeps the first completion.
    renamed = await _patch(stubs, alice, task_pb2.Task(id=task.id, title="renamed"), "title")
    again = await _patch(stubs, alice, task_pb2.Task(id=task.id, status=DONE), "status")
    assert renamed.complete_time == done.complete_time == again.complete_time
    reopened = await _patch(stubs, alice, task_pb2.Task(id=task.id, status=TODO), "status")
    assert not reopened.HasField("complete_time")
    created_done = await _create(stubs, alice, status=DONE)
    assert created_done.HasField("complete_time")


async def test_complete_time_is_read_only(stubs: Stubs, alice: Account) -> None:
    task = await _create(stubs, alice)
    failure = await fails(
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id), update_mask={"paths": ["complete_time"]}
            ),
            metadata=alice.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"update_mask"}


async def test_concurrent_label_patches_leave_one_consistent_set(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    """The label index rows always match the task's label list, whoever wins."""
    task = await _create(stubs, alice, labels=["start"])
    sets = [[f"set{n}-a", f"set{n}-b"] for n in range(8)]
    await asyncio.gather(
        *(
            _patch(stubs, alice, task_pb2.Task(id=task.id, labels=labels), "labels")
            for labels in sets
        )
    )
    final = list((await _get(stubs, alice, task.id)).labels)
    assert final in sets
    engine = create_async_engine(app.settings.sqlalchemy_url)
    try:
        async with engine.connect() as connection:
            keys = (
                await connection.execute(
                    text("SELECT key FROM task_labels WHERE task_id = :id ORDER BY key"),
                    {"id": task.id},
                )
            ).scalars()
            assert list(keys) == final
    finally:
        await engine.dispose()

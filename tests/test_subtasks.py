"""Subtasks and manual order: parents, depth, cycles, MoveTask, and the trash with subtrees."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from taskservice.server import Application
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, make_admin, register

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
async def alice(stubs: Stubs) -> Account:
    return await register(stubs)


async def _create(stubs: Stubs, who: Account, title: str, parent_id: int = 0) -> task_pb2.Task:
    task = task_pb2.Task(title=title, parent_id=parent_id)
    return (
        await stubs.tasks.CreateTask(pb.CreateTaskRequest(task=task), metadata=who.metadata)
    ).task


async def _get(stubs: Stubs, who: Account, task_id: int) -> task_pb2.Task:
    return (await stubs.tasks.GetTask(pb.GetTaskRequest(id=task_id), metadata=who.metadata)).task


async def _move(
    stubs: Stubs, who: Account, task_id: int, parent_id: int = 0, previous_id: int = 0
) -> task_pb2.Task:
    request = pb.MoveTaskRequest(id=task_id, parent_id=parent_id, previous_id=previous_id)
    return (await stubs.tasks.MoveTask(request, metadata=who.metadata)).task


async def _order(stubs: Stubs, who: Account, ids: list[int]) -> list[int]:
    """The ids sorted as a client sorts siblings: by position."""
    tasks = [await _get(stubs, who, task_id) for task_id in ids]
    return [task.id for task in sorted(tasks, key=lambda task: (task.position, task.id))]


async def test_new_tasks_go_first_among_their_siblings(stubs: Stubs, alice: Account) -> None:
    parent = await _create(stubs, alice, "parent")
    first, second = (
        await _create(stubs, alice, "a", parent.id),
        await _create(stubs, alice, "b", parent.id),
    )
    assert first.parent_id == second.parent_id == parent.id
    assert await _order(stubs, alice, [first.id, second.id]) == [second.id, first.id]
    assert (await _get(stubs, alice, first.id)).parent_id == parent.id


async def test_move_places_a_task_after_a_sibling_or_first(stubs: Stubs, alice: Account) -> None:
    a, b, c = [await _create(stubs, alice, name) for name in "abc"]
    ids = [a.id, b.id, c.id]
    assert await _order(stubs, alice, ids) == [c.id, b.id, a.id]
    await _move(stubs, alice, c.id, previous_id=a.id)
    assert await _order(stubs, alice, ids) == [b.id, a.id, c.id]
    await _move(stubs, alice, a.id)
    assert await _order(stubs, alice, ids) == [a.id, b.id, c.id]
    for _ in range(30):  # repeated moves between the same neighbours renumber when needed
        await _move(stubs, alice, c.id, previous_id=a.id)
        await _move(stubs, alice, b.id, previous_id=a.id)
    assert await _order(stubs, alice, ids) == [a.id, b.id, c.id]


async def test_a_move_keeps_the_subtree_and_changes_the_etag(stubs: Stubs, alice: Account) -> None:
    home, work = await _create(stubs, alice, "home"), await _create(stubs, alice, "work")
    task = await _create(stubs, alice, "task", home.id)
    child = await _create(stubs, alice, "child", task.id)
    moved = await _move(stubs, alice, task.id, parent_id=work.id)
    assert moved.parent_id == work.id
    assert moved.etag != task.etag
    assert (await _get(stubs, alice, child.id)).parent_id == task.id
    stale = await fails(
        stubs.tasks.MoveTask(
            pb.MoveTaskRequest(id=task.id, etag=task.etag), metadata=alice.metadata
        ),
        grpc.StatusCode.ABORTED,
    )
    assert stale.reason == "ETAG_MISMATCH"


async def test_a_task_cannot_become_its_own_ancestor(stubs: Stubs, alice: Account) -> None:
    top = await _create(stubs, alice, "top")
    middle = await _create(stubs, alice, "middle", top.id)
    bottom = await _create(stubs, alice, "bottom", middle.id)
    for parent in (top.id, bottom.id):
        failure = await fails(
            stubs.tasks.MoveTask(
                pb.MoveTaskRequest(id=top.id, parent_id=parent), metadata=alice.metadata
            ),
            PRECONDITION,
        )
        assert failure.reason == "PARENT_CYCLE"
    patch = pb.PatchTaskRequest(
        task=task_pb2.Task(id=top.id, parent_id=bottom.id), update_mask={"paths": ["parent_id"]}
    )
    assert (
        await fails(stubs.tasks.PatchTask(patch, metadata=alice.metadata), PRECONDITION)
    ).reason == "PARENT_CYCLE"
    assert (await _get(stubs, alice, top.id)).parent_id == 0


async def test_tasks_nest_at_most_five_levels(stubs: Stubs, alice: Account) -> None:
    parent = 0
    for level in range(5):
        parent = (await _create(stubs, alice, f"level {level + 1}", parent)).id
    failure = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="too deep", parent_id=parent)),
            metadata=alice.metadata,
        ),
        PRECONDITION,
    )
    assert failure.reason == "MAX_DEPTH_EXCEEDED"
    two_levels = await _create(stubs, alice, "two")
    await _create(stubs, alice, "under two", two_levels.id)
    too_deep = await fails(
        stubs.tasks.MoveTask(
            pb.MoveTaskRequest(id=two_levels.id, parent_id=parent), metadata=alice.metadata
        ),
        PRECONDITION,
    )
    assert too_deep.reason == "MAX_DEPTH_EXCEEDED"


async def test_parents_must_be_visible_live_and_the_owners(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    bob = await register(stubs)
    theirs = await _create(stubs, bob, "bob's")
    missing = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t", parent_id=theirs.id)),
            metadata=alice.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert missing.reason == "TASK_NOT_FOUND"
    admin = await make_admin(app, stubs)
    other_owner = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(
                task=task_pb2.Task(title="t", parent_id=theirs.id, owner_id=alice.user.id)
            ),
            metadata=admin.metadata,
        ),
        INVALID,
    )
    assert set(other_owner.fields) == {"task.parent_id"}
    mine = await _create(stubs, alice, "mine")
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=mine.id), metadata=alice.metadata)
    trashed = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t", parent_id=mine.id)),
            metadata=alice.metadata,
        ),
        PRECONDITION,
    )
    assert trashed.reason == "TASK_DELETED"


async def test_previous_must_be_a_live_sibling_other_than_the_task(
    stubs: Stubs, alice: Account
) -> None:
    parent = await _create(stubs, alice, "parent")
    child = await _create(stubs, alice, "child", parent.id)
    top = await _create(stubs, alice, "top")
    for previous in (child.id, top.id):  # `child` is not at the top level; `top` is the task
        failure = await fails(
            stubs.tasks.MoveTask(
                pb.MoveTaskRequest(id=top.id, previous_id=previous), metadata=alice.metadata
            ),
            INVALID,
        )
        assert set(failure.fields) == {"previous_id"}
    negative = await fails(
        stubs.tasks.MoveTask(pb.MoveTaskRequest(id=top.id, parent_id=-1), metadata=alice.metadata),
        INVALID,
    )
    assert set(negative.fields) == {"parent_id"}


async def test_concurrent_moves_in_one_list_never_share_a_position(
    stubs: Stubs, alice: Account
) -> None:
    tasks = [await _create(stubs, alice, f"t{n}") for n in range(8)]
    anchor = tasks[0]
    await asyncio.gather(
        *(_move(stubs, alice, task.id, previous_id=anchor.id) for task in tasks[1:])
    )
    positions = [(await _get(stubs, alice, task.id)).position for task in tasks]
    assert len(set(positions)) == len(positions)
    order = await _order(stubs, alice, [task.id for task in tasks])
    assert order[0] == anchor.id


async def test_update_without_parent_makes_a_task_top_level(stubs: Stubs, alice: Account) -> None:
    parent = await _create(stubs, alice, "parent")
    child = await _create(stubs, alice, "child", parent.id)
    updated = await stubs.tasks.UpdateTask(
        pb.UpdateTaskRequest(task=task_pb2.Task(id=child.id, title="child")),
        metadata=alice.metadata,
    )
    assert updated.task.parent_id == 0
    assert await _order(stubs, alice, [parent.id, child.id]) == [child.id, parent.id]


async def test_trash_takes_and_returns_the_subtree(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    parent = await _create(stubs, alice, "parent")
    child = await _create(stubs, alice, "child", parent.id)
    earlier = await _create(stubs, alice, "trashed earlier", parent.id)
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=earlier.id), metadata=alice.metadata)
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=parent.id), metadata=alice.metadata)
    assert (await _get(stubs, alice, child.id)).HasField("delete_time")
    with_parent = await fails(
        stubs.tasks.UndeleteTask(pb.UndeleteTaskRequest(id=child.id), metadata=alice.metadata),
        PRECONDITION,
    )
    assert with_parent.reason == "PARENT_DELETED"
    await stubs.tasks.UndeleteTask(pb.UndeleteTaskRequest(id=parent.id), metadata=alice.metadata)
    assert not (await _get(stubs, alice, child.id)).HasField("delete_time")
    assert (await _get(stubs, alice, earlier.id)).HasField("delete_time")
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=parent.id), metadata=alice.metadata)
    assert app.tasks is not None
    assert await app.tasks.purge_expired(datetime(2999, 1, 1, tzinfo=UTC)) >= 1
    for task in (parent, child, earlier):
        await fails(
            stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=alice.metadata),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_a_parents_children_list_in_manual_order(stubs: Stubs, alice: Account) -> None:
    parent = await _create(stubs, alice, "parent")
    a, b, c = [await _create(stubs, alice, name, parent.id) for name in "abc"]
    await _create(stubs, alice, "elsewhere")
    await _move(stubs, alice, a.id, parent.id, previous_id=c.id)
    request = pb.ListTasksRequest(
        filter=f"parent_id = {parent.id}", order_by="position", page_size=2
    )
    seen: list[int] = []
    while True:
        page = await stubs.tasks.ListTasks(request, metadata=alice.metadata)
        seen.extend(task.id for task in page.tasks)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == [c.id, a.id, b.id]
    top = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(filter="parent_id = 0", order_by="position desc"),
        metadata=alice.metadata,
    )
    assert [task.title for task in top.tasks] == ["parent", "elsewhere"]

"""TaskService: owner-scoped CRUD, full and partial updates, etags, idempotency and lists."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.server import Application
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, make_admin, register

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
ABORTED = grpc.StatusCode.ABORTED
TODO, IN_PROGRESS, DONE = (
    task_pb2.TASK_STATUS_TODO,
    task_pb2.TASK_STATUS_IN_PROGRESS,
    task_pb2.TASK_STATUS_DONE,
)
DUE = Timestamp(seconds=int(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()))


@pytest.fixture
async def admin(app: Application, stubs: Stubs) -> Account:
    return await make_admin(app, stubs)


@pytest.fixture
async def alice(stubs: Stubs) -> Account:
    return await register(stubs)


@pytest.fixture
async def bob(stubs: Stubs) -> Account:
    return await register(stubs)


async def create(
    stubs: Stubs, who: Account, title: str = "a task", **fields: object
) -> task_pb2.Task:
    request_id = str(fields.pop("request_id", ""))
    response = await stubs.tasks.CreateTask(
        pb.CreateTaskRequest(task=task_pb2.Task(title=title, **fields), request_id=request_id),
        metadata=who.metadata,
    )
    return response.task


async def get(stubs: Stubs, who: Account, task_id: int) -> task_pb2.Task:
    return (await stubs.tasks.GetTask(pb.GetTaskRequest(id=task_id), metadata=who.metadata)).task


async def list_all(stubs: Stubs, who: Account, **filters: object) -> list[task_pb2.Task]:
    tasks: list[task_pb2.Task] = []
    token = ""
    while True:
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_token=token, **filters), metadata=who.metadata
        )
        tasks.extend(page.tasks)
        token = page.next_page_token
        if not token:
            return tasks


# --- CreateTask -------------------------------------------------------------------------------


async def test_create_defaults_to_todo_owned_by_the_caller(stubs: Stubs, alice: Account) -> None:
    task = await create(stubs, alice, "  Write the docs  ", description="all of them", due_time=DUE)
    assert task.id > 0
    assert task.title == "Write the docs"
    assert task.description == "all of them"
    assert task.status == TODO
    assert task.due_time == DUE
    assert task.owner_id == alice.user.id
    assert task.etag
    assert task.create_time.seconds > 0
    assert task.update_time == task.create_time
    assert await get(stubs, alice, task.id) == task


@pytest.mark.parametrize(
    ("fields", "request_id", "bad_fields"),
    [
        ({"title": ""}, "", {"task.title"}),
        ({"title": "   "}, "", {"task.title"}),
        ({"title": "x" * 201}, "", {"task.title"}),
        ({"title": "ok", "description": "d" * 10_001}, "", {"task.description"}),
        ({"title": "ok", "status": 99}, "", {"task.status"}),
        ({"title": "ok"}, "r" * 129, {"request_id"}),
        ({"title": "", "description": "d" * 10_001}, "", {"task.title", "task.description"}),
    ],
)
async def test_bad_tasks_are_refused_naming_each_field_and_nothing_is_created(
    stubs: Stubs, alice: Account, fields: dict[str, object], request_id: str, bad_fields: set[str]
) -> None:
    failure = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(**fields), request_id=request_id),
            metadata=alice.metadata,
        ),
        INVALID,
    )
    assert set(failure.fields) == bad_fields
    assert await list_all(stubs, alice) == []


async def test_limits_are_inclusive(stubs: Stubs, alice: Account) -> None:
    task = await create(stubs, alice, "x" * 200, description="d" * 10_000, request_id="r" * 128)
    assert len(task.title) == 200


async def test_regular_users_cannot_create_for_others(
    stubs: Stubs, alice: Account, bob: Account
) -> None:
    await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t", owner_id=bob.user.id)),
            metadata=alice.metadata,
        ),
        DENIED,
    )
    assert await list_all(stubs, bob) == []
    own = await create(stubs, alice, owner_id=alice.user.id)
    assert own.owner_id == alice.user.id


async def test_admins_create_for_any_existing_user(
    stubs: Stubs, admin: Account, alice: Account
) -> None:
    task = await create(stubs, admin, owner_id=alice.user.id)
    assert task.owner_id == alice.user.id
    assert [t.id for t in await list_all(stubs, alice)] == [task.id]
    failure = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t", owner_id=10**12)),
            metadata=admin.metadata,
        ),
        NOT_FOUND,
    )
    assert failure.reason == "OWNER_NOT_FOUND"


async def test_a_retried_create_returns_the_first_task(
    stubs: Stubs, alice: Account, bob: Account
) -> None:
    first = await create(stubs, alice, "once", request_id="req-1")
    again = await create(stubs, alice, "once", request_id="req-1")
    assert again == first
    others = await create(stubs, bob, "once", request_id="req-1")  # keys are per caller
    assert others.id != first.id
    assert [t.id for t in await list_all(stubs, alice)] == [first.id]


async def test_concurrent_retries_create_one_task(stubs: Stubs, alice: Account) -> None:
    tasks = await asyncio.gather(*(create(stubs, alice, request_id="burst") for _ in range(8)))
    assert len({task.id for task in tasks}) == 1
    assert len(await list_all(stubs, alice)) == 1


# --- visibility -------------------------------------------------------------------------------


async def test_other_users_task_is_not_found_like_a_missing_one(
    stubs: Stubs, alice: Account, bob: Account
) -> None:
    task = await create(stubs, alice)
    patch = pb.PatchTaskRequest(
        task=task_pb2.Task(id=task.id, title="mine now"), update_mask={"paths": ["title"]}
    )
    for task_id in (task.id, 10**12):
        calls = [
            stubs.tasks.GetTask(pb.GetTaskRequest(id=task_id), metadata=bob.metadata),
            stubs.tasks.UpdateTask(
                pb.UpdateTaskRequest(task=task_pb2.Task(id=task_id, title="x")),
                metadata=bob.metadata,
            ),
            stubs.tasks.PatchTask(
                pb.PatchTaskRequest(
                    task=task_pb2.Task(id=task_id, title="x"), update_mask=patch.update_mask
                ),
                metadata=bob.metadata,
            ),
            stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=task_id), metadata=bob.metadata),
        ]
        failures = [await fails(call, NOT_FOUND) for call in calls]
        assert {(f.message, f.reason) for f in failures} == {
            ("no task has this id", "TASK_NOT_FOUND")
        }
    assert await get(stubs, alice, task.id) == task


async def test_admins_see_and_change_every_task(
    stubs: Stubs, admin: Account, alice: Account
) -> None:
    task = await create(stubs, alice)
    assert await get(stubs, admin, task.id) == task
    updated = await stubs.tasks.UpdateTask(
        pb.UpdateTaskRequest(task=task_pb2.Task(id=task.id, title="by admin")),
        metadata=admin.metadata,
    )
    assert updated.task.owner_id == alice.user.id
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=task.id), metadata=admin.metadata)
    assert (await get(stubs, alice, task.id)).HasField("delete_time")


async def test_a_purged_tasks_id_and_etag_never_come_back(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    task = await create(stubs, alice)
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=task.id), metadata=alice.metadata)
    assert app.tasks is not None
    assert await app.tasks.purge_expired(datetime(2999, 1, 1, tzinfo=UTC)) == 1
    successor = await create(stubs, alice)
    assert successor.id > task.id
    await fails(
        stubs.tasks.UpdateTask(
            pb.UpdateTaskRequest(task=task_pb2.Task(id=task.id, title="x", etag=task.etag)),
            metadata=alice.metadata,
        ),
        NOT_FOUND,
    )
    assert await get(stubs, alice, successor.id) == successor


async def test_owners_delete_their_tasks_to_the_trash(stubs: Stubs, alice: Account) -> None:
    task = await create(stubs, alice)
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=task.id), metadata=alice.metadata)
    assert (await get(stubs, alice, task.id)).HasField("delete_time")
    again = await fails(
        stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=task.id), metadata=alice.metadata),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert again.reason == "TASK_DELETED"


@pytest.mark.parametrize("method", ["GetTask", "DeleteTask"])
async def test_ids_must_be_positive(stubs: Stubs, alice: Account, method: str) -> None:
    request = pb.GetTaskRequest() if method == "GetTask" else pb.DeleteTaskRequest()
    failure = await fails(getattr(stubs.tasks, method)(request, metadata=alice.metadata), INVALID)
    assert set(failure.fields) == {"id"}


async def test_tasks_need_a_token(stubs: Stubs) -> None:
    await fails(stubs.tasks.ListTasks(pb.ListTasksRequest()), grpc.StatusCode.UNAUTHENTICATED)


# --- UpdateTask and PatchTask -----------------------------------------------------------------


async def test_update_replaces_every_writable_field(stubs: Stubs, alice: Account) -> None:
    task = await create(stubs, alice, description="old", due_time=DUE, status=DONE)
    response = await stubs.tasks.UpdateTask(
        pb.UpdateTaskRequest(task=task_pb2.Task(id=task.id, title="new", owner_id=999)),
        metadata=alice.metadata,
    )
    updated = response.task
    assert (updated.title, updated.description, updated.status) == ("new", "", TODO)
    assert not updated.HasField("due_time")
    assert updated.owner_id == alice.user.id  # output only: ignored
    assert updated.etag != task.etag
    assert updated.create_time == task.create_time
    assert await get(stubs, alice, task.id) == updated


async def test_patch_changes_only_the_masked_fields(stubs: Stubs, alice: Account) -> None:
    task = await create(stubs, alice, "title", description="keep me", due_time=DUE)
    response = await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(
            task=task_pb2.Task(id=task.id, title="ignored", status=IN_PROGRESS),
            update_mask={"paths": ["status"]},
        ),
        metadata=alice.metadata,
    )
    patched = response.task
    assert patched.status == IN_PROGRESS
    assert (patched.title, patched.description, patched.due_time) == ("title", "keep me", DUE)
    assert patched.etag != task.etag
    cleared = await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(task=task_pb2.Task(id=task.id), update_mask={"paths": ["due_time"]}),
        metadata=alice.metadata,
    )
    assert not cleared.task.HasField("due_time")


@pytest.mark.parametrize(
    ("paths", "fields", "bad_fields"),
    [
        ([], {}, {"update_mask"}),
        (["colour"], {}, {"update_mask"}),
        (["owner_id"], {}, {"update_mask"}),
        (["id"], {}, {"update_mask"}),
        (["create_time"], {}, {"update_mask"}),
        (["etag"], {}, {"update_mask"}),
        (["title"], {"title": " "}, {"task.title"}),
        (["status"], {}, {"task.status"}),
        (["title", "owner_id"], {"title": ""}, {"update_mask", "task.title"}),
    ],
)
async def test_bad_patches_are_invalid_and_change_nothing(
    stubs: Stubs,
    alice: Account,
    paths: list[str],
    fields: dict[str, object],
    bad_fields: set[str],
) -> None:
    task = await create(stubs, alice)
    failure = await fails(
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, **fields), update_mask={"paths": paths}
            ),
            metadata=alice.metadata,
        ),
        INVALID,
    )
    assert set(failure.fields) == bad_fields
    assert await get(stubs, alice, task.id) == task


async def test_a_stale_etag_aborts_and_changes_nothing(stubs: Stubs, alice: Account) -> None:
    task = await create(stubs, alice)
    fresh = (
        await stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, title="v2", etag=task.etag),
                update_mask={"paths": ["title"]},
            ),
            metadata=alice.metadata,
        )
    ).task
    stale_calls = [
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, title="v3", etag=task.etag),
                update_mask={"paths": ["title"]},
            ),
            metadata=alice.metadata,
        ),
        stubs.tasks.UpdateTask(
            pb.UpdateTaskRequest(task=task_pb2.Task(id=task.id, title="v3", etag=task.etag)),
            metadata=alice.metadata,
        ),
        stubs.tasks.DeleteTask(
            pb.DeleteTaskRequest(id=task.id, etag=task.etag), metadata=alice.metadata
        ),
    ]
    for call in stale_calls:
        assert (await fails(call, ABORTED)).reason == "ETAG_MISMATCH"
    assert await get(stubs, alice, task.id) == fresh
    await stubs.tasks.DeleteTask(
        pb.DeleteTaskRequest(id=task.id, etag=fresh.etag), metadata=alice.metadata
    )


async def test_an_etag_matches_only_as_the_server_spelled_it(stubs: Stubs, alice: Account) -> None:
    """PatchTask's one-statement path reads the version out of the etag; it must not be laxer."""
    task = await create(stubs, alice)
    other = await create(stubs, alice)
    version = task.etag.removeprefix(f'W/"{task.id}-').removesuffix('"')
    respelled = [
        f'W/"{task.id}-0{version}"',
        f'W/"{task.id}-{version}"x',
        f'"{task.id}-{version}"',
        f'W/"{task.id}-{version} "',
        other.etag,
        "garbage",
    ]
    for etag in respelled:
        call = stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, title="never", etag=etag),
                update_mask={"paths": ["title"]},
            ),
            metadata=alice.metadata,
        )
        assert (await fails(call, ABORTED)).reason == "ETAG_MISMATCH", etag
    assert await get(stubs, alice, task.id) == task
    patched = await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(
            task=task_pb2.Task(id=task.id, title="renamed", etag=task.etag),
            update_mask={"paths": ["title"]},
        ),
        metadata=alice.metadata,
    )
    assert patched.task.title == "renamed"
    assert patched.task.etag != task.etag
    assert patched.task.update_time.ToDatetime() >= task.update_time.ToDatetime()


async def test_concurrent_patches_of_different_fields_keep_both(
    stubs: Stubs, alice: Account
) -> None:
    tasks = [await create(stubs, alice, f"task {i}") for i in range(10)]

    def patch(task: task_pb2.Task, **fields: object) -> object:
        return stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, **fields), update_mask={"paths": list(fields)}
            ),
            metadata=alice.metadata,
        )

    await asyncio.gather(
        *(patch(t, description=f"described {t.id}") for t in tasks),
        *(patch(t, status=DONE) for t in tasks),
    )
    for task in tasks:
        now = await get(stubs, alice, task.id)
        assert (now.description, now.status) == (f"described {task.id}", DONE)


# --- ListTasks --------------------------------------------------------------------------------


async def test_lists_are_owner_scoped_for_users_and_global_for_admins(
    stubs: Stubs, admin: Account, alice: Account, bob: Account
) -> None:
    alices = [await create(stubs, alice) for _ in range(3)]
    bobs = [await create(stubs, bob) for _ in range(2)]
    assert [t.id for t in await list_all(stubs, alice)] == [t.id for t in reversed(alices)]
    assert [t.id for t in await list_all(stubs, alice, owner_id=alice.user.id)] == [
        t.id for t in reversed(alices)
    ]
    await fails(
        stubs.tasks.ListTasks(pb.ListTasksRequest(owner_id=bob.user.id), metadata=alice.metadata),
        DENIED,
    )
    everything = [t.id for t in await list_all(stubs, admin)]
    assert everything == sorted((t.id for t in alices + bobs), reverse=True)
    assert [t.id for t in await list_all(stubs, admin, owner_id=bob.user.id)] == [
        t.id for t in reversed(bobs)
    ]


async def test_list_filters_by_status(stubs: Stubs, alice: Account) -> None:
    done = await create(stubs, alice, status=DONE)
    await create(stubs, alice, status=TODO)
    assert [t.id for t in await list_all(stubs, alice, status=DONE)] == [done.id]
    await fails(
        stubs.tasks.ListTasks(pb.ListTasksRequest(status=42), metadata=alice.metadata), INVALID
    )


async def test_page_sizes_default_clamp_and_refuse_negatives(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    await _insert_tasks(app, alice.user.id, 1_005)
    default = await stubs.tasks.ListTasks(pb.ListTasksRequest(), metadata=alice.metadata)
    assert len(default.tasks) == 50
    assert default.next_page_token
    clamped = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(page_size=5_000), metadata=alice.metadata
    )
    assert len(clamped.tasks) == 1_000
    rest = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(page_size=5_000, page_token=clamped.next_page_token),
        metadata=alice.metadata,
    )
    assert (len(rest.tasks), rest.next_page_token) == (5, "")
    failure = await fails(
        stubs.tasks.ListTasks(pb.ListTasksRequest(page_size=-1), metadata=alice.metadata), INVALID
    )
    assert set(failure.fields) == {"page_size"}


async def test_a_page_token_only_works_with_its_filters_and_caller(
    app: Application, stubs: Stubs, admin: Account, alice: Account
) -> None:
    await _insert_tasks(app, alice.user.id, 3)
    page = await stubs.tasks.ListTasks(pb.ListTasksRequest(page_size=1), metadata=alice.metadata)
    token = page.next_page_token
    misuses = [
        (pb.ListTasksRequest(page_token=token, status=DONE), alice),
        (pb.ListTasksRequest(page_token=token, owner_id=alice.user.id), admin),
        (pb.ListTasksRequest(page_token=token), admin),
        (pb.ListTasksRequest(page_token=token[:-1]), alice),
        (pb.ListTasksRequest(page_token="not a token"), alice),
    ]
    for request, who in misuses:
        failure = await fails(stubs.tasks.ListTasks(request, metadata=who.metadata), INVALID)
        assert set(failure.fields) == {"page_token"}
    following = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(page_token=token, page_size=1), metadata=alice.metadata
    )
    assert following.tasks[0].id < page.tasks[0].id


async def test_a_page_walk_sees_every_existing_task_once_while_tasks_are_added(
    stubs: Stubs, alice: Account
) -> None:
    existing = {(await create(stubs, alice, f"t{i}")).id for i in range(23)}
    seen: list[int] = []
    token = ""
    while True:
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_size=5, page_token=token), metadata=alice.metadata
        )
        seen.extend(t.id for t in page.tasks)
        await create(stubs, alice, "added during the walk")
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(existing)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, reverse=True)


async def _insert_tasks(app: Application, owner_id: int, count: int) -> None:
    """Bulk-insert tasks straight into the database, for tests that need many."""
    engine = create_async_engine(app.settings.sqlalchemy_url)
    now = datetime.now(UTC)
    rows = [
        {
            "owner": owner_id,
            "title": f"bulk {i}",
            "now": now if engine.dialect.name != "sqlite" else now.replace(tzinfo=None),
        }
        for i in range(count)
    ]
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO tasks (owner_id, title, description, status, version, "
                    "create_time, update_time) VALUES (:owner, :title, '', 'todo', 1, :now, :now)"
                ),
                rows,
            )
    finally:
        await engine.dispose()


async def test_pages_of_large_tasks_stay_under_a_clients_default_limit(
    stubs: Stubs, alice: Account
) -> None:
    """1000 tasks a page was asked for, but 40 KB tasks end a page before about 1 MiB."""
    description = "\N{WHITE HEAVY CHECK MARK}" * 10_000  # 3 bytes each in UTF-8
    created = await asyncio.gather(
        *(create(stubs, alice, f"big {n}", description=description) for n in range(40))
    )
    pages = []
    token = ""
    while True:
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_size=1000, page_token=token), metadata=alice.metadata
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert len(pages) == 2
    assert all(page.ByteSize() <= 1024 * 1024 for page in pages)
    listed = [task.id for page in pages for task in page.tasks]
    assert sorted(listed, reverse=True) == listed
    assert sorted(listed) == sorted(task.id for task in created)


async def test_a_patch_ignores_bad_values_of_fields_outside_its_mask(
    stubs: Stubs, alice: Account
) -> None:
    """A field the mask does not name is not changed, so its value is not checked either.

    Found by the fuzz: an unknown status or priority, or an out-of-range due time, outside the
    mask was refused, and named as the bad field, although the patch never changes it.
    """
    task = await create(stubs, alice, "before", status=DONE, due_time=DUE, priority=3)
    beyond_year_9999 = Timestamp(seconds=253_402_300_800)
    outside = task_pb2.Task(
        id=task.id, title="after", status=99, priority=99, due_time=beyond_year_9999
    )
    patched = await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(task=outside, update_mask={"paths": ["title"]}),
        metadata=alice.metadata,
    )
    kept = (patched.task.status, patched.task.priority, patched.task.due_time)
    assert (patched.task.title, *kept) == ("after", DONE, 3, DUE)
    failure = await fails(
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(task=task_pb2.Task(id=task.id, status=99), update_mask={}),
            metadata=alice.metadata,
        ),
        INVALID,
    )
    assert set(failure.fields) == {"update_mask"}
    await fails(
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, due_time=beyond_year_9999),
                update_mask={"paths": ["due_time"]},
            ),
            metadata=alice.metadata,
        ),
        INVALID,
    )
    assert await get(stubs, alice, task.id) == patched.task


async def test_every_bad_field_of_a_request_is_named_at_once(stubs: Stubs, alice: Account) -> None:
    """One BadRequest lists every bad field (API conventions), and nothing is written.

    Found by the fuzz: the first check to fail (an id, a number the edge could not convert, the
    title, a negative page size) answered alone, so a client fixing one field met the next only
    on its next try.
    """
    task = await create(stubs, alice)
    beyond_year_9999 = Timestamp(seconds=253_402_300_800)
    bad_task = task_pb2.Task(
        title=" ",
        status=99,
        priority=99,
        due_time=beyond_year_9999,
        labels=["", "tab\there"],
        parent_id=-1,
    )
    calls = {
        "create": (
            stubs.tasks.CreateTask(
                pb.CreateTaskRequest(task=bad_task, request_id="k" * 129), metadata=alice.metadata
            ),
            {
                "task.title",
                "task.status",
                "task.priority",
                "task.due_time",
                "task.labels[0]",
                "task.labels[1]",
                "task.parent_id",
                "request_id",
            },
        ),
        "update": (
            stubs.tasks.UpdateTask(
                pb.UpdateTaskRequest(task=task_pb2.Task(id=0, title="")), metadata=alice.metadata
            ),
            {"task.id", "task.title"},
        ),
        "patch": (
            stubs.tasks.PatchTask(
                pb.PatchTaskRequest(
                    task=task_pb2.Task(id=-1, title="", status=99),
                    update_mask={"paths": ["title", "status", "owner_id"]},
                ),
                metadata=alice.metadata,
            ),
            {"task.id", "task.title", "task.status", "update_mask"},
        ),
        "list": (
            stubs.tasks.ListTasks(
                pb.ListTasksRequest(page_size=-1, page_token="forged", status=99),
                metadata=alice.metadata,
            ),
            {"page_size", "page_token", "status"},
        ),
        "list with a bad filter and order": (
            stubs.tasks.ListTasks(
                pb.ListTasksRequest(page_size=-1, filter="status =", order_by="id"),
                metadata=alice.metadata,
            ),
            {"page_size", "filter", "order_by"},
        ),
        "move": (
            stubs.tasks.MoveTask(
                pb.MoveTaskRequest(id=0, parent_id=-1, previous_id=-1), metadata=alice.metadata
            ),
            {"id", "parent_id", "previous_id"},
        ),
        "batch get": (
            stubs.tasks.BatchGetTasks(
                pb.BatchGetTasksRequest(ids=[0, *[task.id] * 100]), metadata=alice.metadata
            ),
            {"ids", "ids[0]"},
        ),
    }
    for name, (call, bad_fields) in calls.items():
        failure = await fails(call, INVALID)
        assert set(failure.fields) == bad_fields, name
        if name == "list with a bad filter and order":
            assert failure.reason == "FILTER_INVALID"
    patch = await fails(
        stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, status=99), update_mask={"paths": ["status"]}
            ),
            metadata=alice.metadata,
        ),
        INVALID,
    )
    assert patch.fields == {"task.status": "unknown status 99"}
    assert await list_all(stubs, alice) == [task]


async def test_a_refusal_with_many_or_long_problems_still_reaches_the_client(
    stubs: Stubs, alice: Account
) -> None:
    """INVALID_ARGUMENT, never RESOURCE_EXHAUSTED, however many fields are bad or long.

    Found by the fuzz: 100 non-positive ids to BatchGetTasks, or a 9,000-character order_by
    echoed in its error, made the status trailers pass gRPC's 8 KiB default metadata limit, so
    the client got RESOURCE_EXHAUSTED "Stream removed". The list now stops at a text budget with
    an entry saying how many more problems there are.
    """
    batch = await fails(
        stubs.tasks.BatchGetTasks(pb.BatchGetTasksRequest(ids=[0] * 100), metadata=alice.metadata),
        INVALID,
    )
    assert "ids[0]" in batch.fields
    assert len(batch.fields) < 100
    assert any(text.startswith("... and ") for text in batch.fields.values())
    order = await fails(
        stubs.tasks.ListTasks(pb.ListTasksRequest(order_by="x" * 9000), metadata=alice.metadata),
        INVALID,
    )
    assert set(order.fields) == {"order_by"}
    assert len(order.fields["order_by"]) <= 300
    labels = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t", labels=[""] * 1000)),
            metadata=alice.metadata,
        ),
        INVALID,
    )
    assert "task.labels[0]" in labels.fields
    assert await list_all(stubs, alice) == []


async def test_page_walks_work_with_long_titles_and_long_filters(
    stubs: Stubs, alice: Account
) -> None:
    """Every next_page_token the server issues, it accepts back.

    Found while modelling page tokens for the fuzz: a page ordered by title that ended on a long
    non-ASCII title, or any page of a list with a long filter, got a next_page_token over the
    server's own 1,024-character limit (the token carried the title as ASCII-escaped JSON, and
    the whole filter), so the next page was INVALID_ARGUMENT.
    """
    titles = ["\N{GRINNING FACE}" * 200, "\N{LATIN SMALL LETTER E WITH ACUTE}" * 200, "a"]
    created = {(await create(stubs, alice, title)).id for title in titles}
    long_filter = " AND ".join([f'title != "{"x" * 150}"'] * 10)
    for request in (
        pb.ListTasksRequest(page_size=1, order_by="title"),
        pb.ListTasksRequest(page_size=1, order_by="title desc"),
        pb.ListTasksRequest(page_size=1, filter=long_filter),
    ):
        seen: list[int] = []
        while True:
            page = await stubs.tasks.ListTasks(request, metadata=alice.metadata)
            seen.extend(task.id for task in page.tasks)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        assert sorted(seen) == sorted(created), request

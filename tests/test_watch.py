"""WatchTasks: ordered, resumable, authorized change streams, on both databases.

Every test drives real servers over real channels. Nothing waits on luck: streams are read until
what must arrive has arrived, under a deadline; time-based behaviour (bookmarks, token expiry)
uses short settings and deadlines far above them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import NullPool, text
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.config import Settings
from taskservice.security.tokens import LEEWAY_SECONDS, TokenCodec
from taskservice.server import Application, build_server
from taskservice.v1 import auth_service_pb2, task_pb2, user_service_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import TEST_SIGNING_KEY, Stubs, make_settings, stubs_for
from tests.helpers import PASSWORD, Account, bearer, fails, make_admin, register
from tests.watching import DEADLINE, changes, ended_with, reached, read_until

CREATED = pb.TASK_CHANGE_TYPE_CREATED
UPDATED = pb.TASK_CHANGE_TYPE_UPDATED
DELETED = pb.TASK_CHANGE_TYPE_DELETED
UNDELETED = pb.TASK_CHANGE_TYPE_UNDELETED
PURGED = pb.TASK_CHANGE_TYPE_PURGED


def watch_settings(database_url: str, **overrides: object) -> Settings:
    """Test settings with bookmarks every fifth of a second (idle streams show them quickly)."""
    return make_settings(database_url, **{"watch_bookmark_seconds": 0.2, **overrides})


@pytest.fixture
def settings(database_url: str) -> Settings:
    return watch_settings(database_url)


@pytest.fixture
async def alice(stubs: Stubs) -> Account:
    return await register(stubs)


async def create(
    stubs: Stubs, account: Account, title: str = "task", **fields: object
) -> task_pb2.Task:
    request = pb.CreateTaskRequest(task=task_pb2.Task(title=title, **fields))
    return (await stubs.tasks.CreateTask(request, metadata=account.metadata)).task


async def patch(stubs: Stubs, account: Account, task_id: int, **fields: object) -> task_pb2.Task:
    request = pb.PatchTaskRequest(
        task=task_pb2.Task(id=task_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
    )
    return (await stubs.tasks.PatchTask(request, metadata=account.metadata)).task


async def current_revision(app: Application, stubs: Stubs, account: Account) -> int:
    """The store's revision once every committed change has one, as a client learns it.

    Revisions are given just after commit, off the writer's path (by the change feed): a read
    right after a write may carry the revision before it. Tests number first, to know exactly
    which revision their writes reached.
    """
    await app.database.number_changes()
    response = await stubs.tasks.BatchGetTasks(pb.BatchGetTasksRequest(), metadata=account.metadata)
    return response.revision


def watch(stubs: Stubs, account: Account, start: int = 0, **fields: object) -> object:
    return stubs.tasks.WatchTasks(
        pb.WatchTasksRequest(start_revision=start, **fields), metadata=account.metadata
    )


async def test_every_kind_of_change_arrives_in_revision_order_with_the_task_after_it(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    stream = watch(stubs, alice)
    first = await read_until(stream, lambda r: len(r) == 1)
    assert not first[0].HasField("change"), "a watch from now starts with a bookmark"
    start = first[0].revision

    parent = await create(stubs, alice, "parent")
    child = await create(stubs, alice, "child", parent_id=parent.id)
    patched = await patch(stubs, alice, parent.id, title="renamed")
    deleted = (
        await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=parent.id), metadata=alice.metadata)
    ).task
    undeleted = (
        await stubs.tasks.UndeleteTask(
            pb.UndeleteTaskRequest(id=parent.id), metadata=alice.metadata
        )
    ).task
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=parent.id), metadata=alice.metadata)
    assert await app.tasks.purge_expired(datetime(9999, 1, 1, tzinfo=UTC)) >= 1
    final = await current_revision(app, stubs, alice)

    seen = changes(await read_until(stream, reached(final)))
    assert [r.revision for r in seen] == list(range(start + 1, final + 1)), "dense, in order"
    kinds = [(r.change.type, r.change.task.id) for r in seen]
    assert kinds[:3] == [(CREATED, parent.id), (CREATED, child.id), (UPDATED, parent.id)]
    for kind in (DELETED, UNDELETED):  # the subtree goes and comes back with its root
        assert {(kind, parent.id), (kind, child.id)} <= set(kinds)
    assert {(PURGED, parent.id), (PURGED, child.id)} <= set(kinds[-2:]) | set(kinds[-3:])
    by_kind: dict[tuple[int, int], task_pb2.Task] = {}
    for r in seen:  # the first of each kind
        by_kind.setdefault((r.change.type, r.change.task.id), r.change.task)
    assert by_kind[CREATED, child.id] == child, "the task exactly as the API returns it"
    assert by_kind[UPDATED, parent.id] == patched
    assert by_kind[DELETED, parent.id] == deleted
    assert by_kind[UNDELETED, parent.id] == undeleted
    assert by_kind[PURGED, parent.id] == task_pb2.Task(id=parent.id), "a purged task: id only"
    stream.cancel()


async def test_reads_carry_the_revision_they_were_read_at(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    before = await current_revision(app, stubs, alice)
    task = await create(stubs, alice)
    await app.database.number_changes()  # else the reads may carry the revision before it
    got = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=alice.metadata)
    listed = await stubs.tasks.ListTasks(pb.ListTasksRequest(), metadata=alice.metadata)
    batch = await stubs.tasks.BatchGetTasks(
        pb.BatchGetTasksRequest(ids=[task.id]), metadata=alice.metadata
    )
    assert got.revision == listed.revision == batch.revision == before + 1
    # A page's revision comes with its first statement's rows; a page whose first statement
    # finds none (nothing matches; an ordering whose present segment is empty, the task having
    # no due time) reads it on its own, and it is the same.
    for request in (
        pb.ListTasksRequest(filter='title = "no task has this title"'),
        pb.ListTasksRequest(order_by="due_time"),
        pb.ListTasksRequest(order_by="due_time", filter='title = "no task has this title"'),
    ):
        page = await stubs.tasks.ListTasks(request, metadata=alice.metadata)
        assert page.revision == before + 1, request
        assert [listed.id for listed in page.tasks] == ([] if request.filter else [task.id])


async def test_list_then_watch_with_concurrent_writers_loses_nothing(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    """A mirror built from a list and a watch from its revision ends equal to the store."""
    seed = [await create(stubs, alice, f"seed {n}") for n in range(5)]
    stop = asyncio.Event()

    async def writer(number: int) -> None:
        step = 0
        while not stop.is_set():
            task = await create(stubs, alice, f"w{number} {step}")
            await patch(stubs, alice, seed[step % len(seed)].id, title=f"w{number} {step}")
            if step % 3 == 0:
                await stubs.tasks.DeleteTask(
                    pb.DeleteTaskRequest(id=task.id), metadata=alice.metadata
                )
            step += 1

    writers = [asyncio.ensure_future(writer(n)) for n in range(3)]
    try:
        mirror: dict[int, task_pb2.Task] = {}
        listed = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_size=1000, show_deleted=True), metadata=alice.metadata
        )
        mirror = {task.id: task for task in listed.tasks}
        stream = watch(stubs, alice, listed.revision)
        await read_until(stream, lambda r: len(changes(r)) >= 10)  # writes went on meanwhile
    finally:
        stop.set()
        await asyncio.gather(*writers)
    # A read's revision may trail the writes committed just before it (they are numbered off
    # the writers' path); number them, so the final list's revision covers every write in it.
    await app.database.number_changes()
    final = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(page_size=1000, show_deleted=True), metadata=alice.metadata
    )
    stream2 = watch(stubs, alice, listed.revision)  # the same watch again, read to the end
    for response in changes(await read_until(stream2, reached(final.revision))):
        if response.change.type == PURGED:
            mirror.pop(response.change.task.id, None)
        else:
            mirror[response.change.task.id] = response.change.task
    assert mirror == {task.id: task for task in final.tasks}
    stream.cancel()
    stream2.cancel()


async def test_resuming_from_the_last_revision_seen_delivers_every_change_exactly_once(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    start = await current_revision(app, stubs, alice)
    first = watch(stubs, alice, start)
    for n in range(6):
        await create(stubs, alice, f"before {n}")
    seen = changes(await read_until(first, lambda r: len(changes(r)) >= 3))
    first.cancel()  # the stream drops mid-way
    for n in range(4):
        await create(stubs, alice, f"after {n}")
    final = await current_revision(app, stubs, alice)
    second = watch(stubs, alice, seen[-1].revision)
    seen += changes(await read_until(second, reached(final)))
    assert [r.revision for r in seen] == list(range(start + 1, final + 1))
    second.cancel()


async def test_a_resume_from_a_bookmark_skips_nothing(stubs: Stubs, alice: Account) -> None:
    stream = watch(stubs, alice)
    bookmark = (await read_until(stream, lambda r: len(r) == 1))[0].revision
    stream.cancel()
    task = await create(stubs, alice)
    resumed = watch(stubs, alice, bookmark)
    seen = changes(await read_until(resumed, lambda r: len(changes(r)) == 1))
    assert (seen[0].change.task.id, seen[0].revision) == (task.id, bookmark + 1)
    resumed.cancel()


async def test_a_stream_opened_on_an_idle_feed_is_live_from_the_stores_revision(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    for n in range(3):
        await create(stubs, alice, f"unwatched {n}")
    revision = await current_revision(app, stubs, alice)  # numbered while no stream is open
    stream = watch(stubs, alice)
    first = (await read_until(stream, lambda r: len(r) == 1))[0]
    assert (first.revision, changes([first])) == (revision, [])
    task = await create(stubs, alice, "watched")
    seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
    assert [(r.change.task.id, r.revision) for r in seen] == [(task.id, revision + 1)]
    stream.cancel()


async def test_two_interleaved_transactions_are_both_delivered_in_commit_order(
    app: Application, stubs: Stubs, alice: Account, database_url: str
) -> None:
    """Revisions follow commit order, not the order in which transactions began writing.

    Transaction A changes a task first and stays open; transaction B, begun later, inserts a
    task. On PostgreSQL B commits while A is open, and the watcher gets B's change at once, at
    the next revision: a change log numbered before commit would have put A's change first and
    left the watcher either waiting for it or skipping it. A's change follows when A commits,
    at the revision after. SQLite has one writer, so B waits for A and the order is A, B. Either
    way both arrive, densely numbered, each once.
    """
    existing = await create(stubs, alice, "existing")
    start = await current_revision(app, stubs, alice)
    stream = watch(stubs, alice, start)
    await read_until(stream, lambda r: len(r) == 1)  # the opening bookmark
    engine = create_async_engine(database_url, poolclass=NullPool)
    sqlite = database_url.startswith("sqlite")
    insert = text(
        "INSERT INTO tasks (owner_id, title, description, status, version, create_time,"
        " update_time, priority, labels, position)"
        " VALUES (:owner, 'from B', '', 'todo', 1, :now, :now, 0, '[]', 0)"
    )
    now = datetime.now(UTC).replace(tzinfo=None) if sqlite else datetime.now(UTC)
    try:
        async with engine.connect() as a, engine.connect() as b:
            if sqlite:
                await a.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await a.begin()
            await a.execute(
                text("UPDATE tasks SET title = 'from A', version = version + 1 WHERE id = :id"),
                {"id": existing.id},
            )

            async def run_b() -> None:
                if sqlite:
                    await b.exec_driver_sql("BEGIN IMMEDIATE")  # waits for A's write lock
                else:
                    await b.begin()
                await b.execute(insert, {"owner": alice.user.id, "now": now})
                await b.commit()

            b_done = asyncio.ensure_future(run_b())
            if sqlite:
                # While A is open, B cannot commit, and the watcher sees only bookmarks.
                quiet = await read_until(stream, lambda r: len(r) >= 3)
                assert [r.revision for r in quiet] == [start] * len(quiet)
                assert not b_done.done()
            else:
                await asyncio.wait_for(b_done, DEADLINE)
                first = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
                assert [r.revision for r in first] == [start + 1]
                assert first[0].change.task.title == "from B"
            await a.commit()
            await asyncio.wait_for(b_done, DEADLINE)
    finally:
        await engine.dispose()
    if sqlite:
        seen = changes(await read_until(stream, lambda r: len(changes(r)) == 2))
        assert [(r.revision, r.change.task.title) for r in seen] == [
            (start + 1, "from A"),
            (start + 2, "from B"),
        ]
    else:
        seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
        assert [(r.revision, r.change.task.title) for r in seen] == [(start + 2, "from A")]
    assert seen[0].change.task.id == existing.id
    stream.cancel()


async def test_a_start_revision_before_the_kept_history_is_revision_compacted(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    for n in range(3):
        await create(stubs, alice, f"old {n}")
    current = await current_revision(app, stubs, alice)
    assert app.feed is not None
    assert await app.feed.compact(datetime.now(UTC) + timedelta(days=2)) == current
    failure = await fails(watch(stubs, alice, 1).read(), grpc.StatusCode.FAILED_PRECONDITION)
    assert failure.reason == "REVISION_COMPACTED"
    assert failure.error_metadata == {"oldest_revision": str(current)}
    task = await create(stubs, alice, "new")
    stream = watch(stubs, alice, current)  # the oldest revision available still works
    seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
    assert seen[0].change.task.id == task.id
    stream.cancel()


async def test_recent_history_survives_compaction(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    start = await current_revision(app, stubs, alice)
    await create(stubs, alice)
    assert app.feed is not None
    assert await app.feed.compact() == 0  # the default 24 hours have not passed
    stream = watch(stubs, alice, start)
    assert len(changes(await read_until(stream, lambda r: len(changes(r)) == 1))) == 1
    stream.cancel()


async def test_bad_start_revisions_and_filters_are_refused(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    current = await current_revision(app, stubs, alice)
    failure = await fails(watch(stubs, alice, current + 1).read(), grpc.StatusCode.OUT_OF_RANGE)
    assert failure.reason == "REVISION_NOT_YET"
    assert failure.error_metadata == {"current_revision": str(current)}
    failure = await fails(watch(stubs, alice, -1).read(), grpc.StatusCode.INVALID_ARGUMENT)
    assert "start_revision" in failure.fields
    failure = await fails(
        watch(stubs, alice, filter="status = ").read(), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "filter" in failure.fields


async def test_bookmarks_arrive_on_an_idle_stream(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    current = await current_revision(app, stubs, alice)
    stream = watch(stubs, alice)
    responses = await read_until(stream, lambda r: len(r) >= 3)
    assert [r.revision for r in responses] == [current] * 3
    assert not changes(responses)
    stream.cancel()


async def test_a_bookmark_reaches_past_changes_the_filter_hides(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    stream = watch(stubs, alice, filter='title = "wanted"')
    await read_until(stream, lambda r: len(r) == 1)
    await create(stubs, alice, "unwanted")
    current = await current_revision(app, stubs, alice)
    responses = await read_until(stream, reached(current))
    assert not changes(responses), "the hidden change is not sent, but the bookmark moves on"
    stream.cancel()


async def test_each_user_sees_only_their_own_tasks_and_admins_choose(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    bob = await register(stubs)
    admin = await make_admin(app, stubs)
    alices = watch(stubs, alice)
    everyone = watch(stubs, admin)
    bobs_only = watch(stubs, admin, owner_id=bob.user.id)
    for stream in (alices, everyone, bobs_only):
        await read_until(stream, lambda r: len(r) == 1)
    bobs = await create(stubs, bob, "bob's")
    alices_task = await create(stubs, alice, "alice's")
    final = await current_revision(app, stubs, alice)

    def ids(stream: object) -> object:
        async def read() -> list[int]:
            responses = await read_until(stream, reached(final))
            return [r.change.task.id for r in changes(responses)]

        return read()

    assert await ids(alices) == [alices_task.id]
    assert await ids(everyone) == [bobs.id, alices_task.id]
    assert await ids(bobs_only) == [bobs.id]
    await fails(watch(stubs, alice, owner_id=bob.user.id).read(), grpc.StatusCode.PERMISSION_DENIED)
    for stream in (alices, everyone, bobs_only):
        stream.cancel()


async def test_history_replayed_to_a_user_holds_only_their_tasks(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    bob = await register(stubs)
    admin = await make_admin(app, stubs)
    start = await current_revision(app, stubs, alice)
    bobs = await create(stubs, bob, "bob's")
    alices = await create(stubs, alice, "alice's")
    final = await current_revision(app, stubs, alice)
    cases = [
        (alice, {}, [alices.id]),
        (admin, {}, [bobs.id, alices.id]),
        (admin, {"owner_id": bob.user.id}, [bobs.id]),
        (admin, {"owner_id": 0}, []),  # no user has id 0
    ]
    for account, fields, expected in cases:
        stream = watch(stubs, account, start, **fields)
        seen = changes(await read_until(stream, reached(final)))
        assert [r.change.task.id for r in seen] == expected
        stream.cancel()


async def test_a_task_leaving_the_filter_is_seen_leaving_it(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    stream = watch(stubs, alice, filter="status = TASK_STATUS_TODO")
    await read_until(stream, lambda r: len(r) == 1)
    task = await create(stubs, alice)
    done = await patch(stubs, alice, task.id, status=task_pb2.TASK_STATUS_DONE)
    await patch(stubs, alice, task.id, title="still done")  # outside the view before and after
    final = await current_revision(app, stubs, alice)
    seen = changes(await read_until(stream, reached(final)))
    assert [(r.change.type, r.change.task) for r in seen] == [(CREATED, task), (UPDATED, done)]
    stream.cancel()


async def test_deleting_a_user_purges_their_tasks_in_the_stream(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    admin = await make_admin(app, stubs)
    task = await create(stubs, alice)
    # Number the create first (the feed does it just after commit): a stream from the current
    # revision then starts after it, and its first change is the purge.
    await app.database.number_changes()
    stream = watch(stubs, admin)
    await read_until(stream, lambda r: len(r) == 1)
    await stubs.users.DeleteUser(
        user_service_pb2.DeleteUserRequest(id=alice.user.id), metadata=admin.metadata
    )
    seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
    assert (seen[0].change.type, seen[0].change.task.id) == (PURGED, task.id)
    stream.cancel()


async def test_a_revoked_token_ends_the_stream_unauthenticated(
    stubs: Stubs, alice: Account
) -> None:
    stream = watch(stubs, alice)
    await read_until(stream, lambda r: len(r) == 1)
    await stubs.auth.ChangePassword(
        auth_service_pb2.ChangePasswordRequest(
            current_password=PASSWORD, new_password="another good password"
        ),
        metadata=alice.metadata,
    )
    revoked = time.monotonic()
    _, error = await ended_with(stream)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - revoked < 5.0, "within the 5 seconds the API promises"


async def test_an_expiring_token_ends_the_stream_unauthenticated(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    # A token that expires two seconds from now (the server allows LEEWAY_SECONDS of skew).
    codec = TokenCodec(
        algorithm="HS256",
        signing_key=TEST_SIGNING_KEY,
        verifying_key=TEST_SIGNING_KEY,
        issuer=app.settings.jwt_issuer,
        audience=app.settings.jwt_audience,
        lifetime_seconds=2,
        clock=lambda: time.time() - LEEWAY_SECONDS,
    )
    short = codec.issue(alice.user.id, 0).access_token
    stream = stubs.tasks.WatchTasks(pb.WatchTasksRequest(), metadata=bearer(short))
    await read_until(stream, lambda r: len(r) == 1)
    expires = time.monotonic() + 2
    _, error = await ended_with(stream)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - expires < 5.0


async def test_streams_sharing_a_credential_share_one_check_per_pass(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    """Six streams, two tokens: each pass checks two credentials, not six streams."""
    checks = app.stream_credentials
    assert checks is not None
    bob = await register(stubs)
    streams = [watch(stubs, alice) for _ in range(5)] + [watch(stubs, bob)]
    for stream in streams:
        await read_until(stream, lambda r: len(r) == 1)
    assert checks.credentials == 2
    passes, made = checks.passes_total, checks.checks_total
    async with asyncio.timeout(DEADLINE):
        while checks.passes_total < passes + 3:  # noqa: ASYNC110 - polled under a deadline
            await asyncio.sleep(0.05)
    assert checks.checks_last_pass == 2
    assert checks.checks_total - made <= 2 * (checks.passes_total - passes + 1)
    for stream in streams:
        stream.cancel()
    async with asyncio.timeout(DEADLINE):
        while checks.credentials:  # noqa: ASYNC110 - polled under a deadline
            await asyncio.sleep(0.01)


async def test_a_failed_credential_ends_only_the_streams_presenting_it(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    codec = TokenCodec(
        algorithm="HS256",
        signing_key=TEST_SIGNING_KEY,
        verifying_key=TEST_SIGNING_KEY,
        issuer=app.settings.jwt_issuer,
        audience=app.settings.jwt_audience,
        lifetime_seconds=2,
        clock=lambda: time.time() - LEEWAY_SECONDS,
    )
    short = stubs.tasks.WatchTasks(
        pb.WatchTasksRequest(), metadata=bearer(codec.issue(alice.user.id, 0).access_token)
    )
    lasting = [watch(stubs, alice) for _ in range(2)]
    for stream in [short, *lasting]:
        await read_until(stream, lambda r: len(r) == 1)
    _, error = await ended_with(short)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    task = await create(stubs, alice, "after the other token expired")
    for stream in lasting:
        seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
        assert seen[0].change.task.id == task.id
        stream.cancel()


async def test_a_stream_without_a_token_is_unauthenticated(stubs: Stubs) -> None:
    call = stubs.tasks.WatchTasks(pb.WatchTasksRequest())
    failure = await fails(call.read(), grpc.StatusCode.UNAUTHENTICATED)
    assert failure.reason == "TOKEN_MISSING"


async def test_a_cancelled_stream_leaves_the_feed(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    assert app.feed is not None
    stream = watch(stubs, alice)
    await read_until(stream, lambda r: len(r) == 1)
    assert app.feed.streams == 1
    stream.cancel()
    async with asyncio.timeout(DEADLINE):
        while app.feed.streams:  # noqa: ASYNC110 - polled under a deadline
            await asyncio.sleep(0.01)


@pytest.fixture
async def small_app(database_url: str) -> AsyncIterator[Application]:
    """A server with tiny watch limits: 4 buffered changes, 2 streams."""
    application = await build_server(
        watch_settings(database_url, watch_buffer_events=4, watch_max_streams=2)
    )
    await application.start()
    yield application
    await application.stop(grace=None)


async def test_a_slow_reader_is_cut_off_and_its_buffer_dropped(small_app: Application) -> None:
    """The reader stops reading; the server buffers at most 4 changes for it, then ends it."""
    feed = small_app.feed
    assert feed is not None
    async with stubs_for(small_app) as stubs:
        alice = await register(stubs)
        start = await current_revision(small_app, stubs, alice)
        stream = watch(stubs, alice, start)
        await read_until(stream, lambda r: len(r) == 1)
        big = "x" * 10_000  # fills the transport's flow-control window in a few messages
        async with asyncio.timeout(60):
            while feed.too_slow_total == 0:
                await create(stubs, alice, description=big)
                assert feed.buffered() <= 4
        assert feed.buffered() == 0, "the cut stream's buffer is dropped at once"
        received, error = await ended_with(stream)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(error) == "WATCHER_TOO_SLOW"
        revisions = [r.revision for r in changes(received)]
        assert revisions == list(range(start + 1, start + 1 + len(revisions))), "no gap before"


async def test_streams_beyond_the_limit_are_refused(small_app: Application) -> None:
    async with stubs_for(small_app) as stubs:
        alice = await register(stubs)
        open_streams = [watch(stubs, alice) for _ in range(2)]
        for stream in open_streams:
            await read_until(stream, lambda r: len(r) == 1)
        failure = await fails(watch(stubs, alice).read(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert failure.reason == "TOO_MANY_WATCHERS"
        for stream in open_streams:
            stream.cancel()


async def test_stopping_the_server_ends_streams_unavailable_at_once(database_url: str) -> None:
    application = await build_server(watch_settings(database_url))
    await application.start()
    stopped = False
    try:
        async with stubs_for(application) as stubs:
            alice = await register(stubs)
            streams = [watch(stubs, alice) for _ in range(3)]
            for stream in streams:
                await read_until(stream, lambda r: len(r) == 1)
            began = time.monotonic()
            stopping = asyncio.ensure_future(application.stop(grace=30))
            for stream in streams:
                _, error = await ended_with(stream)
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert _reason(error) == "SHUTTING_DOWN"
            await asyncio.wait_for(stopping, DEADLINE)
            stopped = True
            assert time.monotonic() - began < 10.0, "the drain did not wait out its grace"
    finally:
        if not stopped:
            await application.stop(grace=None)


async def test_two_servers_on_one_postgresql_database_deliver_each_others_changes(
    pg_database_url: str,
) -> None:
    one = await build_server(watch_settings(pg_database_url))
    two = await build_server(watch_settings(pg_database_url))
    await one.start()
    await two.start()
    try:
        async with stubs_for(one) as first, stubs_for(two) as second:
            alice = await register(first)
            on_one = watch(first, alice)
            on_two = watch(second, alice)
            for stream in (on_one, on_two):
                await read_until(stream, lambda r: len(r) == 1)
            via_two = await create(second, alice, "via two")
            via_one = await create(first, alice, "via one")
            for stream in (on_one, on_two):
                seen = changes(await read_until(stream, lambda r: len(changes(r)) == 2))
                assert [r.change.task.id for r in seen] == [via_two.id, via_one.id]
                stream.cancel()
    finally:
        await one.stop(grace=None)
        await two.stop(grace=None)


def _reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason a stream ended with."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


async def test_a_stream_gets_one_access_log_line_with_its_final_code(
    stubs: Stubs, alice: Account, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskservice.access")
    stream = watch(stubs, alice)
    await read_until(stream, lambda r: len(r) == 1)
    stream.cancel()
    failure = watch(stubs, alice, -1)
    await fails(failure.read(), grpc.StatusCode.INVALID_ARGUMENT)
    method = "/taskservice.v1.TaskService/WatchTasks"

    def codes() -> list[str]:
        return [r.grpc_code for r in caplog.records if r.getMessage().startswith(method)]

    async with asyncio.timeout(DEADLINE):
        while len(codes()) < 2:  # noqa: ASYNC110 - the cancelled stream logs when it unwinds
            await asyncio.sleep(0.01)
    assert sorted(codes()) == ["CANCELLED", "INVALID_ARGUMENT"]


async def test_watchers_progress_while_the_listen_connection_is_down(
    pg_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A change made through another server arrives by polling; the loss is in the log."""
    caplog.set_level(logging.INFO, logger="taskservice.watch.feed")
    watching = await build_server(watch_settings(pg_database_url))
    writing = await build_server(watch_settings(pg_database_url))
    await watching.start()
    await writing.start()
    try:
        async with stubs_for(watching) as first, stubs_for(writing) as second:
            alice = await register(first)
            stream = watch(first, alice)
            await read_until(stream, lambda r: len(r) == 1)
            assert watching.feed is not None
            listener = watching.feed._listener
            assert listener is not None
            await listener.stop()  # as if the connection were gone for good
            assert "LISTEN task_changes lost" in caplog.text
            task = await create(second, alice, "via the other server")
            seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
            assert seen[0].change.task.id == task.id
            stream.cancel()
    finally:
        await watching.stop(grace=None)
        await writing.stop(grace=None)


@pytest.mark.parametrize(
    "due",
    [
        timestamp_pb2.Timestamp(seconds=-62135596800),
        timestamp_pb2.Timestamp(seconds=253402300799, nanos=999999000),
    ],
)
async def test_a_due_time_at_either_end_of_the_range_is_watched_as_it_is_read(
    app: Application, stubs: Stubs, alice: Account, due: timestamp_pb2.Timestamp
) -> None:
    """Range ends: asyncpg stores them as -infinity and infinity; the log reads them back."""
    start = await current_revision(app, stubs, alice)
    created = await stubs.tasks.CreateTask(
        pb.CreateTaskRequest(task=task_pb2.Task(title="at the edge", due_time=due)),
        metadata=alice.metadata,
    )
    stream = watch(stubs, alice, start)
    seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
    got = await stubs.tasks.GetTask(pb.GetTaskRequest(id=created.task.id), metadata=alice.metadata)
    assert seen[0].change.task == got.task == created.task
    stream.cancel()

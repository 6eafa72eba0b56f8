"""The hot reads' fast path (`taskservice.db.reads`): the same rows as SQLAlchemy, and safe.

On PostgreSQL the prebuilt reads run straight on asyncpg; these tests hold them to what
SQLAlchemy returns for the same statements (attribute names, values and Python types), and to
SQLAlchemy's handling of connections whose statement was cut short.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import sqlalchemy
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.dialects.sqlite import aiosqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from taskservice.db.reads import Prepared, PreparedCache, create_read_pool
from taskservice.db.sqlite_reads import SqliteReads
from taskservice.server import Application, build_server
from taskservice.services import api_keys, auth_state, task_lists, tasks, users
from taskservice.services.filtering import parse
from taskservice.v1 import api_key_service_pb2, task_pb2, task_service_pb2
from taskservice.v1 import user_service_pb2 as users_pb
from taskservice.watch import changes
from tests.conftest import PG_ADMIN_DSN, Stubs, make_settings, stubs_for
from tests.helpers import Account, fails, make_admin, register
from tests.test_failures import (
    _asyncpg_dsn,
    _backends_waiting,
    _eventually,
    _waiting_on_locks,
    serving_without_errors,
)


async def _rich_tasks(stubs: Stubs, account: Account) -> list[task_pb2.Task]:
    """Tasks that fill every column: labels, due and complete times, a parent, trash."""
    due = Timestamp()
    due.FromDatetime(datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC))
    parent = (
        await stubs.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(
                    title="parent ✓",
                    description="with\nlines",
                    labels=["Home", "ärger"],
                    due_time=due,
                    priority=task_pb2.TASK_PRIORITY_HIGH,
                )
            ),
            metadata=account.metadata,
        )
    ).task
    child = (
        await stubs.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(title="child", parent_id=parent.id)
            ),
            metadata=account.metadata,
        )
    ).task
    done = await stubs.tasks.PatchTask(
        task_service_pb2.PatchTaskRequest(
            task=task_pb2.Task(id=child.id, status=task_pb2.TASK_STATUS_DONE),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=account.metadata,
    )
    trashed = await _create(stubs, account, "trashed")
    await stubs.tasks.DeleteTask(
        task_service_pb2.DeleteTaskRequest(id=trashed.id), metadata=account.metadata
    )
    return [parent, done.task, trashed]


async def _create(stubs: Stubs, account: Account, title: str) -> task_pb2.Task:
    request = task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title=title))
    return (await stubs.tasks.CreateTask(request, metadata=account.metadata)).task


def _shape(rows: list[Any]) -> list[tuple[tuple[str, ...], tuple[Any, ...], tuple[type, ...]]]:
    return [(tuple(row._fields), tuple(row), tuple(type(value) for value in row)) for row in rows]


async def test_the_fast_reads_return_exactly_what_sqlalchemy_returns(
    app: Application, stubs: Stubs
) -> None:
    account = await register(stubs)
    found = await _rich_tasks(stubs, account)
    key = await stubs.api_keys.CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(display_name="reads"), metadata=account.metadata
    )
    lookup = key.secret.split("_")[1]
    owner = account.user.id
    reads: list[tuple[Prepared, dict[str, object]]] = [
        (tasks._GET[False], {"task_id": found[0].id, "caller_id": owner}),
        (tasks._GET[True], {"task_id": found[1].id, "caller_id": 0}),
        (tasks._GET[False], {"task_id": found[0].id, "caller_id": owner + 1}),  # none
        (tasks._REVISION, {}),
        (users._USER_BY_ID, {"user_id": owner}),
        (auth_state._STATE, {"user_id": owner}),
        (api_keys._KEY_BY_LOOKUP, {"lookup": lookup}),
        (changes._PAGE, {"after": 0, "until": 2**63 - 1, "limit": 10}),
    ]
    for (by_owner, by_member, by_status, after), read in tasks._LISTS.items():
        values = {
            "owner_id": owner if by_owner else None,
            "member_id": owner if by_member else None,
            "status": tasks.TaskStatus.DONE if by_status else None,
            "after": found[-1].id + 1 if after else None,
            "limit": 10,
        }
        reads.append((read, values))
    # A view testing a label, and one reading the owner's keys of it (task_lists.with_owner_label).
    views = [
        ('labels:"home" OR due_time:*', "due_time desc", datetime(2040, 1, 1, tzinfo=UTC), 1),
        ('due_time:* AND labels:"home"', "", None, found[-1].id + 1),
    ]
    for filter_text, order_by, after_value, after_id in views:
        parsed = parse(filter_text, tasks.TASK_FILTER_SCHEMA, "filter")
        seek = task_lists.Seek(found=True, in_missing=False, value=after_value, task_id=after_id)
        view = tasks._view_statements(
            parsed,
            task_lists.parse_order_by(order_by),
            seek,
            by_owner=True,
            by_member=False,
            by_status=False,
            show_deleted=True,
        )
        values = {"owner_id": owner, "limit": 10, **seek.parameters()}
        reads.extend((statement, values) for statement in view)
    # The change feed numbers changes in the background: number them all now, so no row's
    # revision changes between its fast and its slow read.
    await app.database.number_changes()
    async with app.database.reads() as reader, app.database.rows() as connection:
        for read, values in reads:
            fast = await reader.all(read, values)
            slow = list((await connection.execute(read.statement, values)).all())
            assert _shape(fast) == _shape(slow), read.statement
    # Every kind of read found something, and the rows hold what the API showed.
    async with app.database.reads() as reader:
        task = await reader.first(tasks._GET[False], {"task_id": found[0].id, "caller_id": owner})
        assert (task.title, task.labels, task.status) == ("parent ✓", ["Home", "ärger"], "todo")
        assert task.due_time == datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        # In UTC itself, whatever the driver returned.
        assert task.due_time.tzinfo is UTC
        assert task.create_time.tzinfo is UTC
        foreign = {"task_id": found[0].id, "caller_id": 0}
        assert await reader.first(tasks._GET[False], foreign) is None
        assert (await reader.first(api_keys._KEY_BY_LOOKUP, {"lookup": lookup})).user_id == owner


async def test_reads_cut_short_close_their_connections_and_the_pool_recovers(
    pg_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """GetTask calls blocked in PostgreSQL time out or are cancelled; nothing is left behind.

    A lock on the whole table blocks every read of it. The statements of the calls that gave
    up stop in PostgreSQL (nothing waits on the lock any more), their connections are closed
    rather than pooled, and the pool then serves reads again with no error logged.
    """
    database = make_url(pg_database_url).database
    assert database is not None
    async with (
        serving_without_errors(pg_database_url, caplog) as application,
        stubs_for(application) as stubs,
    ):
        account = await register(stubs)
        task = await _create(stubs, account, "locked")
        get = task_service_pb2.GetTaskRequest(id=task.id)
        await stubs.tasks.GetTask(get, metadata=account.metadata)  # the user is cached
        locker = await asyncpg.connect(_asyncpg_dsn(pg_database_url))
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            timed_out = await asyncio.gather(
                *(
                    stubs.tasks.GetTask(get, metadata=account.metadata, timeout=0.3)
                    for _ in range(40)
                ),
                return_exceptions=True,
            )
            codes = {r.code() if isinstance(r, grpc.aio.AioRpcError) else r for r in timed_out}
            assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
            calls = [stubs.tasks.GetTask(get, metadata=account.metadata) for _ in range(20)]

            async def some_wait() -> bool:
                return await _waiting_on_locks(database) > 0

            await _eventually(some_wait, 5.0)
            for call in calls:
                call.cancel()
            cancelled = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in cancelled)

            async def nothing_waits() -> bool:
                return await _waiting_on_locks(database) == 0

            await _eventually(nothing_waits, 5.0)
        finally:
            await locker.close()
        for _ in range(30):  # the pool still serves, on good connections
            got = await stubs.tasks.GetTask(get, metadata=account.metadata, timeout=5)
            assert got.task == task
        admin = await make_admin(application, stubs)
        listed = await stubs.users.GetUser(
            users_pb.GetUserRequest(id=account.user.id), metadata=admin.metadata
        )
        assert listed.user.id == account.user.id
        await fails(
            stubs.tasks.GetTask(
                task_service_pb2.GetTaskRequest(id=task.id + 1000), metadata=account.metadata
            ),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_a_connection_given_back_goes_to_a_caller_waiting_for_one(
    pg_database_url: str,
) -> None:
    """The read pool keeps connections at hand between calls, but never from a waiting caller.

    With every connection busy a caller waits in asyncpg's queue; a connection released then
    must go to it (kept at hand, it would serve only later callers while this one waited until
    its deadline). Once nobody waits, a released connection is kept at hand and reused.
    """
    pool = await create_read_pool(1, asyncpg.connect, {"dsn": _asyncpg_dsn(pg_database_url)})
    try:
        first, generation = await pool.acquire()
        backend = first.get_server_pid()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)  # the waiter is queued in asyncpg's pool
        assert not waiting.done()
        await pool.release(first, generation)
        async with asyncio.timeout(5):
            second, generation = await waiting
        assert second.get_server_pid() == backend
        await pool.release(second, generation)
        assert pool.in_use() == 0
        again, generation = await pool.acquire()  # from hand, no wait
        assert again is second
        await pool.release(again, generation)
        async with asyncio.timeout(5):
            await pool.close()  # the connection at hand goes back first, or this would wait
    finally:
        pool.terminate()


async def _sleeping_backends(database: str) -> int:
    """Backends of `database` inside pg_sleep now."""
    return await _backends_waiting(database, "wait_event", "PgSleep")


async def test_a_read_cancelled_mid_statement_ends_cancelled_and_holds_nothing(
    pg_database_url: str,
) -> None:
    """Cancelled while PostgreSQL runs its statement, a read ends with the cancellation itself.

    Its connection is closed mid-exchange, and asyncpg takes it back at once; giving it back
    afterwards must not fail (an error there would replace the cancellation, and the change
    feed, which stops by cancellation, would never stop). PostgreSQL stops the statement.
    """
    database = make_url(pg_database_url).database
    assert database is not None
    application = await build_server(make_settings(pg_database_url))
    await application.start()
    try:
        sleep = Prepared(sqlalchemy.select(sqlalchemy.func.pg_sleep(60)))

        async def read() -> None:
            async with application.database.reads() as reader:
                await reader.all(sleep)

        reading = asyncio.ensure_future(read())

        async def sleeping() -> bool:
            return await _sleeping_backends(database) == 1

        await _eventually(sleeping, 5.0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

        async def given_back() -> bool:
            return application.database.connections_in_use() == 0

        await _eventually(given_back, 5.0)

        async def stopped() -> bool:
            return await _sleeping_backends(database) == 0

        await _eventually(stopped, 5.0)
        async with application.database.reads() as reader:  # the pool still serves
            assert await reader.scalar(tasks._REVISION) is not None
    finally:
        await application.stop(grace=None)


async def test_a_connection_the_server_drops_while_at_hand_is_skipped(
    pg_database_url: str,
) -> None:
    """A connection kept at hand that PostgreSQL ends (a restart, an idle timeout) is not used.

    asyncpg takes it back when it sees it close; the next call gets a working connection, not
    an error, and nothing counts as in use.
    """
    dsn = _asyncpg_dsn(pg_database_url)
    pool = await create_read_pool(2, asyncpg.connect, {"dsn": dsn})
    try:
        kept, generation = await pool.acquire()
        backend = kept.get_server_pid()
        await pool.release(kept, generation)  # at hand now
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
        finally:
            await admin.close()

        async def taken_back() -> bool:
            try:
                kept.is_closed()
            except asyncpg.InterfaceError:  # released back to asyncpg's pool
                return True
            return False

        await _eventually(taken_back, 5.0)
        assert pool.in_use() == 0
        fresh, generation = await pool.acquire()
        assert fresh.get_server_pid() != backend
        assert await fresh.fetchval("SELECT 1") == 1
        await pool.release(fresh, generation)
        assert pool.in_use() == 0
    finally:
        pool.terminate()


async def test_a_prepared_insert_breaking_a_constraint_raises_integrity_error(
    app: Application,
) -> None:
    """Services catch SQLAlchemy's IntegrityError, whichever path ran the INSERT."""
    now = datetime.now(UTC)
    row = {
        "owner_id": 987_654_321,  # no such user: the foreign key refuses the row
        "title": "orphan",
        "description": "",
        "status": tasks.TaskStatus.TODO,
        "due_time": None,
        "priority": 0,
        "labels": [],
        "complete_time": None,
        "parent_id": None,
        "position": 0,
        "creator_id": 987_654_321,
        "version": 1,
        "create_time": now,
        "update_time": now,
    }
    with pytest.raises(IntegrityError):
        await app.database.returning(tasks._INSERT_TASK, row)
    async with app.database.reads() as reader:  # the connection still serves
        assert await reader.scalar(tasks._REVISION) is not None


async def test_the_read_pool_takes_the_database_urls_asyncpg_options(pg_database_url: str) -> None:
    """docs/operations.md's PgBouncer URL (both statement caches off) serves reads on the fast path.

    SQLAlchemy's own options in the URL are not sent to PostgreSQL as settings (PostgreSQL would
    refuse the connection: the LISTEN connections never came up with that URL), and asyncpg's
    `statement_cache_size=0` reaches the read pool's connections (SQLAlchemy's pool passed it
    on as text, which asyncpg refused).
    """
    url = f"{pg_database_url}?prepared_statement_cache_size=0&statement_cache_size=0"
    application = await build_server(make_settings(url))
    await application.start()
    try:
        async with stubs_for(application) as stubs:
            account = await register(stubs)
            task = await _create(stubs, account, "via pgbouncer")
            for _ in range(3):
                got = await stubs.tasks.GetTask(
                    task_service_pb2.GetTaskRequest(id=task.id), metadata=account.metadata
                )
                assert got.task == task
        async with application.database.reads() as reader:
            assert reader._connection._stmt_cache.get_max_size() == 0  # type: ignore[attr-defined]
        assert application.auth_states.caching, "the LISTEN connection came up with that URL"
    finally:
        await application.stop(grace=None)


def test_the_statement_cache_keeps_the_most_recently_used_shapes() -> None:
    cache = PreparedCache(2)
    built: list[str] = []

    def build(name: str) -> list[Prepared]:
        built.append(name)
        return [tasks._REVISION]

    for name in ["a", "b", "a", "c", "a", "b"]:
        assert cache.get(name, lambda name=name: build(name)) == (tasks._REVISION,)
    # "b" was the least recently used when "c" came, and was built again when asked for.
    assert built == ["a", "b", "c", "b"]


#: A read that would run for hours: counting to 10**12 in a recursive CTE.
_ENDLESS = Prepared(
    sqlalchemy.text(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000000000)"
        " SELECT count(*) AS total FROM n"
    ).columns(sqlalchemy.column("total", sqlalchemy.Integer))
)


async def test_a_timed_out_sqlite_read_is_interrupted_and_the_next_read_runs_at_once(
    tmp_path: Path,
) -> None:
    url = make_url(f"sqlite+aiosqlite:///{tmp_path / 'reads.db'}")
    with sqlite3.connect(url.database) as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO t VALUES (1, 'one')")
    table = sqlalchemy.table("t", sqlalchemy.column("id"), sqlalchemy.column("name"))
    by_id = Prepared(
        sqlalchemy.select(table.c.name).where(table.c.id == sqlalchemy.bindparam("id"))
    )
    reads = SqliteReads(url, sqlite_dialect.dialect(), busy_timeout_ms=100)
    await reads.start()
    try:
        reader = reads.reader()
        assert await reader.scalar(by_id, {"id": 1}) == "one"  # the thread is up and idle
        for _ in range(2):  # and again: an interrupt leaves nothing behind for the next read
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):  # a call's deadline passing mid-read
                    await reader.scalar(_ENDLESS)
            # Without the interrupt the thread would count on for hours before this read.
            assert await asyncio.wait_for(reader.scalar(by_id, {"id": 1}), 5) == "one"
        # A read cancelled while queued behind a running one is skipped, not run.
        running = asyncio.ensure_future(reader.scalar(_ENDLESS))
        queued = asyncio.ensure_future(reader.scalar(_ENDLESS))
        await asyncio.sleep(0)  # one turn of the loop: both are handed to the thread
        queued.cancel()
        running.cancel()
        assert await asyncio.wait_for(reader.scalar(by_id, {"id": 1}), 5) == "one"
    finally:
        await asyncio.wait_for(reads.close(), 5)


async def test_the_sqlite_read_thread_reports_errors_survives_cancellation_and_drains(
    tmp_path: Path,
) -> None:
    url = make_url(f"sqlite+aiosqlite:///{tmp_path / 'reads.db'}")
    with sqlite3.connect(url.database) as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
    assert not SqliteReads.serves(make_url("sqlite+aiosqlite:///:memory:"))
    assert SqliteReads.serves(url)
    table = sqlalchemy.table("t", sqlalchemy.column("id"), sqlalchemy.column("name"))
    by_id = Prepared(
        sqlalchemy.select(table.c.name).where(table.c.id == sqlalchemy.bindparam("id"))
    )
    missing = Prepared(sqlalchemy.select(sqlalchemy.table("nowhere", sqlalchemy.column("x"))))
    writes = Prepared(sqlalchemy.insert(table).values(id=3, name="three").returning(table.c.id))
    reads = SqliteReads(url, sqlite_dialect.dialect(), busy_timeout_ms=100)
    await reads.start()
    try:
        reader = reads.reader()
        with pytest.raises(OperationalError):
            await reader.all(missing)
        with pytest.raises(OperationalError, match="readonly"):
            await reader.all(writes)  # the connection is query_only
        cancelled = asyncio.ensure_future(reader.first(by_id, {"id": 1}))
        await asyncio.sleep(0)
        cancelled.cancel()
        queued = [reader.scalar(by_id, {"id": n}) for n in (1, 2, 3)]
        assert await asyncio.gather(*queued) == ["one", "two", None]
    finally:
        pending = asyncio.ensure_future(reads.reader().scalar(by_id, {"id": 2}))
        await asyncio.sleep(0)  # one turn of the loop: the read is queued
        await reads.close()
    # A read queued before close is answered, not left hanging.
    assert await asyncio.wait_for(pending, 5) == "two"

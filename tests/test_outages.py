"""Database outages, classified once: real PostgreSQL errors through both driver paths.

Each SQLSTATE class a failover produces (raised by PostgreSQL itself, through PL/pgSQL's RAISE)
must reach callers as UNAVAILABLE whichever path met it, SQLAlchemy's or the raw asyncpg reads';
a bug must stay a bug (INTERNAL, logged with its traceback). Then the behaviours built on the
classification: a server that starts while the database is away, a watch stream riding through
a short outage, a live stream behind compacted history, and connections to a node that has
become read-only being discarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.types import Integer, String

from taskservice.calls.errors import status_of
from taskservice.config import load_settings, normalize_database_url
from taskservice.db import outages
from taskservice.db.engine import asyncpg_arguments
from taskservice.db.models import TaskRevision
from taskservice.db.reads import Prepared
from taskservice.server import Application, build_server
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as pb
from taskservice.watch import credentials
from tests.conftest import ManualClock, Stubs, make_settings, stubs_for
from tests.helpers import Account, fails, register
from tests.proxy import TcpProxy
from tests.watching import DEADLINE, changes, ended_with, read_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

_RAISE = """
CREATE OR REPLACE FUNCTION raise_sqlstate(state text) RETURNS integer AS $$
BEGIN
    RAISE EXCEPTION 'raised for a test' USING ERRCODE = state;
END
$$ LANGUAGE plpgsql
"""
_RAISING = Prepared(select(func.raise_sqlstate(bindparam("state", type_=String), type_=Integer)))

#: What each SQLSTATE must reach a caller as.
_EXPECTED = {
    "08006": code_pb2.UNAVAILABLE,  # connection_failure
    "57P01": code_pb2.UNAVAILABLE,  # admin_shutdown
    "57P02": code_pb2.UNAVAILABLE,  # crash_shutdown
    "57P03": code_pb2.UNAVAILABLE,  # cannot_connect_now
    "53300": code_pb2.UNAVAILABLE,  # too_many_connections
    "25006": code_pb2.UNAVAILABLE,  # read_only_sql_transaction (a demoted primary)
    "57014": code_pb2.DEADLINE_EXCEEDED,  # query_canceled (statement_timeout)
    "40P01": code_pb2.ABORTED,  # deadlock_detected
    "22012": code_pb2.INTERNAL,  # division_by_zero: a bug, not an outage
}


def _mapped(error: Exception) -> int:
    return status_of(error, "/test/Method", lambda: None).code


@pytest.fixture
async def raising_app(pg_database_url: str) -> AsyncIterator[Application]:
    connection = await asyncpg.connect(**asyncpg_arguments(normalize_database_url(pg_database_url)))
    try:
        await connection.execute(_RAISE)
    finally:
        await connection.close()
    application = await build_server(make_settings(pg_database_url))
    await application.start()
    yield application
    await application.stop(grace=None)


@pytest.mark.parametrize("state", sorted(_EXPECTED))
async def test_each_sqlstate_maps_the_same_through_sqlalchemy_and_the_raw_reads(
    raising_app: Application, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = raising_app.database
    with pytest.raises(Exception) as through_sqlalchemy:  # noqa: PT011 - whatever wraps it
        async with database.rows() as connection:
            await connection.execute(text("SELECT raise_sqlstate(:state)"), {"state": state})
    with pytest.raises(Exception) as raw:  # noqa: PT011
        async with database.reads() as reader:
            await reader.all(_RAISING, {"state": state})
    assert isinstance(raw.value, asyncpg.PostgresError)  # the fast path sees it unwrapped
    assert outages.sqlstate(through_sqlalchemy.value) == outages.sqlstate(raw.value) == state
    with caplog.at_level(logging.WARNING, logger="taskservice.api.errors"):
        assert _mapped(through_sqlalchemy.value) == _mapped(raw.value) == _EXPECTED[state]
    if _EXPECTED[state] == code_pb2.INTERNAL:
        assert all(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)
    # Both pools are usable afterwards: a connection that met an outage was replaced.
    async with database.reads() as reader:
        assert await reader.scalar(Prepared(select(func.now()))) is not None
    async with database.rows() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1


async def test_driver_exceptions_of_a_failover_map_to_unavailable(pg_database_url: str) -> None:
    arguments = asyncpg_arguments(normalize_database_url(pg_database_url))
    # No host of the URL is what target_session_attrs asks for (here: no standby exists).
    with pytest.raises(asyncpg.TargetServerAttributeNotMatched) as unmatched:
        await asyncpg.connect(**{**arguments, "target_session_attrs": "standby"})
    # A connection its server ended (as a primary's crash does).
    connection = await asyncpg.connect(**arguments)
    killer = await asyncpg.connect(**arguments)
    try:
        await killer.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())
        with pytest.raises(Exception) as terminated:  # noqa: PT011 - 57P01, then a lost one
            await connection.fetch("SELECT 1")
        with pytest.raises(asyncpg.InterfaceError) as closed:
            await connection.fetch("SELECT 1")
    finally:
        await killer.close()
    raised = [
        unmatched.value,
        terminated.value,
        closed.value,
        # An idle pooled connection whose protocol state broke when its server went away
        # (asyncpg's known behaviour, MagicStack/asyncpg#1069): its exact text.
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        outages.DatabaseUnreachable("cannot connect"),
        ConnectionResetError(104, "Connection reset by peer"),
    ]
    for error in raised:
        assert outages.is_outage(error), error
        assert _mapped(error) == code_pb2.UNAVAILABLE, error


@pytest.mark.parametrize(
    "bug",
    [
        FileNotFoundError(2, "No such file or directory", "/nowhere"),
        PermissionError(13, "Permission denied"),
        TimeoutError(),
        KeyError("missing"),
    ],
)
def test_errors_of_bugs_are_internal_and_logged_with_their_traceback(
    bug: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(type(bug)) as raised:
        raise bug
    with caplog.at_level(logging.ERROR, logger="taskservice.api.errors"):
        assert _mapped(raised.value) == code_pb2.INTERNAL
    assert not outages.is_outage(bug)
    assert [r.exc_info is not None for r in caplog.records] == [True]


def test_both_multi_host_url_forms_name_the_same_hosts() -> None:
    libpq = normalize_database_url("postgresql://u:p@db1:5432,db2:5433,db3/tasks")
    sqlalchemy_form = normalize_database_url(
        "postgresql://u:p@/tasks?host=db1:5432&host=db2:5433&host=db3:5432"
    )
    for url in (libpq, sqlalchemy_form):
        arguments = asyncpg_arguments(url)
        assert arguments["host"] == ["db1", "db2", "db3"]
        assert arguments["port"] == [5432, 5433, 5432]
        assert arguments["target_session_attrs"] == "read-write"  # implied for several hosts
        assert (arguments["user"], arguments["password"], arguments["database"]) == (
            "u",
            "p",
            "tasks",
        )
    chosen = normalize_database_url("postgresql://u@a:1,b:2/d?target_session_attrs=any")
    assert asyncpg_arguments(chosen)["target_session_attrs"] == "any"
    assert normalize_database_url("postgresql://u@h:5/d").query == {}  # one host: unchanged
    from_db_host = load_settings(database_url=None, db_host="db1, db2:5433", db_port=6000)
    arguments = asyncpg_arguments(from_db_host.sqlalchemy_url)
    assert (arguments["host"], arguments["port"]) == (["db1", "db2"], [6000, 5433])
    assert arguments["target_session_attrs"] == "read-write"
    with pytest.raises(ValueError, match="empty host"):
        normalize_database_url("postgresql://u@a:1,,b:2/d")


async def _health(stubs: Stubs) -> int:
    return (await stubs.health.Check(health_pb2.HealthCheckRequest(service="readiness"))).status


async def _until(condition: object, what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not await condition():  # type: ignore[operator]
        assert time.monotonic() < end, f"{what} did not happen within {deadline} s"
        await asyncio.sleep(0.05)


async def test_a_server_started_while_the_database_is_away_serves_when_it_comes(
    pg_database_url: str,
) -> None:
    proxy, proxied_url = await TcpProxy.before_database(pg_database_url)
    await proxy.cut()  # refused, as a node that is down
    settings = make_settings(proxied_url, db_connect_timeout_seconds=1.0)
    application = await build_server(settings)
    try:
        await application.start()  # starts, rather than crash-looping
        async with stubs_for(application) as stubs:
            assert await _health(stubs) == NOT_SERVING
            await proxy.restore()

            async def serving() -> bool:
                return await _health(stubs) == SERVING

            await _until(serving, "readiness SERVING")
            alice = await register(stubs)
            stream = stubs.tasks.WatchTasks(pb.WatchTasksRequest(), metadata=alice.metadata)
            await read_until(stream, lambda r: len(r) == 1)  # the first bookmark
            created = await stubs.tasks.CreateTask(
                pb.CreateTaskRequest(task=task_pb2.Task(title="after the outage")),
                metadata=alice.metadata,
            )
            seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
            assert seen[0].change.task.id == created.task.id
            stream.cancel()
    finally:
        await application.stop(grace=None)
        await proxy.close()


async def test_a_watch_stream_rides_through_a_short_outage(
    pg_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskservice.watch.credentials")
    proxy, proxied_url = await TcpProxy.before_database(pg_database_url)
    settings = make_settings(
        proxied_url, db_connect_timeout_seconds=1.0, watch_bookmark_seconds=0.2
    )
    application = await build_server(settings)
    await application.start()
    try:
        async with stubs_for(application) as stubs:
            alice = await register(stubs)
            stream = stubs.tasks.WatchTasks(pb.WatchTasksRequest(), metadata=alice.metadata)
            await read_until(stream, lambda r: len(r) == 1)
            await proxy.cut()

            async def rode_through() -> bool:
                return "the stream stays open" in caplog.text

            await _until(rode_through, "a token check during the outage")
            await proxy.restore()
            created = await _create_retrying(stubs, alice, "after")
            seen = changes(await read_until(stream, lambda r: len(changes(r)) == 1))
            assert seen[0].change.task.id == created.task.id  # the same stream, still open
            stream.cancel()
    finally:
        await application.stop(grace=None)
        await proxy.close()


async def test_watch_streams_end_unavailable_once_an_outage_outlasts_the_tolerance(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two callers' streams, the database refused for longer than the (shortened) tolerance."""
    monkeypatch.setattr(credentials, "OUTAGE_TOLERANCE_SECONDS", 1.0)
    proxy, proxied_url = await TcpProxy.before_database(pg_database_url)
    settings = make_settings(
        proxied_url, db_connect_timeout_seconds=1.0, watch_bookmark_seconds=0.2
    )
    application = await build_server(settings)
    await application.start()
    try:
        async with stubs_for(application) as stubs:
            callers = [await register(stubs), await register(stubs)]
            streams = [
                stubs.tasks.WatchTasks(pb.WatchTasksRequest(), metadata=caller.metadata)
                for caller in callers
            ]
            for stream in streams:
                await read_until(stream, lambda r: len(r) == 1)
            await proxy.cut()
            for stream in streams:
                _, error = await ended_with(stream)
                assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await application.stop(grace=None)
        await proxy.close()


async def _create_retrying(stubs: Stubs, account: Account, title: str) -> pb.CreateTaskResponse:
    """CreateTask as a client following the retry policy does: UNAVAILABLE is retried."""
    end = time.monotonic() + DEADLINE
    codes = []
    while time.monotonic() < end:
        call = stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title=title)), metadata=account.metadata
        )
        try:
            return await call
        except grpc.aio.AioRpcError:
            codes.append(await call.code())
            if codes[-1] != grpc.StatusCode.UNAVAILABLE:
                break
        await asyncio.sleep(0.1)
    raise AssertionError(f"creates did not resume: {codes}")


async def test_a_live_stream_behind_compacted_history_ends_revision_compacted(
    app: Application, stubs: Stubs, clock: ManualClock
) -> None:
    alice: Account = await register(stubs)
    stream = stubs.tasks.WatchTasks(pb.WatchTasksRequest(), metadata=alice.metadata)
    await read_until(stream, lambda r: len(r) == 1)  # live
    feed = app.feed
    assert feed is not None

    async def create(title: str) -> None:
        await stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title=title)), metadata=alice.metadata
        )

    async with feed._reading:  # the feed lags: it reads nothing meanwhile
        for n in range(3):
            await create(f"missed {n}")
        await app.database.number_changes()
        clock.advance(days=2)  # past the retention: another server compacts them
        compacted = await feed.compact()
        assert compacted > feed.revision
        await create("after the hole")
        await app.database.number_changes()
    responses, error = await ended_with(stream)
    assert not changes(responses), "a change past the hole was delivered"
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "relist" in (error.details() or "")
    failure = await fails(
        stubs.tasks.WatchTasks(
            pb.WatchTasksRequest(start_revision=1), metadata=alice.metadata
        ).read(),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert failure.reason == "REVISION_COMPACTED"


async def test_connections_to_a_node_that_turned_read_only_are_discarded(
    pg_database_url: str,
) -> None:
    """A demoted primary refuses writes (25006) on connections that are otherwise healthy.

    The calls that meet it answer UNAVAILABLE, never INTERNAL, and those connections are not
    kept: once writes are possible again, they succeed at once.
    """
    database = make_url(pg_database_url).database
    application = await build_server(make_settings(pg_database_url))
    await application.start()
    admin = await asyncpg.connect(**asyncpg_arguments(normalize_database_url(pg_database_url)))
    try:
        async with stubs_for(application) as stubs:
            alice = await register(stubs)
            request = pb.CreateTaskRequest(task=task_pb2.Task(title="t"))
            await stubs.tasks.CreateTask(request, metadata=alice.metadata)  # pools hold some
            await admin.execute(
                f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
            )
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            for _ in range(3):  # every connection now is a read-only session
                await fails(
                    stubs.tasks.CreateTask(request, metadata=alice.metadata),
                    grpc.StatusCode.UNAVAILABLE,
                )
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            await _create_retrying(stubs, alice, "writable again")
            for _ in range(3):  # no read-only session was kept in either pool
                await stubs.tasks.CreateTask(request, metadata=alice.metadata)
    finally:
        await admin.close()
        await application.stop(grace=None)


async def test_a_silent_first_host_does_not_hide_the_next_one(pg_database_url: str) -> None:
    """Each host gets its own connect timeout, and the host that served last is tried first.

    The first host of the list accepts TCP connections and then says nothing, as a powered-off
    or partitioned primary behind a load balancer does; the second is the real database.
    """
    url = make_url(pg_database_url)
    silent = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    silent.blackhole()
    await silent.start()
    hosts = f"127.0.0.1:{silent.port},{url.host or '127.0.0.1'}:{url.port or 5432}"
    user = url.username or "postgres"
    settings = make_settings(
        f"postgresql://{user}@{hosts}/{url.database}", db_connect_timeout_seconds=1.0
    )
    application = await build_server(settings)
    await application.start()
    try:
        async with stubs_for(application) as stubs:

            async def serving() -> bool:
                return await _health(stubs) == SERVING

            await _until(serving, "readiness SERVING past the silent host")
            alice = await register(stubs)
            started = time.monotonic()
            for n in range(5):  # new connections go straight to the host that served
                await stubs.tasks.CreateTask(
                    pb.CreateTaskRequest(task=task_pb2.Task(title=f"t{n}")),
                    metadata=alice.metadata,
                )
            assert time.monotonic() - started < DEADLINE
    finally:
        await application.stop(grace=None)
        await silent.close()


async def test_live_streams_end_when_a_failover_takes_revisions_back(
    app: Application, stubs: Stubs
) -> None:
    """A new primary that lacked the newest commits numbers new changes with used revisions.

    The feed notices the store's revision below its own and ends every live stream with
    REVISION_COMPACTED (relist), rather than skipping the changes that reuse those numbers.
    """
    alice: Account = await register(stubs)
    for n in range(3):
        await stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title=f"t{n}")), metadata=alice.metadata
        )
    await app.database.number_changes()
    stream = stubs.tasks.WatchTasks(pb.WatchTasksRequest(), metadata=alice.metadata)
    await read_until(stream, lambda r: len(r) == 1)
    feed = app.feed
    assert feed is not None

    async def caught_up() -> bool:
        return feed.revision == (await _store_revision(app))

    await _until(caught_up, "the feed at the store's revision")
    async with app.database.write() as session:  # as the promoted standby's counter would be
        await session.execute(update(TaskRevision).values(revision=TaskRevision.revision - 2))
    responses, error = await ended_with(stream)
    assert not changes(responses)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "relist" in (error.details() or "")


async def _store_revision(app: Application) -> int:
    async with app.database.rows() as connection:
        return int((await connection.execute(select(TaskRevision.revision))).scalar_one())

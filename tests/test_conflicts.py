"""Transactions PostgreSQL aborts for a conflict (deadlock, serialization failure) are retried.

Callers see OK, or the documented code for what really happened (the owner is gone, the caller's
token is revoked), never ABORTED for a conflict the server could resolve by running the
transaction again; only when every attempt lost does ABORTED CONCURRENT_TRANSACTION reach them.

Deadlocks are made on purpose with connections the test controls. PostgreSQL breaks a cycle by
aborting the transaction whose `deadlock_timeout` runs out while the cycle exists, and a waiter
checks only once, when its timeout first runs out: so the test's own connections wait with a
long timeout, and the cycle is always closed by the server's transaction, which therefore loses.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from taskservice.calls.context import REQUEST_ID_KEY
from taskservice.db import retry
from taskservice.db.models import Task
from taskservice.log import configure_logging
from taskservice.server import Application, build_server
from taskservice.v1 import task_pb2, task_service_pb2, user_service_pb2
from tests.conftest import Stubs, make_settings, stubs_for
from tests.helpers import Account, fails, make_admin, register
from tests.http_client import auth_headers, connect_json

#: Rounds of the race on PostgreSQL, and in each the streams of back-to-back CreateTask calls by
#: the user deleted and by an admin for them (a few unkeyed, most with a request_id: those
#: deadlocked). SQLite serialises writers, so it has no deadlock to provoke: one round there
#: checks the outcomes, without its writers' lock lottery (busy handler) starving the deletion.
RACE_ROUNDS = 4
OWN_STREAMS = 4
ADMIN_STREAMS = 8
#: Bound on everything a test waits for; the deliberate deadlocks cost the server's
#: `deadlock_timeout` (PostgreSQL's default, 1 s) each.
WAIT_SECONDS = 10.0
_T = TypeVar("_T")
_request_ids = itertools.count(1)


async def _outcome(call: Awaitable[Any]) -> tuple[str, str, Any]:
    """(code name, ErrorInfo reason, response) of a finished call, failed or not."""
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return error.code().name, _reason(error), None
    return "OK", "", response


def _reason(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


def _create(owner_id: int = 0, request_id: str = "") -> task_service_pb2.CreateTaskRequest:
    return task_service_pb2.CreateTaskRequest(
        task=task_pb2.Task(title="racing", owner_id=owner_id), request_id=request_id
    )


async def _create_until_refused(
    stubs: Stubs,
    caller: Account,
    owner_id: int,
    keyed: bool,
    outcomes: Counter[tuple[str, str]],
    created: list[int],
    first_created: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Create tasks for `owner_id` back to back until a call fails (or `stop`); record outcomes."""
    while not stop.is_set():
        request_id = f"race-{next(_request_ids)}" if keyed else ""
        code, reason, response = await _outcome(
            stubs.tasks.CreateTask(
                _create(owner_id, request_id), metadata=caller.metadata, timeout=WAIT_SECONDS
            )
        )
        outcomes[code, reason] += 1
        if code != "OK":
            return
        created.append(response.task.id)
        first_created.set()


async def test_deleting_a_user_while_tasks_are_created_for_them_never_answers_aborted(
    app: Application, stubs: Stubs
) -> None:
    """DeleteUser races streams of the user's own CreateTask calls and of an admin's for them.

    This used to answer ABORTED CONCURRENT_TRANSACTION on PostgreSQL, to the deletion or to the
    creates: an admin's keyed create held the user's row (its task's foreign key) and waited for
    the admin's own row (its idempotency key's), which DeleteUser had locked before waiting for
    the user's row. Retries alone did not cure it (every retry closed the cycle again); creates
    now lock both rows in the deleters' order. A user's own create that lost the race to their
    deletion used to answer NOT_FOUND OWNER_NOT_FOUND; it is now UNAUTHENTICATED, as the user's
    every later call is.
    """
    deleter = await make_admin(app, stubs)
    creator = await make_admin(app, stubs)
    own: Counter[tuple[str, str]] = Counter()
    for_them: Counter[tuple[str, str]] = Counter()
    deletions: Counter[tuple[str, str]] = Counter()
    created: list[int] = []
    victims: list[int] = []
    rounds = RACE_ROUNDS if app.database.engine.dialect.name == "postgresql" else 1
    for _ in range(rounds):
        victim = await register(stubs)
        victims.append(victim.user.id)
        for _ in range(3):
            await stubs.tasks.CreateTask(_create(), metadata=victim.metadata)
        streams = [(victim, 0, number % 2 == 0, own) for number in range(OWN_STREAMS)]
        streams += [
            (creator, victim.user.id, number % 4 != 0, for_them) for number in range(ADMIN_STREAMS)
        ]
        started = [asyncio.Event() for _ in streams]
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(
                _create_until_refused(stubs, caller, owner, keyed, outcomes, created, event, stop)
            )
            for (caller, owner, keyed, outcomes), event in zip(streams, started, strict=True)
        ]
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                for event in started:  # delete only once every stream is under way
                    await event.wait()
                delete = stubs.users.DeleteUser(
                    user_service_pb2.DeleteUserRequest(id=victim.user.id),
                    metadata=deleter.metadata,
                    timeout=WAIT_SECONDS,
                )
                deletion = (await _outcome(delete))[:2]
                deletions[deletion] += 1
                if deletion != ("OK", ""):  # the user is still there: the streams would not end
                    stop.set()
                await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    assert deletions == Counter({("OK", ""): rounds})
    # Every stream ended, after the deletion, with the documented code for a deleted user.
    assert set(own) == {("OK", ""), ("UNAUTHENTICATED", "TOKEN_REVOKED")}
    assert own["UNAUTHENTICATED", "TOKEN_REVOKED"] == rounds * OWN_STREAMS
    assert set(for_them) == {("OK", ""), ("NOT_FOUND", "OWNER_NOT_FOUND")}
    assert for_them["NOT_FOUND", "OWNER_NOT_FOUND"] == rounds * ADMIN_STREAMS
    # Every task created went with its owner, and no row is left without its parent.
    async with app.database.rows() as connection:
        survivors = await connection.scalar(
            select(func.count()).select_from(Task).where(Task.owner_id.in_(victims))
        )
        orphans = await connection.scalar(
            text(
                "SELECT (SELECT count(*) FROM tasks WHERE owner_id NOT IN (SELECT id FROM users))"
                " + (SELECT count(*) FROM task_create_requests"
                " WHERE user_id NOT IN (SELECT id FROM users)"
                " OR task_id NOT IN (SELECT id FROM tasks))"
            )
        )
    assert len(created) > rounds * (OWN_STREAMS + ADMIN_STREAMS)
    assert survivors == 0
    assert orphans == 0


@pytest.fixture
async def pg_app(pg_database_url: str) -> AsyncIterator[Application]:
    application = await build_server(make_settings(pg_database_url))
    await application.start()
    yield application
    await application.stop(grace=None)


@pytest.fixture
async def pg_stubs(pg_app: Application) -> AsyncIterator[Stubs]:
    async with stubs_for(pg_app) as stubs:
        yield stubs


async def _connect(url: str) -> asyncpg.Connection:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return await asyncpg.connect(dsn)


async def _eventually(check: Callable[[], Awaitable[_T | None]]) -> _T:
    """The first value `check` returns that is not None, polling until WAIT_SECONDS pass."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (value := await check()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {WAIT_SECONDS} s")
        await asyncio.sleep(0.01)
    return value


async def _delete_losing_a_deadlock(
    url: str,
    stubs: Stubs,
    deleter: Account,
    victim_id: int,
    task_id: int,
    delete: Callable[[], Awaitable[tuple[str, str, Any]]] | None = None,
) -> tuple[str, str, Any]:
    """Run DeleteUser(victim) through a deadlock that aborts its first transaction.

    `delete` makes the call (over gRPC with `stubs` when not given) and returns its outcome.

    The server's DeleteUser locks the active admins' rows, then the victim's, then deletes the
    victim, cascading to their tasks. `holder` stops it between the first two by holding the
    victim's row; `blocker` holds the victim's task and waits for the deleting admin's row. When
    `holder` lets go, the cascade waits for `blocker`: a cycle the server's transaction closed.
    """
    observer, holder, blocker = [await _connect(url) for _ in range(3)]
    try:
        await blocker.execute("SET deadlock_timeout = '60s'")
        holding = holder.transaction()
        await holding.start()
        await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE", victim_id)
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM tasks WHERE id = $1 FOR KEY SHARE", task_id)
        deleting = asyncio.ensure_future(
            delete()
            if delete is not None
            else _outcome(
                stubs.users.DeleteUser(
                    user_service_pb2.DeleteUserRequest(id=victim_id),
                    metadata=deleter.metadata,
                    timeout=WAIT_SECONDS,
                )
            )
        )

        async def server_waiting_for_holder() -> int | None:
            return await observer.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                holder.get_server_pid(),
            )

        server = await _eventually(server_waiting_for_holder)
        waiting = asyncio.ensure_future(
            blocker.execute("SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE", deleter.user.id)
        )

        async def blocker_waiting_for_server() -> bool | None:
            blocked = await observer.fetchval(
                "SELECT $2 = ANY(pg_blocking_pids($1))", blocker.get_server_pid(), server
            )
            return True if blocked else None

        await _eventually(blocker_waiting_for_server)
        await holding.rollback()
        # The blocker gets the admin's row once the server's transaction has been aborted.
        await asyncio.wait_for(waiting, WAIT_SECONDS)
        await blocking.rollback()
        return await asyncio.wait_for(deleting, WAIT_SECONDS)
    finally:
        for connection in (observer, holder, blocker):
            await connection.close()


async def _user_with_a_task(stubs: Stubs) -> tuple[Account, int]:
    user = await register(stubs)
    task = await stubs.tasks.CreateTask(_create(), metadata=user.metadata)
    return user, task.task.id


def _retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == retry.__name__]


async def test_a_transaction_aborted_by_a_deadlock_is_run_again_and_the_call_succeeds(
    pg_database_url: str,
    pg_app: Application,
    pg_stubs: Stubs,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=retry.__name__)
    deleter = await make_admin(pg_app, pg_stubs)
    victim, task_id = await _user_with_a_task(pg_stubs)

    outcome = await _delete_losing_a_deadlock(
        pg_database_url, pg_stubs, deleter, victim.user.id, task_id
    )

    assert outcome[:2] == ("OK", "")
    [record] = _retry_records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        "UserService.delete_user: deadlock_detected on attempt 1 of 4; retrying in "
    )
    assert (record.operation, record.attempt, record.sqlstate) == (  # type: ignore[attr-defined]
        "UserService.delete_user",
        1,
        "40P01",
    )
    failure = await fails(
        pg_stubs.users.GetUser(
            user_service_pb2.GetUserRequest(id=victim.user.id), metadata=deleter.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert failure.reason == "USER_NOT_FOUND"
    failure = await fails(
        pg_stubs.tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=task_id), metadata=deleter.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert failure.reason == "TASK_NOT_FOUND"


async def test_a_conflict_on_the_last_attempt_is_aborted_concurrent_transaction(
    pg_database_url: str,
    pg_app: Application,
    pg_stubs: Stubs,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one attempt allowed, the deadlock above reaches the caller, and nothing changed."""
    monkeypatch.setattr(retry, "MAX_ATTEMPTS", 1)
    caplog.set_level(logging.INFO, logger=retry.__name__)
    deleter = await make_admin(pg_app, pg_stubs)
    victim, task_id = await _user_with_a_task(pg_stubs)

    outcome = await _delete_losing_a_deadlock(
        pg_database_url, pg_stubs, deleter, victim.user.id, task_id
    )

    assert outcome[:2] == ("ABORTED", "CONCURRENT_TRANSACTION")
    [record] = _retry_records(caplog)
    assert record.getMessage() == (
        "UserService.delete_user: deadlock_detected on attempt 1 of 1; giving up"
    )
    user = await pg_stubs.users.GetUser(
        user_service_pb2.GetUserRequest(id=victim.user.id), metadata=deleter.metadata
    )
    assert user.user.id == victim.user.id
    task = await pg_stubs.tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=task_id), metadata=victim.metadata
    )
    assert task.task.id == task_id


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the server logs at INFO, as the JSON lines production writes."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


@pytest.mark.parametrize("edge", ["grpc", "connect"])
async def test_retry_log_lines_carry_the_request_id_of_their_call(
    pg_database_url: str,
    pg_app: Application,
    pg_stubs: Stubs,
    json_log: io.StringIO,
    edge: str,
) -> None:
    deleter = await make_admin(pg_app, pg_stubs)
    victim, task_id = await _user_with_a_task(pg_stubs)
    returned: list[str] = []

    async def over_grpc() -> tuple[str, str, Any]:
        call = pg_stubs.users.DeleteUser(
            user_service_pb2.DeleteUserRequest(id=victim.user.id),
            metadata=deleter.metadata,
            timeout=WAIT_SECONDS,
        )
        outcome = await _outcome(call)
        returned.append(dict(await call.trailing_metadata())[REQUEST_ID_KEY])
        return outcome

    async def over_connect() -> tuple[str, str, Any]:
        base = f"http://127.0.0.1:{pg_app.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_SECONDS) as http:
            response = await connect_json(
                http,
                "/taskservice.v1.UserService/DeleteUser",
                {"id": victim.user.id},
                **auth_headers(deleter.token),
            )
        returned.append(response.headers[REQUEST_ID_KEY])
        return ("OK" if response.status_code == 200 else str(response.status_code)), "", None

    outcome = await _delete_losing_a_deadlock(
        pg_database_url,
        pg_stubs,
        deleter,
        victim.user.id,
        task_id,
        delete=over_grpc if edge == "grpc" else over_connect,
    )

    assert outcome[0] == "OK"
    [request_id] = returned
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    retries = [line for line in lines if line["logger"] == retry.__name__]
    assert [line["attempt"] for line in retries] == [1]
    assert retries[0]["request_id"] == request_id
    [access] = [line for line in lines if str(line["message"]).endswith("DeleteUser OK")]
    assert access["request_id"] == request_id
    # Lines made outside any call carry no request id.
    assert all("request_id" not in line for line in lines if line["logger"] == "taskservice.server")


@pytest.fixture
async def engine(pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(pg_database_url)
    yield engine
    await engine.dispose()


def _raising(engine: AsyncEngine, sqlstate: str) -> tuple[Callable[[], Awaitable[None]], list[int]]:
    """A unit of work whose transaction PostgreSQL fails with `sqlstate`, and its run count."""
    runs: list[int] = []

    async def unit() -> None:
        runs.append(1)
        async with engine.begin() as connection:
            await connection.exec_driver_sql(
                f"DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{sqlstate}'; END $$"
            )

    return unit, runs


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_conflicts_are_run_again_at_most_max_attempts_times_in_all(
    engine: AsyncEngine, sqlstate: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=retry.__name__)
    unit, runs = _raising(engine, sqlstate)

    with pytest.raises(DBAPIError) as raised:
        await retry.run_retrying_conflicts("test.unit", unit)

    assert raised.value.orig.sqlstate == sqlstate  # type: ignore[union-attr]
    assert len(runs) == retry.MAX_ATTEMPTS
    records = _retry_records(caplog)
    assert [r.attempt for r in records] == list(range(1, retry.MAX_ATTEMPTS + 1))  # type: ignore[attr-defined]
    assert {r.sqlstate for r in records} == {sqlstate}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "sqlstate",
    [
        "23505",  # unique_violation: a real answer (ALREADY_EXISTS), not a conflict
        "57014",  # query_canceled: statement_timeout, which waiting longer would not cure
        "55P03",  # lock_not_available
    ],
)
async def test_other_database_errors_are_not_run_again(
    engine: AsyncEngine, sqlstate: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=retry.__name__)
    unit, runs = _raising(engine, sqlstate)

    with pytest.raises(DBAPIError):
        await retry.run_retrying_conflicts("test.unit", unit)

    assert runs == [1]
    assert _retry_records(caplog) == []


async def test_retries_stop_when_the_callers_deadline_passes(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancellation (how ErrorInterceptor enforces deadlines) ends the retries at once."""
    monkeypatch.setattr(retry, "MAX_ATTEMPTS", 10_000)
    unit, runs = _raising(engine, "40P01")

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await retry.run_retrying_conflicts("test.unit", unit)

    assert time.monotonic() - started < 2.0
    assert 1 <= len(runs) < 10_000

    async def connection_returned() -> bool | None:
        return True if engine.pool.checkedout() == 0 else None  # type: ignore[attr-defined]

    await _eventually(connection_returned)


def test_backoff_bounds_double_from_the_base_up_to_the_maximum() -> None:
    bounds = [retry.backoff_bound(number) for number in range(1, 8)]
    assert bounds[0] == retry.BASE_DELAY_SECONDS
    assert all(
        later == min(2 * earlier, retry.MAX_DELAY_SECONDS)
        for earlier, later in itertools.pairwise(bounds)
    )
    assert bounds[-1] == retry.MAX_DELAY_SECONDS

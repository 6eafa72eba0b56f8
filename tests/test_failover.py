"""Failover on real PostgreSQL: a primary dies or is demoted, a standby is promoted.

The server reaches PostgreSQL through a multi-host URL with `target_session_attrs=read-write`,
so after a failover its new connections find the new primary by themselves. What these tests
hold it to, with real `postgres` processes (see `tests/pg_cluster.py`):

- clients only ever see retryable codes (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED), never
  INTERNAL or UNKNOWN: a failover is an outage, not a bug;
- a create the server acknowledged is never lost, and retrying it with its `request_id` never
  makes a second task (the primary commits synchronously to its standby);
- a watch that resumes from its last revision sees every change exactly once;
- writes work again within seconds of the promotion, and health follows the database.

Every wait is bounded by a deadline; the load by time and by count.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from taskservice.db.migrations import upgrade
from taskservice.server import Application, build_server
from taskservice.v1 import task_pb2, task_service_pb2
from tests.conftest import IN_CI, Stubs, make_settings, stubs_for
from tests.helpers import Account, register
from tests.pg_cluster import PG_BIN, PgCluster, PgNode, binaries_present, multi_host_url

pytestmark = pytest.mark.failover

DATABASE = "taskservice"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Codes a client is told to retry; anything else during a failover is a bug or a lost write.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)
#: Codes that must never come out of a failover: the server did not know what happened.
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
#: How soon after the promotion creates must succeed again, and health turn SERVING.
RECOVERY_SECONDS = 10.0
#: Deadline of one call: short, so a call stuck on a dead node fails over in the client's loop.
CALL_TIMEOUT = 3.0
#: Longest a create may keep retrying one `request_id` before the test gives up on it.
CREATE_RETRY_SECONDS = 30.0
#: Writers, and how many creates each makes at most (the load is also bounded by time).
CREATORS = 4
MAX_CREATES_PER_CREATOR = 400
#: Readers (GetTask and ListTasks in turn, no retries): enough that the kill finds reads in
#: flight on both connection pools.
READERS = 6
#: Reads started at once right after the kill and right after the promotion.
BURST_READS = 32
#: Creates acknowledged before the kill, and after recovery, before the load stops.
WARM_UP_CREATES = 20
AFTER_RECOVERY_CREATES = 20
#: Bound on any other phase of a test (load warm-up, watch catch-up).
PHASE_SECONDS = 20.0
#: Connect timeout the server is built with: a dead host costs a connect at most this.
CONNECT_TIMEOUT_SECONDS = 2.0

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Fixtures: a migrated data directory made once, and a fresh primary + standby per test.


@pytest.fixture(scope="module")
def migrated_template() -> Iterator[Path]:
    """A stopped primary's data directory holding the migrated `taskservice` database.

    Made once per module (initdb and the migrations take seconds); every test's primary starts
    from a copy of it. Locally the tests skip when PostgreSQL's binaries are missing; under
    CI=true they fail instead, so CI never passes them silently.
    """
    if not binaries_present():
        reason = f"PostgreSQL server binaries not found in {PG_BIN} (initdb, pg_ctl, pg_basebackup)"
        if IN_CI:
            pytest.fail(f"{reason}; they are mandatory when CI=true")
        pytest.skip(reason)
    cluster = PgCluster()
    try:
        node = cluster.primary("template")
        asyncio.run(node.execute(f"CREATE DATABASE {DATABASE}"))
        upgrade(f"postgresql+asyncpg://postgres@{node.host}/{DATABASE}")
        node.stop()
        yield node.data_dir
    finally:
        cluster.cleanup()


@dataclass
class Pair:
    """A primary and its hot standby, both running, from the migrated template."""

    cluster: PgCluster
    primary: PgNode
    standby: PgNode

    def url(self, *, libpq_form: bool = False) -> str:
        """The server's URL naming both nodes, primary first."""
        return multi_host_url([self.primary, self.standby], DATABASE, libpq_form=libpq_form)

    def logs(self) -> str:
        """Both servers' logs, for failure messages."""
        return "\n".join(f"--- {n.name} log:\n{n.log()}" for n in self.cluster.nodes)


@pytest.fixture
def pair(migrated_template: Path) -> Iterator[Pair]:
    """A fresh primary and standby for one test; both stopped and removed afterwards."""
    cluster = PgCluster(template=migrated_template)
    try:
        primary = cluster.primary("a")
        standby = cluster.standby_of(primary, "b")
        yield Pair(cluster, primary, standby)
    finally:
        cluster.cleanup()


@contextlib.asynccontextmanager
async def serving(url: str) -> AsyncIterator[Application]:
    """A started server on `url`, stopped at the end whatever happened."""
    application = await build_server(
        make_settings(url, db_connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS)
    )
    try:
        await application.start()
        yield application
    finally:
        await application.stop(grace=None)


# ---------------------------------------------------------------------------------------------
# What the clients saw.


@dataclass
class Seen:
    """Every status code each method answered, and the calls that must not have happened."""

    codes: Counter[tuple[str, grpc.StatusCode]] = field(default_factory=Counter)
    forbidden: list[str] = field(default_factory=list)

    def record(self, method: str, code: grpc.StatusCode, details: str = "") -> None:
        """Count one answer; keep the text of any that is not retryable."""
        self.codes[method, code] += 1
        if code in FORBIDDEN:
            self.forbidden.append(f"{method}: {code.name}: {details}")

    def summary(self) -> str:
        """The codes seen, per method, for assertion messages."""
        return ", ".join(f"{m} {c.name} x{n}" for (m, c), n in sorted(self.codes.items(), key=str))


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server logged at ERROR, each with the exception at the root of its chain.

    A call answered INTERNAL says only "internal error (request id ...)": the cause is in the
    server's log, and the assertion messages quote it so a failure explains itself.
    """
    lines = []
    for record in caplog.records:
        if record.levelno < logging.ERROR or not record.name.startswith("taskservice"):
            continue
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error: BaseException = record.exc_info[1]
            chain = [error]
            while (cause := error.__cause__ or error.__context__) is not None and len(chain) < 10:
                chain.append(cause)
                error = cause
            line += " <- " + " <- ".join(_describe(e) for e in chain)
        lines.append(line)
    return lines


def _describe(error: BaseException) -> str:
    """An exception as its qualified type and the first line of its text."""
    text = str(error).splitlines()
    return f"{type(error).__module__}.{type(error).__qualname__}: {text[0] if text else ''}"


async def _until(
    condition: Callable[[], bool | Awaitable[bool]],
    seconds: float,
    what: str | Callable[[], str],
) -> float:
    """Wait until `condition` holds; fail after `seconds`. Returns the seconds it took.

    `what` names the condition in the failure message; a callable is asked at the failure, so
    the message can say what was seen by then.
    """
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            described = what if isinstance(what, str) else what()
            pytest.fail(f"timed out after {seconds:.1f}s waiting for {described}")
        await asyncio.sleep(0.02)


async def _create(
    stubs: Stubs, account: Account, request_id: str, seen: Seen, give_up_at: float
) -> task_pb2.Task | None:
    """CreateTask with `request_id`, retried with backoff on retryable codes until it succeeds.

    The same `request_id` every time: a create that committed but whose answer was lost must
    come back as the same task, not a second one. Returns None when the call failed for good
    (a forbidden or unexpected code) or `give_up_at` passed; `seen` says which.
    """
    request = task_service_pb2.CreateTaskRequest(
        task=task_pb2.Task(title=request_id), request_id=request_id
    )
    backoff = 0.05
    while True:
        try:
            response = await stubs.tasks.CreateTask(
                request, metadata=account.metadata, timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            seen.record("CreateTask", error.code(), error.details() or "")
            if error.code() not in RETRYABLE or time.monotonic() > give_up_at:
                return None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)
        else:
            seen.record("CreateTask", grpc.StatusCode.OK)
            return response.task


async def _health(stubs: Stubs, service: str = "") -> int | None:
    """The server's health for `service`, or None when the check itself failed."""
    try:
        response = await stubs.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=1
        )
    except grpc.aio.AioRpcError:
        return None
    return response.status


async def _rows(node: PgNode, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(node.dsn(DATABASE), timeout=5)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def _tasks_by_title(node: PgNode, owner_id: int) -> Counter[str]:
    """How many tasks of the owner each title (each test's titles are request ids) has."""
    rows = await _rows(node, "SELECT title FROM tasks WHERE owner_id = $1", owner_id)
    return Counter(row["title"] for row in rows)


# ---------------------------------------------------------------------------------------------
# 1. The primary dies under load; the standby is promoted.


@dataclass
class Load:
    """Writers, readers and a watcher running against one server until `stop` is set."""

    stubs: Stubs
    account: Account
    seen: Seen = field(default_factory=Seen)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: request_id -> (task id, monotonic time of the acknowledgement).
    acknowledged: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: request ids that failed for good (a non-retryable code, or retries ran out).
    abandoned: list[str] = field(default_factory=list)
    #: Revisions of the changes the watch delivered, in delivery order, and their task ids.
    change_revisions: list[int] = field(default_factory=list)
    created_ids: list[int] = field(default_factory=list)
    #: Out-of-order deliveries: (previous revision, revision) pairs where it did not grow.
    disorder: list[tuple[int, int]] = field(default_factory=list)
    watch_ends: Counter[grpc.StatusCode] = field(default_factory=Counter)
    #: The last revision the watch received (change or bookmark): where it resumes.
    watched_to: int = 0
    not_found: list[int] = field(default_factory=list)

    def failed_creates(self) -> int:
        """CreateTask attempts answered with an error so far."""
        return sum(n for (m, c), n in self.seen.codes.items() if m == "CreateTask" and c.value[0])

    def acknowledged_after(self, moment: float) -> int:
        """How many creates were acknowledged after `moment` (time.monotonic)."""
        return sum(1 for _, at in self.acknowledged.values() if at > moment)

    async def creator(self, index: int) -> None:
        """Create tasks one after another, each retried until acknowledged."""
        for number in range(MAX_CREATES_PER_CREATOR):
            if self.stop.is_set():
                return
            request_id = f"c{index}-{number}"
            task = await _create(
                self.stubs,
                self.account,
                request_id,
                self.seen,
                time.monotonic() + CREATE_RETRY_SECONDS,
            )
            if task is None:
                self.abandoned.append(request_id)
            else:
                self.acknowledged[request_id] = (task.id, time.monotonic())

    async def read_once(self, number: int) -> bool:
        """One GetTask (of an acknowledged task) or ListTasks, not retried: its code counts.

        Returns whether it succeeded.
        """
        method = "ListTasks" if number % 2 else "GetTask"
        ids = [task_id for task_id, _ in list(self.acknowledged.values())[-50:]]
        if not ids:
            method = "ListTasks"
        try:
            if method == "ListTasks":
                await self.stubs.tasks.ListTasks(
                    task_service_pb2.ListTasksRequest(page_size=20),
                    metadata=self.account.metadata,
                    timeout=CALL_TIMEOUT,
                )
            else:
                task_id = ids[number % len(ids)]
                try:
                    await self.stubs.tasks.GetTask(
                        task_service_pb2.GetTaskRequest(id=task_id),
                        metadata=self.account.metadata,
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        self.not_found.append(task_id)
                    raise
        except grpc.aio.AioRpcError as error:
            self.seen.record(method, error.code(), error.details() or "")
            return False
        self.seen.record(method, grpc.StatusCode.OK)
        return True

    async def reader(self, index: int) -> None:
        """Reads one after another until the load stops."""
        for number in itertools.count(index):
            if self.stop.is_set():
                return
            if not await self.read_once(number):
                await asyncio.sleep(0.02)  # an outage answers at once: do not spin on it

    async def burst(self) -> None:
        """BURST_READS reads at once, on connections of both pools in whatever state they are.

        Right after a kill or a promotion pooled connections are at hand, in use, or closed by
        a server that is going away: a burst reaches each kind.
        """
        await asyncio.gather(*(self.read_once(number) for number in range(BURST_READS)))

    async def watcher(self) -> None:
        """WatchTasks from `watched_to`, resumed from the last revision whenever it ends.

        Runs until cancelled: the test cancels it once it has seen every acknowledged create.
        """
        backoff = 0.05
        while True:
            call = self.stubs.tasks.WatchTasks(
                task_service_pb2.WatchTasksRequest(start_revision=self.watched_to),
                metadata=self.account.metadata,
            )
            try:
                async for response in call:
                    backoff = 0.05
                    if response.HasField("change"):
                        if response.revision <= self.watched_to:
                            self.disorder.append((self.watched_to, response.revision))
                        self.change_revisions.append(response.revision)
                        if response.change.type == task_service_pb2.TASK_CHANGE_TYPE_CREATED:
                            self.created_ids.append(response.change.task.id)
                    self.watched_to = max(self.watched_to, response.revision)
                self.watch_ends[grpc.StatusCode.OK] += 1
            except grpc.aio.AioRpcError as error:
                self.watch_ends[error.code()] += 1
                self.seen.record("WatchTasks", error.code(), error.details() or "")
            finally:
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)


@pytest.mark.parametrize("url_form", ["sqlalchemy", "libpq"])
async def test_killing_the_primary_under_load_loses_nothing_and_answers_only_retryable_codes(
    pair: Pair, url_form: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL the primary under mixed load, promote the standby: clients ride through it.

    Four writers retry their creates with the same request_id; readers and a resuming watch run
    beside them. Afterwards every acknowledged create is a task exactly once, the watch saw
    every revision exactly once, creates worked again within RECOVERY_SECONDS of the promotion,
    and health is SERVING again.
    """
    await pair.cluster.replicate_synchronously(pair.primary)
    url = pair.url(libpq_form=url_form == "libpq")
    async with serving(url) as application, stubs_for(application) as stubs:
        account = await register(stubs)
        first_list = await stubs.tasks.ListTasks(
            task_service_pb2.ListTasksRequest(), metadata=account.metadata
        )
        load = Load(stubs, account, watched_to=first_list.revision)
        started_from = first_list.revision
        workers = [asyncio.ensure_future(load.creator(i)) for i in range(CREATORS)]
        workers += [asyncio.ensure_future(load.reader(i)) for i in range(READERS)]
        watcher = asyncio.ensure_future(load.watcher())
        try:
            await _until(
                lambda: len(load.acknowledged) >= WARM_UP_CREATES, PHASE_SECONDS, "warm-up creates"
            )
            failed_before_kill = load.failed_creates()
            await asyncio.to_thread(pair.primary.kill)
            await load.burst()
            # The outage is real once a writer has seen it.
            await _until(
                lambda: load.failed_creates() > failed_before_kill,
                PHASE_SECONDS,
                "a create to fail after the kill",
            )
            await asyncio.to_thread(pair.standby.promote)
            promoted_at = time.monotonic()
            await load.burst()
            await _until(
                lambda: load.acknowledged_after(promoted_at) > 0,
                RECOVERY_SECONDS,
                lambda: f"a create acknowledged after the promotion ({load.seen.summary()})",
            )
            await _until(
                lambda: _is_serving(stubs),
                max(RECOVERY_SECONDS - (time.monotonic() - promoted_at), 0.0),
                "health SERVING within RECOVERY_SECONDS of the promotion",
            )
            await _until(
                lambda: load.acknowledged_after(promoted_at) >= AFTER_RECOVERY_CREATES,
                PHASE_SECONDS,
                "creates after the recovery",
            )
        finally:
            load.stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), CREATE_RETRY_SECONDS + CALL_TIMEOUT)

        acknowledged_ids = {task_id for task_id, _ in load.acknowledged.values()}
        try:
            await _until(
                lambda: acknowledged_ids <= set(load.created_ids) or watcher.done(),
                PHASE_SECONDS,
                "the watch to deliver every acknowledged create",
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        titles = await _tasks_by_title(pair.standby, account.user.id)

    forbidden = load.seen.forbidden
    assert not forbidden, (
        f"calls answered INTERNAL/UNKNOWN during the failover: {forbidden[:5]} "
        f"(all codes: {load.seen.summary()}); server errors: {server_errors(caplog)[:3]}"
    )
    assert not load.abandoned, f"creates that never succeeded: {load.abandoned[:5]}"
    assert not load.not_found, f"acknowledged tasks read back NOT_FOUND: {load.not_found[:5]}"
    lost = [rid for rid in load.acknowledged if titles[rid] == 0]
    duplicated = {title: n for title, n in titles.items() if n > 1}
    assert not lost, f"acknowledged creates missing after the failover: {lost[:5]}"
    assert not duplicated, f"request ids that made more than one task: {duplicated}"
    assert set(titles) == set(load.acknowledged), "every task is an acknowledged create"
    # The watch: every revision once, in order, none skipped, across all the resumes.
    assert not load.disorder, f"revisions delivered out of order or again: {load.disorder[:5]}"
    revisions = load.change_revisions
    assert len(revisions) == len(set(revisions)), "a revision was delivered twice"
    assert revisions == list(range(started_from + 1, started_from + 1 + len(revisions))), (
        "the watch skipped revisions"
    )
    assert Counter(load.created_ids) == Counter(acknowledged_ids), (
        "the watch delivered each created task exactly once"
    )
    logger.info(
        "failover: %d creates, codes %s, watch ends %s",
        len(load.acknowledged),
        load.seen.summary(),
        dict(load.watch_ends),
    )


async def _is_serving(stubs: Stubs) -> bool:
    return await _health(stubs) == SERVING and await _health(stubs, "readiness") == SERVING


# ---------------------------------------------------------------------------------------------
# 2. The server starts while no node accepts writes.


@pytest.mark.parametrize("standby_kind", ["hot", "cold"])
async def test_a_server_started_with_no_primary_serves_once_a_standby_is_promoted(
    pair: Pair, standby_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With only a standby up, the server starts NOT_SERVING instead of failing to start.

    A whole deployment restarting during a failover must come up and wait, not crash-loop. A
    hot standby accepts the connection but is not read-write; a cold one (`hot_standby=off`)
    refuses it with SQLSTATE 57P03 ("not accepting connections"), as a node that is starting
    up or shutting down does. Either way calls meanwhile answer UNAVAILABLE, and once the
    standby is promoted health turns SERVING and creates work.
    """
    pair.primary.stop()
    if standby_kind == "cold":
        await asyncio.to_thread(_restart_with, pair.standby, {"hot_standby": "off"})
    else:
        await pair.standby.wait_in_recovery()
    application = await build_server(
        make_settings(pair.url(), db_connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS)
    )
    try:
        await application.start()
        async with stubs_for(application) as stubs:
            assert await _health(stubs) == NOT_SERVING
            assert await _health(stubs, "readiness") == NOT_SERVING
            assert await _health(stubs, "liveness") == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await register(stubs)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (
                f"Register with no primary: {refused.value.code().name}: "
                f"{refused.value.details()}; server errors: {server_errors(caplog)[:3]}"
            )

            await asyncio.to_thread(pair.standby.promote)
            await _until(lambda: _is_serving(stubs), RECOVERY_SECONDS, "health SERVING")
            account = await register(stubs)
            seen = Seen()
            task = await _create(
                stubs, account, "after-promotion", seen, time.monotonic() + RECOVERY_SECONDS
            )
            assert not seen.forbidden, f"{seen.forbidden}; {server_errors(caplog)[:3]}"
            assert task is not None, f"CreateTask never succeeded: {seen.summary()}"
    finally:
        await application.stop(grace=None)


def _restart_with(node: PgNode, settings: dict[str, str]) -> None:
    """Restart a node with some settings changed (ones only a restart applies)."""
    node.stop()
    node.configure(settings)
    node.start()


# ---------------------------------------------------------------------------------------------
# 3. The primary the server's pools point at becomes read-only, then a standby.


async def test_creates_move_to_the_new_primary_when_the_old_one_turns_read_only(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """Pooled connections to a demoted primary answer 25006; creates must move to the new one.

    A is fenced first (`default_transaction_read_only`, which connections already open obey at
    their next transaction, as a failover manager fences an old primary) while the server's
    pools hold connections to it, then B is promoted; later A is rebuilt as B's standby on the
    same port. CreateTask may answer UNAVAILABLE briefly, never INTERNAL, and every create
    lands on B exactly once.
    """
    await pair.cluster.replicate_synchronously(pair.primary)
    a, b = pair.primary, pair.standby
    async with serving(pair.url()) as application, stubs_for(application) as stubs:
        account = await register(stubs)
        seen = Seen()
        acknowledged: dict[str, int] = {}

        async def create_all(prefix: str, count: int, within: float) -> float:
            """Create `count` tasks at once, each retried; seconds until all were acknowledged."""
            started = time.monotonic()
            tasks = await asyncio.gather(
                *(
                    _create(stubs, account, f"{prefix}-{n}", seen, started + within)
                    for n in range(count)
                )
            )
            assert not seen.forbidden, (
                f"{prefix}: creates answered INTERNAL/UNKNOWN: {seen.forbidden[:3]} "
                f"(all codes: {seen.summary()}); server errors: {server_errors(caplog)[:2]}"
            )
            for n, task in enumerate(tasks):
                assert task is not None, (
                    f"{prefix}-{n} never succeeded within {within}s: {seen.summary()}"
                )
                acknowledged[f"{prefix}-{n}"] = task.id
            return time.monotonic() - started

        # Concurrent creates and reads leave several pooled connections to A.
        await create_all("warm", 10, PHASE_SECONDS)
        await asyncio.gather(
            *(
                stubs.tasks.GetTask(
                    task_service_pb2.GetTaskRequest(id=task_id), metadata=account.metadata
                )
                for task_id in acknowledged.values()
            )
        )
        assert seen.codes["CreateTask", grpc.StatusCode.OK] == 10, seen.summary()

        await a.execute(
            "ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"
        )
        await _until(lambda: _not(a.is_read_write()), PHASE_SECONDS, "A read-only")
        await asyncio.to_thread(b.promote)
        await b.wait_read_write()

        took = await create_all("fenced", 10, RECOVERY_SECONDS)
        assert not seen.forbidden, (
            f"creates on a read-only primary answered INTERNAL/UNKNOWN: {seen.forbidden[:3]} "
            f"(all codes: {seen.summary()}); server errors: {server_errors(caplog)[:2]}"
        )
        assert took <= RECOVERY_SECONDS
        before = Counter(seen.codes)
        await create_all("rerouted", 10, RECOVERY_SECONDS)
        retried = {k: n - before[k] for k, n in seen.codes.items() if n != before[k]}
        assert retried == {("CreateTask", grpc.StatusCode.OK): 10}, (
            f"creates after the move still failed first: {retried}"
        )

        # A becomes a real standby of B, on the same address.
        await asyncio.to_thread(pair.cluster.rebuild_as_standby, a, b)
        await a.wait_in_recovery()
        await create_all("demoted", 10, RECOVERY_SECONDS)
        assert not seen.forbidden, (
            f"creates after the demotion answered INTERNAL/UNKNOWN: {seen.forbidden[:3]}; "
            f"server errors: {server_errors(caplog)[:2]}"
        )
        titles = await _tasks_by_title(b, account.user.id)

    assert set(titles) == set(acknowledged), "every acknowledged create is a task on B"
    assert all(n == 1 for n in titles.values()), f"duplicated: {titles}"


async def _not(check: Awaitable[bool]) -> bool:
    return not await check

"""One async engine per process, and the `Database` every service opens sessions through."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import URL, Connection, Integer, event, func, select
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from taskservice.config import Settings
from taskservice.db.outages import DatabaseIsStandby, DatabaseUnreachable, is_outage
from taskservice.db.reads import (
    AsyncpgReader,
    Prepared,
    ReadPool,
    RowReader,
    SqlAlchemyReader,
    create_read_pool,
)
from taskservice.db.sqlite_reads import SqliteReads

logger = logging.getLogger(__name__)

#: What runs the hot reads besides SQLAlchemy (see `open_fast_reads`).
FastReads = ReadPool | SqliteReads | None

#: How long SQLite waits for another writer's lock before giving up, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 5_000
#: How often PostgreSQL checks that the client of a running statement is still there, in ms.
CLIENT_CHECK_INTERVAL_MS = 1_000
#: Longest the close of a connection nobody wants may take before it is aborted.
CLOSE_TIMEOUT_SECONDS = 2.0
#: Execution option marking connections that will write (SQLite begins them IMMEDIATE).
_WRITES = "taskservice_writes"


def create_engine(settings: Settings) -> AsyncEngine:
    """Build the process's engine: a bounded pool on PostgreSQL; WAL mode on SQLite."""
    url = settings.sqlalchemy_url
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, echo=settings.debug, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    engine = create_async_engine(
        url,
        echo=settings.debug,
        # Bound values (password hashes, emails) never reach logs, with DEBUG or in errors.
        hide_parameters=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_connect_timeout_seconds,
        # No pre-ping (a round trip on every checkout): a connection whose statement was
        # cancelled is invalidated by SQLAlchemy, never pooled again, and one that died idle
        # (the server restarted) fails its call UNAVAILABLE, after which every older pooled
        # connection is replaced. The UNAVAILABLE answers once blamed on cancelled connections
        # were gRPC refusing streams (see tests/test_failures.py).
        pool_recycle=1800,
        connect_args=_postgres_connect_args(settings),
    )
    event.listen(engine.sync_engine, "do_connect", _connect_whole)
    event.listen(engine.sync_engine, "handle_error", _discard_on_outage)
    return engine


def _discard_on_outage(context: ExceptionContext) -> None:
    """Treat every outage as a disconnect, so SQLAlchemy discards the connection and its pool.

    SQLAlchemy marks only the messages it knows as disconnects. A demoted primary answers
    "read-only transaction" (25006) on a connection that is otherwise healthy, and a server
    shutting down refuses new sessions (57P03): each of those connections, and every older one
    in the pool, points at a node that cannot serve us, so all of them are replaced and the next
    checkout connects afresh, honouring `target_session_attrs`.
    """
    if not context.is_disconnect and is_outage(context.original_exception):
        context.is_disconnect = True


def _postgres_connect_args(settings: Settings) -> dict[str, Any]:
    """The asyncpg connection arguments, the same for SQLAlchemy's pool and the fast reads'."""
    return {
        "timeout": settings.db_connect_timeout_seconds,
        "server_settings": {
            "application_name": "taskservice",
            # A call cancelled mid-statement (deadline passed, client gone) drops its
            # connection; without this the backend would keep waiting on locks or
            # running until it next writes to the socket. PostgreSQL 14+.
            "client_connection_check_interval": str(CLIENT_CHECK_INTERVAL_MS),
            # Backstop for work no deadline bounds.
            "statement_timeout": str(int(settings.db_statement_timeout_seconds * 1000)),
        },
    }


async def open_fast_reads(settings: Settings, engine: AsyncEngine) -> FastReads:
    """What runs the hot reads: an asyncpg pool on PostgreSQL, a reading thread on SQLite.

    The pool (see `taskservice.db.reads`) holds up to DB_POOL_SIZE connections beside
    SQLAlchemy's, made when first needed. The thread (`taskservice.db.sqlite_reads`) holds one
    connection to the file; an in-memory database has none to spare, and gets None.
    """
    url = settings.sqlalchemy_url
    if url.get_backend_name() == "sqlite":
        if not SqliteReads.serves(url):
            return None
        reads = SqliteReads(url, engine.dialect, SQLITE_BUSY_TIMEOUT_MS)
        await reads.start()
        return reads
    return await create_read_pool(
        settings.db_pool_size,
        connect_uncancellable,
        {**asyncpg_arguments(url), **_postgres_connect_args(settings)},
    )


def asyncpg_arguments(url: URL) -> dict[str, Any]:
    """`asyncpg.connect`'s arguments for a PostgreSQL URL, read as SQLAlchemy reads it.

    Host, port, user, password, database, ssl and asyncpg's own options (`statement_cache_size`
    for PgBouncer), without SQLAlchemy's options: asyncpg would send any query option it does
    not know to PostgreSQL as a setting, which PostgreSQL refuses.
    """
    _, arguments = postgresql_asyncpg.dialect().create_connect_args(url)
    arguments.pop("prepared_statement_cache_size", None)
    arguments.pop("prepared_statement_name_func", None)
    _integer_options(arguments)
    return arguments


def _connect_whole(
    _dialect: object, _record: object, _cargs: object, cparams: dict[str, Any]
) -> None:
    """Make new PostgreSQL connections through `connect_uncancellable` (a `do_connect` hook).

    It also reads asyncpg's `statement_cache_size` from the URL as the number asyncpg needs
    (SQLAlchemy passes URL options on as text), so the documented PgBouncer URL works.
    """
    cparams["async_creator_fn"] = connect_uncancellable
    _integer_options(cparams)


def _integer_options(arguments: dict[str, Any]) -> None:
    """The asyncpg options given in the URL (as text) that asyncpg needs as integers."""
    if "statement_cache_size" in arguments:
        arguments["statement_cache_size"] = int(arguments["statement_cache_size"])


async def connect_uncancellable(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, which a cancelled caller no longer interrupts half-way.

    A call that needs a new connection may be cancelled while it is being made (deadline, client
    gone). Cancelling asyncpg there abandons its SSL negotiation, which leaves a future failing
    with "unexpected connection_lost() call" that asyncio reports at ERROR (asyncpg issues 1211
    and 1310), and can leave the socket to the garbage collector. Here the attempt finishes on
    its own and a connection nobody waits for any more is closed.
    """
    attempt = asyncio.ensure_future(_connect_any_host(*args, **kwargs))
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        attempt.add_done_callback(_close_unwanted)
        raise


#: For each list of hosts, the index of the one that last gave a connection: tried first.
_last_served: dict[tuple[tuple[str, Any], ...], int] = {}


async def _connect_any_host(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """Connect to the first host of the URL's list that answers and matches, each in its own time.

    asyncpg tries a multi-host list under one timeout for them all, always from the first host:
    a first host that went silent (powered off, partitioned) would use up every attempt's time
    and the new primary would never be tried. libpq gives each host its own timeout; so does
    this, and it starts with the host that served last, so that after a failover new
    connections go straight to the new primary. A host that refuses, is silent, is starting or
    stopping, or does not match `target_session_attrs` is passed over; any other error (bad
    credentials, a missing database) is the same on every host and is raised at once.
    """
    hosts, ports = kwargs.get("host"), kwargs.get("port")
    if not isinstance(hosts, list) or len(hosts) < 2 or not isinstance(ports, list):
        return await _connect_one(*args, **kwargs)
    key = tuple(zip(hosts, ports, strict=True))
    first = _last_served.get(key, 0)
    last_error: BaseException | None = None
    for index in [*range(first, len(key)), *range(first)]:
        host, port = key[index]
        try:
            connection = await _connect_one(*args, **{**kwargs, "host": host, "port": port})
        except Exception as error:
            if not is_outage(error):
                raise
            last_error = error
            continue
        _last_served[key] = index
        return connection
    assert last_error is not None  # noqa: S101 - the loop ran at least twice
    raise last_error


async def _connect_one(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(*args, **kwargs)
    except (OSError, TimeoutError) as error:  # refused, reset, unresolvable, too slow
        text = str(error) or f"no answer within {kwargs.get('timeout')} s"
        raise DatabaseUnreachable(f"cannot connect to the database: {text}") from error


def _close_unwanted(attempt: asyncio.Future[asyncpg.Connection]) -> None:
    if attempt.cancelled():
        return
    if (error := attempt.exception()) is not None:
        logger.debug("an abandoned connection attempt failed: %r", error)
        return
    _background(attempt.result().close(timeout=CLOSE_TIMEOUT_SECONDS))


#: Background closes in progress: asyncio keeps only weak references to tasks.
_closing: set[asyncio.Task[None]] = set()


def _background(closing: Awaitable[None]) -> None:
    task = asyncio.ensure_future(closing)
    _closing.add(task)
    task.add_done_callback(_closed)


def _closed(task: asyncio.Task[None]) -> None:
    _closing.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.debug("closing an abandoned connection failed: %r", error)


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    """Set up each SQLite connection.

    Foreign keys are enforced (off by default in SQLite), WAL lets readers run beside one writer,
    and BEGIN is taken over from the driver so `_sqlite_begin` can choose the transaction's kind.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Writers take the write lock up front (BEGIN IMMEDIATE), waiting up to the busy timeout.

    A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
    writer committed in between; taking the lock first makes concurrent writers queue instead.
    """
    writes = connection.get_execution_options().get(_WRITES, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


#: Whether a session cannot write: its node is a standby, or the session is read-only.
_WRITABLE_CHECK = "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean"

#: Task changes numbered per statement by `Database.number_changes`.
NUMBER_BATCH = 500
_NUMBER_CHANGES = Prepared(select(func.task_changes_assign(NUMBER_BATCH, type_=Integer)))


class Database:
    """Sessions for services: `read()` for queries, `write()` for one committed transaction.

    Sessions keep loaded objects usable after commit (`expire_on_commit=False`) so services can
    return them to servicers after the transaction has ended.
    """

    def __init__(self, engine: AsyncEngine, fast_reads: FastReads = None) -> None:
        self.engine = engine
        self._read_pool = fast_reads if isinstance(fast_reads, ReadPool) else None
        self._sqlite_reads = fast_reads if isinstance(fast_reads, SqliteReads) else None
        readers = engine
        self._autocommit = engine.dialect.name == "postgresql"
        self._write_engine = engine.execution_options(**{_WRITES: True})
        if self._autocommit:
            # Reads are single statements: in autocommit they need no BEGIN and ROLLBACK round
            # trips around them (each statement still sees one consistent snapshot).
            readers = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._readers = async_sessionmaker(readers, expire_on_commit=False)
        self._row_engine = readers
        self._writers = async_sessionmaker(self._write_engine, expire_on_commit=False)
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every write this process commits (the change feed's wake-up)."""
        self._after_commit.append(callback)

    def _committed(self) -> None:
        for callback in self._after_commit:
            callback()

    async def ping(self) -> None:
        """Round-trip to the database; raises when it does not answer or cannot take writes.

        On PostgreSQL a node in recovery (a standby, or a primary being demoted), or a session
        that is read-only, answers reads but refuses every write this service makes: it counts
        as down. The connection that found it is discarded, and so are the fast reads' pooled
        connections, so the next ones are made afresh (to a read-write node, with
        `target_session_attrs=read-write`).
        """
        async with self.engine.connect() as connection:
            if not self._autocommit:
                await connection.exec_driver_sql("SELECT 1")
                return
            standby = (await connection.exec_driver_sql(_WRITABLE_CHECK)).scalar()
            if standby:
                await connection.invalidate()
        if standby:
            # The fast reads' connections point at the same node: replaced now. SQLAlchemy's
            # are replaced by its own pool as each meets the node's refusal (25006, marked a
            # disconnect by `_discard_on_outage`), and that call runs once more on a new one.
            if self._read_pool is not None:
                await self._read_pool.expire_connections()
            raise DatabaseIsStandby("the database is in recovery (a standby): it takes no writes")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads, never committed.

        On PostgreSQL it runs in autocommit, so each statement is its own snapshot; services that
        need several statements to agree use `write()`.
        """
        async with self._readers() as session:
            yield session

    async def close(self) -> None:
        """Close both pools; connections still busy after CLOSE_TIMEOUT_SECONDS are dropped."""
        if self._sqlite_reads is not None:
            await self._sqlite_reads.close()
        if self._read_pool is not None:
            try:
                await asyncio.wait_for(self._read_pool.close(), CLOSE_TIMEOUT_SECONDS)
            except TimeoutError:
                self._read_pool.terminate()
        await self.engine.dispose()

    def connections_in_use(self) -> int:
        """Connections checked out of both pools now: SQLAlchemy's and the fast reads' own.

        Zero whenever no call is running: what the tests of cancelled and timed-out calls check
        to know that every connection went back (or was closed), on whichever path it was used.
        """
        in_use = self.engine.pool.checkedout()  # type: ignore[attr-defined]
        if self._read_pool is not None:
            in_use += self._read_pool.in_use()
        return int(in_use)

    @asynccontextmanager
    async def reads(self) -> AsyncIterator[RowReader]:
        """A connection for the hot reads' `Prepared`s, on the fast path where there is one.

        On PostgreSQL an asyncpg connection of the read pool (see `taskservice.db.reads`),
        in autocommit like `rows()`; on SQLite its reading thread; elsewhere (an in-memory
        database, the CLI) a SQLAlchemy connection.
        """
        if self._sqlite_reads is not None:
            yield self._sqlite_reads.reader()
            return
        pool = self._read_pool
        if pool is None:
            async with self.rows() as connection:
                yield SqlAlchemyReader(connection)
            return
        reader = AsyncpgReader(pool, self.engine.dialect)
        await reader.acquire()
        try:
            yield reader
        finally:
            await reader.release()

    async def returning(self, statement: Prepared, values: dict[str, Any]) -> Any:
        """Run a prepared INSERT or UPDATE ... RETURNING, atomic by itself; its row, or None.

        On PostgreSQL it runs in autocommit on the fast path's pool (no BEGIN and COMMIT round
        trips, no SQLAlchemy in the way); on SQLite as `statement()` runs it. Either way the
        change feed hears of the commit. `values` must name exactly the statement's parameters:
        SQLAlchemy reads a column's name among an UPDATE's values as one more column to set.
        """
        if self._read_pool is None:
            async with self.statement() as connection:
                return (await connection.execute(statement.statement, values)).first()
        async with self.reads() as writer:
            row = await writer.first(statement, values)
        if row is not None:
            self._committed()
        return row

    @asynccontextmanager
    async def rows(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that want plain rows rather than ORM objects.

        No session, identity map or instances: for reads built per call (a filtered list);
        prebuilt ones go through `reads()`. Like `read()`, never committed, and in autocommit on
        PostgreSQL.
        """
        async with self._row_engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for statements each atomic by itself (one INSERT ... RETURNING, say).

        On PostgreSQL it runs in autocommit: no BEGIN and COMMIT round trips around a lone
        statement. On SQLite it is one write transaction, committed when the block ends.
        """
        if self._autocommit:
            async with self._row_engine.connect() as connection:
                yield connection
        else:
            async with self._write_engine.begin() as connection:
                yield connection
        self._committed()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction committed when the block ends, rolled back if it raises."""
        async with self._writers.begin() as session:
            yield session
        self._committed()

    @property
    def numbers_changes(self) -> bool:
        """Whether `number_changes` has anything to do here (PostgreSQL)."""
        return self._autocommit

    async def number_changes(self) -> int:
        """On PostgreSQL, give revisions to every committed task change that has none yet.

        The triggers of migration 0009 record changes unnumbered; `task_changes_assign()`
        numbers them in commit order, in a short transaction of its own, off the writers' path:
        the change feed calls it when a commit wakes it. When nothing is pending (another
        server got there first) it costs one round trip and no write. SQLite's triggers number
        changes themselves. Returns how many it numbered.
        """
        if not self._autocommit:
            return 0
        numbered = 0
        async with self.reads() as reader:
            while (batch := await reader.scalar(_NUMBER_CHANGES)) == NUMBER_BATCH:
                numbered += batch
        return numbered + batch

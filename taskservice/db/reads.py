"""The hot reads' fast path: prebuilt SELECTs run straight on asyncpg on PostgreSQL.

By profile, a GetTask spent more CPU in SQLAlchemy's connection checkout, execute and result
machinery (about 240 us a call) than in everything asyncpg and PostgreSQL do for it (about 80 us
with a pool of its own). The statements stay SQLAlchemy Core, built from the typed models and
compiled once by SQLAlchemy's own asyncpg dialect; only their execution skips it. The rows come
back with the attributes and Python types SQLAlchemy's rows have (each column's result processor
is applied), so the services and servicers reading them cannot tell the two paths apart, and on
SQLite the same `Prepared`s run through SQLAlchemy.

Connections are treated as SQLAlchemy treats its own: one whose statement was interrupted
(cancelled: the call's deadline passed or its client left) is closed at once, never pooled again,
and PostgreSQL stops the statement when it notices (`client_connection_check_interval`); after a
lost connection every older pooled connection is replaced, so an outage fails each call once at
most rather than once per stale connection, and a read that meets one on a connection left idle
through a failover runs once more on a new connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Insert, Select, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from taskservice.db.outages import is_outage, nothing_done
from taskservice.db.spans import POSTGRESQL, StatementSpan

#: What a `Prepared` may hold: a statement that returns rows.
Statement = Select[Any] | Insert | Update


@dataclass(frozen=True)
class Compiled:
    """A statement as a driver runs it: SQL text, how to bind, how to read its rows."""

    sql: str
    #: For each positional parameter: its name and the value when the caller gives none.
    parameters: tuple[tuple[str, Any], ...]
    bind_processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    result_processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    row: Callable[[Sequence[Any]], Any]

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for `values` (names the statement lacks are ignored)."""
        arguments = [values.get(name, default) for name, default in self.parameters]
        for index, process in self.bind_processors:
            arguments[index] = process(arguments[index])
        return arguments

    def rows(self, records: list[asyncpg.Record]) -> list[Any]:
        """The asyncpg records as rows with SQLAlchemy's attribute names and Python types."""
        if not self.result_processors:
            return [self.row(record) for record in records]
        rows = []
        for record in records:
            values = list(record)
            for index, process in self.result_processors:
                values[index] = process(values[index])
            rows.append(self.row(values))
        return rows


class Prepared:
    """A statement that returns rows, built once at import and run by the fastest path there is.

    A SELECT, or an INSERT or UPDATE ... RETURNING whose every value is a bound parameter or
    an expression of the row's columns (no Python-side default or onupdate is computed at
    execution: the caller passes every value). Only statements whose
    shape never changes belong here (no expanding IN lists): each is compiled once per dialect
    and then only bound and run.
    """

    def __init__(
        self, statement: Statement, variants: Mapping[str, Statement] | None = None
    ) -> None:
        self.statement = statement
        #: Another form of the same read for a dialect (by name) that runs it better, returning
        #: the same columns (PostgreSQL's LATERAL, say, which SQLite lacks).
        self._variants = dict(variants or {})
        self._compiled: dict[str, Compiled] = {}

    def statement_for(self, dialect_name: str) -> Statement:
        """The statement to run on the dialect named."""
        return self._variants.get(dialect_name, self.statement)

    def compiled(self, dialect: Dialect) -> Compiled:
        """The statement compiled for `dialect`'s driver (once per dialect)."""
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            statement = self.statement_for(dialect.name)
            compiled = self._compiled[dialect.name] = _compile(statement, dialect)
        return compiled


def _compile(statement: Statement, dialect: Dialect) -> Compiled:
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    defaults = compiled.params
    binds = []
    for index, name in enumerate(names):
        bind = compiled.binds[name]
        if bind.expanding:
            raise ValueError(f"{name}: an expanding parameter changes the statement's shape")
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            binds.append((index, process))
    columns = list(statement.exported_columns)
    results = []
    for index, column in enumerate(columns):
        process = column.type.dialect_impl(dialect).result_processor(dialect, None)
        if process is not None:
            results.append((index, process))
    row = namedtuple("Row", list(statement.exported_columns.keys()))  # type: ignore[misc]
    return Compiled(
        sql=str(compiled),
        parameters=tuple((name, defaults.get(name)) for name in names),
        bind_processors=tuple(binds),
        result_processors=tuple(results),
        row=row._make,
    )


class PreparedCache:
    """`Prepared`s built per call shape (a list's filter and order), the most recently used kept.

    Building a statement and compiling it costs far more than running it; a client paging
    through one view asks for the same shapes again and again. At most `size` shapes are kept,
    so a client inventing a new filter per call costs its builds, never memory.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[Prepared, ...]] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Sequence[Prepared]]) -> tuple[Prepared, ...]:
        """The statements for `key`, built by `build()` when not kept."""
        entries = self._entries
        found = entries.get(key)
        if found is not None:
            entries.move_to_end(key)
            return found
        found = entries[key] = tuple(build())
        if len(entries) > self._size:
            entries.popitem(last=False)
        return found


class RowReader:
    """Runs `Prepared`s on one checked-out connection (see `Database.reads`)."""

    async def all(self, read: Prepared, values: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row."""
        raise NotImplementedError

    async def first(self, read: Prepared, values: Mapping[str, Any] | None = None) -> Any:
        """The first row, or None."""
        rows = await self.all(read, values)
        return rows[0] if rows else None

    async def scalar(self, read: Prepared, values: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = await self.first(read, values)
        return None if row is None else row[0]


#: Seconds a connection may stay at hand unused (while others are used) before it goes back to
#: asyncpg's pool, which closes the connections left idle past its own inactivity lifetime.
AT_HAND_SECONDS = 60.0


def _attached(connection: asyncpg.Connection) -> bool:
    """Whether the pooled connection is still ours to use or give back.

    A pooled connection that closes (terminated after an interrupted statement, or dropped by
    the server) is taken back by asyncpg's pool at once; its proxy then raises InterfaceError
    on every call, and giving it back is a no-op.
    """
    try:
        connection.is_closed()
    except asyncpg.InterfaceError:
        return False
    return True


def _ready(connection: asyncpg.Connection) -> bool:
    """Whether the connection can serve the next call as it is: ours, open, in no transaction."""
    try:
        return not connection.is_closed() and not connection.is_in_transaction()
    except asyncpg.InterfaceError:
        return False


class ReadPool:
    """asyncpg's pool, with the connections calls leave in good order kept at hand.

    By profile, asyncpg's `release` (a task to shield it from cancellation, and a timeout) was
    11% of the event loop under GetTask. A connection a call leaves open and outside any
    transaction is kept at hand for the next call instead; asyncpg's pool still counts it as in
    use, so its size bounds them all. While a caller waits in asyncpg's queue (every connection
    is busy), released connections go back to asyncpg's pool, which hands them to the waiters in
    order; kept at hand they would pass the waiters by for ever. Anything else goes back to
    asyncpg's pool too, which cleans up as it always did: a connection that closed (asyncpg
    already has it), one left in a transaction (rolled back there), one taken before
    `expire_connections`, one unused at hand for AT_HAND_SECONDS while others are used, and
    every connection once the pool is closing. Like SQLAlchemy's pool, an idle server keeps its
    connections at hand open; one the server dropped meanwhile is skipped when next taken.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        #: Connections ready for the next call, with when each was put there; newest last.
        self._at_hand: list[tuple[asyncpg.Connection, float]] = []
        self._generation = 0
        #: Callers in asyncpg's `acquire` now: released connections go to them first.
        self._waiting = 0
        self._closing = False

    async def acquire(self) -> tuple[asyncpg.Connection, int]:
        """A connection, and the generation `release` wants back with it."""
        at_hand = self._at_hand
        while at_hand:
            connection, _ = at_hand.pop()
            if _ready(connection):
                return connection, self._generation
            await self._pool.release(connection)  # closed while at hand
        generation = self._generation  # as it was before waiting: an expiry meanwhile counts
        self._waiting += 1
        try:
            connection = await self._pool.acquire()
        finally:
            self._waiting -= 1
        return connection, generation

    async def release(self, connection: asyncpg.Connection, generation: int) -> None:
        """Keep `connection` at hand if it is as a call needs it, else give it back."""
        if (
            self._waiting  # someone waits in asyncpg's queue: this is theirs
            or self._closing
            or generation != self._generation
            or not _ready(connection)
        ):
            await self._pool.release(connection)
            return
        now = time.monotonic()
        at_hand = self._at_hand
        at_hand.append((connection, now))
        oldest, since = at_hand[0]
        if now - since > AT_HAND_SECONDS:
            del at_hand[0]
            await self._pool.release(oldest)

    async def expire_connections(self) -> None:
        """Replace every connection: those at hand now, the rest when they are released.

        Those at hand are closed at once, without a round trip: after a lost connection the
        others are suspect, and waiting on them would hold up the call that lost its own.
        """
        self._generation += 1
        at_hand, self._at_hand = self._at_hand, []
        for connection, _ in at_hand:
            if _attached(connection):
                connection.terminate()
        await self._pool.expire_connections()

    @property
    def generation(self) -> int:
        """How many times every connection was replaced: a connection taken at an older one is."""
        return self._generation

    def in_use(self) -> int:
        """Connections a call holds now."""
        kept = sum(1 for connection, _ in self._at_hand if _attached(connection))
        return self._pool.get_size() - self._pool.get_idle_size() - kept

    async def close(self) -> None:
        """Close every connection, waiting for those in use to be released."""
        self._closing = True
        at_hand, self._at_hand = self._at_hand, []
        # Each release is shielded: all of them complete even if this wait is cancelled.
        await asyncio.gather(*(self._pool.release(connection) for connection, _ in at_hand))
        await self._pool.close()

    def terminate(self) -> None:
        """Close every connection now."""
        self._closing = True
        self._at_hand = []
        self._pool.terminate()


class AsyncpgReader(RowReader):
    """A pooled asyncpg connection: asyncpg caches each statement's server-side preparation.

    The reader owns its connection from `acquire` to `release`, so that it can swap a broken
    one: a connection that sat idle in the pool through a failover fails its next statement
    (lost, protocol state broken, or pointing at a demoted node), and a SELECT that met such an
    outage runs once more on a new connection, made to whichever node serves now. A write runs
    again only when the error proves it did nothing (see `outages.nothing_done`).
    """

    __slots__ = ("_connection", "_dialect", "_generation", "_pool", "_retried")

    def __init__(self, pool: ReadPool, dialect: Dialect) -> None:
        self._pool = pool
        self._dialect = dialect
        self._connection: asyncpg.Connection | None = None
        self._generation = 0
        self._retried = False

    async def acquire(self) -> None:
        """Take a connection from the pool."""
        self._connection, self._generation = await self._pool.acquire()

    async def release(self) -> None:
        """Give the connection back (or keep it at hand, as the pool decides)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection, self._generation)

    async def all(self, read: Prepared, values: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row."""
        compiled = read.compiled(self._dialect)
        arguments = compiled.arguments(values or {})
        while True:
            try:
                with StatementSpan(POSTGRESQL, compiled.sql):
                    records = await self._connection.fetch(compiled.sql, *arguments)  # type: ignore[union-attr]
            except asyncpg.IntegrityConstraintViolationError as error:
                # What services catch, whichever path ran the statement.
                raise IntegrityError(compiled.sql, arguments, error) from error
            except BaseException as error:
                outage = await self._discard_if_broken(error)
                if not outage or self._retried or not _may_run_again(read, error):
                    raise
                self._retried = True
                await self.release()
                await self.acquire()
                continue
            return compiled.rows(records)

    async def _discard_if_broken(self, error: BaseException) -> bool:
        """Close the connection unless PostgreSQL answered `error` on it in good order.

        An interrupted statement (cancellation) leaves the protocol mid-exchange, and a lost
        connection is lost: either is closed now, as SQLAlchemy invalidates its own. After an
        outage (see `taskservice.db.outages`) no older pooled connection is trusted either.
        Returns whether `error` was an outage.
        """
        connection = self._connection
        if connection is None:  # the retry's acquire failed: nothing is held
            return False
        outage = isinstance(error, Exception) and is_outage(error)
        attached = _attached(connection)  # if not, asyncpg saw it close and has it back already
        if (
            not outage
            and attached
            and isinstance(error, asyncpg.PostgresError)
            and not connection.is_closed()
        ):
            return False
        if attached and not connection.is_closed():
            connection.terminate()
        if outage and self._pool.generation == self._generation:
            # Only the first outage met since the last expiry replaces every connection: a
            # straggler failing on an older one must not throw away those made since.
            await self._pool.expire_connections()
        return outage


def _may_run_again(read: Prepared, error: BaseException) -> bool:
    """Whether a statement that met an outage may run again: a read, or a write that did nothing."""
    return isinstance(read.statement, Select) or nothing_done(error)


class SqlAlchemyReader(RowReader):
    """A SQLAlchemy connection (SQLite): the same reads through SQLAlchemy's execution."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def all(self, read: Prepared, values: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row."""
        statement = read.statement_for(self._connection.dialect.name)
        return list((await self._connection.execute(statement, dict(values or {}))).all())


async def _no_reset(connection: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool: nothing, normally.

    asyncpg's default reset is a round trip on every release (unlisten, unlock, RESET ALL), for
    state these reads never create. A transaction left open would be a bug; it is rolled back.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_read_pool(
    size: int,
    connect: Callable[..., Any],
    connect_kwargs: Mapping[str, Any],
) -> ReadPool:
    """The pool of the fast reads: up to `size` connections, made when first needed."""
    pool = await asyncpg.create_pool(
        min_size=0,
        max_size=size,
        connect=connect,
        reset=_no_reset,
        **connect_kwargs,
    )
    return ReadPool(pool)

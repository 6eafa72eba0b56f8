"""The hot reads' fast path on SQLite: one thread with its own connection, one hop per read.

Through SQLAlchemy and aiosqlite, a GetTask made six round trips between the event loop and
aiosqlite's thread (BEGIN, cursor, execute, fetch, cursor close, ROLLBACK), each a wake-up of
both threads, under SQLAlchemy's per-statement machinery: by profile, most of the event loop's
time on SQLite. Here a read is handed to a thread of its own as the compiled `Prepared`
(`taskservice.db.reads`) and its arguments; the thread runs it on a plain sqlite3 connection in
autocommit (a lone SELECT is its own snapshot, as on PostgreSQL's fast path) and hands back the
rows, processed as SQLAlchemy's are. Reads queued together are run together and answered with
one wake-up of the event loop.

The connection is `query_only`: only reads come here. Writes keep SQLAlchemy's connections and
their BEGIN IMMEDIATE queue; in WAL mode a read neither waits for them nor blocks them, and it
sees every write committed before it starts. An in-memory database has no second connection to
give, so it keeps SQLAlchemy's path.

A call cancelled (its deadline passed, its client went away) must not keep the one thread busy:
every read behind it would wait for a result nobody wants. A read cancelled while queued is
skipped; one cancelled while running is stopped with `sqlite3.Connection.interrupt()` (the one
sqlite3 call meant to be made from another thread), so the thread moves on to the next read at
once. A lock pairs "which read is running" with the interrupt, so an interrupt can only reach
the read it was meant for: SQLite clears a late one when the next statement starts.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import URL
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from taskservice.db.reads import Compiled, Prepared, RowReader
from taskservice.db.spans import SQLITE, StatementSpan

#: A read handed to the thread: where its answer goes, the statement, its arguments.
_Job = tuple[asyncio.Future[list[Any]], Compiled, Sequence[Any]]
#: What the thread hands back per read: the future, and its rows or the error it raised.
_Answer = tuple[asyncio.Future[list[Any]], list[Any] | None, BaseException | None]


class SqliteReads:
    """A thread reading one SQLite file for the event loop that started it."""

    def __init__(self, url: URL, dialect: Dialect, busy_timeout_ms: int) -> None:
        self._dialect = dialect
        arguments, options = dialect.create_connect_args(url)
        self._connect_arguments = (tuple(arguments), {**options, "check_same_thread": False})
        self._busy_timeout_ms = busy_timeout_ms
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="sqlite-reads", daemon=True)
        #: Guards `_running`, and interrupting it, against the thread moving to another read.
        self._lock = threading.Lock()
        #: The future of the read the thread is running now, on `_connection`.
        self._running: asyncio.Future[list[Any]] | None = None
        self._connection: sqlite3.Connection | None = None

    @staticmethod
    def serves(url: URL) -> bool:
        """Whether `url` is a file another connection can open (not an in-memory database)."""
        database = url.database or ""
        return database not in ("", ":memory:") and "mode=memory" not in database

    async def start(self) -> None:
        """Open the connection in the thread; raises what opening it raised."""
        self._thread.start()
        await self._opened

    async def close(self) -> None:
        """Stop the thread once the reads queued before this have been answered."""
        if not self._thread.is_alive():
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def reader(self) -> SqliteReader:
        """A `RowReader` over this thread."""
        return SqliteReader(self)

    async def fetch(self, read: Prepared, values: Mapping[str, Any]) -> list[Any]:
        """The statement's rows, read in the thread."""
        compiled = read.compiled(self._dialect)
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._jobs.put((future, compiled, compiled.arguments(values)))
        try:
            with StatementSpan(SQLITE, compiled.sql):
                return await future
        except asyncio.CancelledError:
            self._interrupt(future)
            raise

    def _interrupt(self, future: asyncio.Future[list[Any]]) -> None:
        """Stop the read of `future` (already cancelled) if the thread is running it now.

        A read still queued needs nothing: the thread skips cancelled reads.
        """
        with self._lock:
            if self._running is future and self._connection is not None:
                self._connection.interrupt()

    def _run(self) -> None:
        try:
            connection = self._open()
        except BaseException as error:
            self._loop.call_soon_threadsafe(_fail, self._opened, error)
            return
        self._connection = connection
        self._loop.call_soon_threadsafe(_succeed, self._opened, None)
        try:
            while self._serve_batch(connection):
                pass
        finally:
            connection.close()

    def _open(self) -> sqlite3.Connection:
        arguments, options = self._connect_arguments
        connection = sqlite3.connect(*arguments, **options)
        connection.isolation_level = None
        connection.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        connection.execute("PRAGMA query_only=ON")
        return connection

    def _serve_batch(self, connection: sqlite3.Connection) -> bool:
        """Run every queued read, answer them with one wake-up; False once told to stop."""
        jobs = [self._jobs.get()]
        while True:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        answers: list[_Answer] = []
        running = True
        for job in jobs:
            if job is None:
                running = False
                continue
            future, compiled, arguments = job
            with self._lock:
                if future.cancelled():  # its caller is gone: skip it
                    continue
                self._running = future
            try:
                rows = compiled.rows(connection.execute(compiled.sql, arguments).fetchall())
            except sqlite3.Error as error:  # an interrupted read's too: its future is cancelled
                answers.append((future, None, _as_sqlalchemy(compiled, arguments, error)))
            except Exception as error:  # a result processor's: the caller's to see
                answers.append((future, None, error))
            else:
                answers.append((future, rows, None))
            finally:
                with self._lock:
                    self._running = None
        if answers:
            self._loop.call_soon_threadsafe(_answer, answers)
        return running


class SqliteReader(RowReader):
    """Runs `Prepared`s in a `SqliteReads` thread."""

    def __init__(self, reads: SqliteReads) -> None:
        self._reads = reads

    async def all(self, read: Prepared, values: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row."""
        return await self._reads.fetch(read, values or {})


def _as_sqlalchemy(compiled: Compiled, arguments: Sequence[Any], error: sqlite3.Error) -> Any:
    """SQLAlchemy's wrapping of a sqlite3 error, which the error mapping understands."""
    return DBAPIError.instance(compiled.sql, arguments, error, sqlite3.Error, hide_parameters=True)


def _answer(answers: list[_Answer]) -> None:
    for future, rows, error in answers:
        if future.done():  # the call was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(rows)  # type: ignore[arg-type]


def _succeed(future: asyncio.Future[None], value: None) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

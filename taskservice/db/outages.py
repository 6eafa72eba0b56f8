"""Which errors mean "the database is away": one classification for every path that meets one.

A failover shows itself in many shapes, depending on which driver path meets it and when: a
refused or reset connection while connecting, PostgreSQL refusing new sessions while it shuts
down or starts (SQLSTATE 57P03), terminating the ones it has (57P01, 57P02), a primary demoted to
a standby that now answers writes with "read-only transaction" (25006), too many connections
while clients reconnect at once (53300), no host of a multi-host URL being read-write (asyncpg's
TargetServerAttributeNotMatched), or an idle pooled connection whose protocol state broke when
its server went away (asyncpg's InternalClientError, "cannot switch to state"). SQLAlchemy wraps
some of these in its own exceptions and leaves others raw; the fast read path sees them raw.

So nothing here looks at a wrapper's type: `is_outage` walks the exception and what it wraps
(`orig`, `__cause__`) and decides by SQLSTATE class and driver exception. The call edges answer
an outage UNAVAILABLE (the caller may retry); every connection that met one is discarded, with
every older connection of its pool; background loops wait and try again. Anything else is not an
outage: a bug is reported as a bug, with its traceback, never hidden as a retryable outage.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator

import asyncpg
import sqlalchemy.exc

#: SQLSTATE classes meaning the connection itself failed (connection_exception).
OUTAGE_SQLSTATE_CLASSES = ("08",)
#: Single SQLSTATEs meaning the server cannot serve this session (now, or as a primary).
OUTAGE_SQLSTATES: dict[str, str] = {
    "57P01": "admin_shutdown",  # the server is shutting down (switchover, restart)
    "57P02": "crash_shutdown",  # another backend crashed; every session is ended
    "57P03": "cannot_connect_now",  # starting up or shutting down: no new sessions
    "57P05": "idle_session_timeout",
    "53300": "too_many_connections",  # every client reconnecting after a failover at once
    "25006": "read_only_sql_transaction",  # the node was demoted: it is a standby now
}
#: SQLSTATEs that prove the statement did nothing: running it again elsewhere is safe.
NOTHING_DONE_SQLSTATES = frozenset({"57P03", "53300", "25006"})

#: SQLite's OperationalError also covers bugs ("no such table"): only these are transient.
SQLITE_TRANSIENT_MESSAGES = ("database is locked", "unable to open database", "disk I/O error")


class DatabaseUnreachable(ConnectionError):
    """Connecting failed: no host answered (refused, unresolvable, timed out).

    Raised by the connect function both pools use, so a plain `OSError` or `TimeoutError` met
    while connecting is told apart from one a bug raises anywhere else.
    """


class DatabaseIsStandby(DatabaseUnreachable):
    """The node answered, but it is in recovery (a standby): it takes none of our writes."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it wraps: SQLAlchemy's `orig`, then each `__cause__`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "orig", None)
        if isinstance(wrapped, BaseException) and id(wrapped) not in seen:
            current = wrapped
        else:
            current = current.__cause__


def sqlstate(error: BaseException) -> str | None:
    """The first SQLSTATE found on `error` or anything it wraps."""
    for item in _chain(error):
        state = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    return None


def _outage_state(state: str) -> bool:
    return state in OUTAGE_SQLSTATES or state.startswith(OUTAGE_SQLSTATE_CLASSES)


def is_outage(error: BaseException) -> bool:
    """Whether `error` means the database could not be reached or cannot serve us now."""
    for item in _chain(error):
        if isinstance(item, sqlalchemy.exc.DBAPIError) and item.connection_invalidated:
            return True
        if isinstance(item, sqlalchemy.exc.TimeoutError):  # no pooled connection came free
            return True
        if isinstance(item, DatabaseUnreachable | ConnectionError):
            return True
        if _broken_connection(item):
            return True
        if isinstance(item, sqlite3.OperationalError):
            return any(message in str(item) for message in SQLITE_TRANSIENT_MESSAGES)
        state = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(state, str) and state and _outage_state(state):
            return True
    return False


#: asyncpg's words for a connection that is gone (an InterfaceError, or an InternalClientError
#: when an idle pooled connection's protocol state broke as its server went away: asyncpg#1069).
_GONE_MESSAGES = ("connection is closed", "connection was closed", "cannot switch to state")


def _broken_connection(error: BaseException) -> bool:
    """Whether asyncpg raised `error` because the connection, not the caller, failed.

    No host matched `target_session_attrs`, the protocol broke, or the connection is closed.
    asyncpg's other client errors are bugs or configuration (two coroutines on one connection,
    a wrong argument count, a misspelt URL option) and are not outages.
    """
    if isinstance(error, asyncpg.TargetServerAttributeNotMatched | asyncpg.ProtocolError):
        return True
    if isinstance(error, asyncpg.InternalClientError | asyncpg.InterfaceError):
        if isinstance(error, asyncpg.ClientConfigurationError):
            return False
        text = str(error)
        return any(message in text for message in _GONE_MESSAGES)
    return False


def nothing_done(error: BaseException) -> bool:
    """Whether `error` proves the unit of work wrote nothing, so running it again is safe.

    True for failures to connect and for the server refusing the session or the write (a
    demoted primary); never for a connection lost mid-statement, when a COMMIT may have landed.
    """
    for item in _chain(error):
        if isinstance(item, DatabaseUnreachable | asyncpg.TargetServerAttributeNotMatched):
            return True
    state = sqlstate(error)
    return state is not None and state in NOTHING_DONE_SQLSTATES


def describe(error: BaseException) -> str:
    """A short, secret-free name for an outage in logs: the driver's type and SQLSTATE."""
    chain = [item for item in _chain(error) if not isinstance(item, asyncio.CancelledError)]
    inner = chain[-1] if chain else error
    state = sqlstate(error)
    name = type(inner).__name__
    return f"{name} (SQLSTATE {state})" if state else name


def log_round_failure(logger: logging.Logger, what: str, error: Exception) -> None:
    """Log a background round's failure (the next round tries again).

    An outage is one WARNING line; anything else is a bug and is logged as one, at ERROR with
    its traceback, so that it is never mistaken for the database being away.
    """
    if is_outage(error):
        logger.warning("%s: the database is unavailable (%s)", what, describe(error))
    else:
        logger.error("%s: unexpected error", what, exc_info=error)

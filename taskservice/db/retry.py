"""Running a write transaction again when PostgreSQL aborted it for a conflict with another one.

PostgreSQL breaks a lock cycle by aborting one of its transactions (deadlock_detected, 40P01),
and under REPEATABLE READ or SERIALIZABLE aborts a transaction whose snapshot went stale
(serialization_failure, 40001). Either way the transaction wrote nothing, the caller did nothing
wrong, and running the same unit of work again almost always succeeds: the other transaction has
finished by then. So such failures are retried here, a few times with jittered exponential
backoff, instead of reaching callers as ABORTED.

What is re-run is a whole unit of work (a service method whose writes are one transaction), never
a part of one: a transaction PostgreSQL aborted cannot be continued. Other errors, SQLite's
included, are not retried as conflicts: SQLite writers queue for the write lock up front (BEGIN
IMMEDIATE with a busy timeout), so they neither deadlock nor lose serialization races, and a lock
still held when the busy timeout ends is an overload that waiting longer would not cure.

One more kind of failure runs the unit again, once and at once: the database refusing the work
before doing any of it (see `outages.nothing_done`: a primary demoted to a standby, a server
shutting down), since the discarded connections are replaced by ones to the node that serves now.

The backoff sleeps are plain `asyncio.sleep`s: a call whose deadline passes (or whose client
goes away) is cancelled mid-sleep like anywhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

from taskservice.db.outages import describe, nothing_done
from taskservice.tracing.spans import child_span

logger = logging.getLogger(__name__)

#: SQLSTATEs meaning "aborted because of a concurrent transaction; nothing was written".
RETRYABLE_SQLSTATES: dict[str, str] = {
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
}
#: Runs of a unit of work in all (the first and the retries) before the conflict reaches the
#: caller as ABORTED (reason CONCURRENT_TRANSACTION).
MAX_ATTEMPTS = 4
#: Upper bound of the first backoff; it doubles for each further retry, up to MAX_DELAY_SECONDS.
#: Each sleep is uniform between 0 and the bound ("full jitter"), so transactions that collided
#: once do not collide again in lockstep.
BASE_DELAY_SECONDS = 0.01
#: Upper bound of any one backoff.
MAX_DELAY_SECONDS = 0.2

_P = ParamSpec("_P")
_T = TypeVar("_T")


def conflict_sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of `error` if it is a conflict worth retrying, else None."""
    if not isinstance(error, DBAPIError):
        return None
    state = getattr(error.orig, "sqlstate", None)
    return state if state in RETRYABLE_SQLSTATES else None


def backoff_bound(retry: int) -> float:
    """The most the `retry`-th retry (1 for the first) sleeps before running again."""
    return min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2 ** (retry - 1))


async def run_retrying_conflicts(operation: str, unit: Callable[[], Awaitable[_T]]) -> _T:
    """Run `unit` and return its result, running it again after a conflict abort.

    `unit` must be safe to run from its start again after a conflict: everything it wrote was
    in the transaction PostgreSQL aborted. `operation` names it in the log, which gets one INFO
    line per retry with the attempt and SQLSTATE (never statement parameters). After
    MAX_ATTEMPTS runs the last conflict is raised for the caller to see.

    When the call is traced, each run is a span named after `operation` with its `attempt`
    (`taskservice.attempt`, 1 for the first run) and the run's statements under it: a retried
    transaction shows as consecutive runs, the failed ones marked with the error's type.
    """
    attempt = 1
    rerouted = False
    while True:
        try:
            with child_span(operation, {"taskservice.attempt": attempt}):
                return await unit()
        except DBAPIError as error:
            state = conflict_sqlstate(error)
            if state is None:
                if rerouted or not nothing_done(error):
                    raise
                # The node refused the work before doing any (a demoted primary, a server
                # shutting down): SQLAlchemy has discarded those connections, so the next run
                # connects afresh to whichever node takes writes now. Once only: a failover
                # still in progress reaches the caller as UNAVAILABLE, which it may retry.
                rerouted = True
                logger.info(
                    "%s: the database refused the work (%s); running it again on a new connection",
                    operation,
                    describe(error),
                    extra={"operation": operation, "attempt": attempt},
                )
                continue
            if attempt >= MAX_ATTEMPTS:
                logger.info(
                    "%s: %s on attempt %d of %d; giving up",
                    operation,
                    RETRYABLE_SQLSTATES[state],
                    attempt,
                    MAX_ATTEMPTS,
                    extra={"operation": operation, "attempt": attempt, "sqlstate": state},
                )
                raise
            delay = random.uniform(0, backoff_bound(attempt))  # noqa: S311 - jitter, not secrets
            logger.info(
                "%s: %s on attempt %d of %d; retrying in %.0f ms",
                operation,
                RETRYABLE_SQLSTATES[state],
                attempt,
                MAX_ATTEMPTS,
                delay * 1000,
                extra={"operation": operation, "attempt": attempt, "sqlstate": state},
            )
        await asyncio.sleep(delay)
        attempt += 1


def retries_conflicts(
    method: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Decorate a service method so a conflict abort re-runs the whole method.

    For methods whose writes are a single transaction, with nothing before it that must not
    happen twice (validation and reads are fine): the method is the unit of work.
    """
    operation = method.__qualname__

    @functools.wraps(method)
    async def retrying(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await run_retrying_conflicts(operation, lambda: method(*args, **kwargs))

    return retrying

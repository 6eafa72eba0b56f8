"""Brute-force throttling: events per key (an account, a client address) in a fixed window.

Counters live in the database (`throttle_counters`), so every replica shares them; each count is
one atomic upsert (a new window when the last one ended), the same statement on PostgreSQL and
SQLite. Two ways to use them:

- `check` then `count`, for failed logins: the check runs before bcrypt and refuses once the
  failures reach the limit; only a failure is counted, after its password check. So concurrent
  correct logins to one account are never refused for being concurrent; the price is that the
  attempts already in flight when the limit is reached still finish (each counted, so the
  overshoot is bounded by how many were in flight, not repeatable within the window).
- `attempt`, for registrations: every attempt is counted before the work, atomically with the
  check (the upsert returns the new count), so even a parallel burst stops exactly at the limit.

A refusal carries the time left in the window; refused attempts are not counted as failures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.engine import Database
from taskservice.db.models import ThrottleCounter
from taskservice.db.types import UTCDateTime
from taskservice.errors import ResourceExhausted
from taskservice.services.clock import Clock


@dataclass(frozen=True)
class Limit:
    """At most `maximum` attempts against `key` per window."""

    key: str
    maximum: int


def account_key(email: str) -> str:
    """The throttle key of an account, by a digest of its (normalised) email.

    Unknown emails get keys exactly like known ones: the throttle reveals nothing about which
    accounts exist, and the table never holds an address in clear.
    """
    return "account:" + hashlib.sha256(email.encode()).hexdigest()[:40]


def address_key(purpose: str, address: str | None) -> str | None:
    """The throttle key of a client address for `purpose` (login, register); None if unknown."""
    if not address:
        return None
    return f"{purpose}:{address}"[:100]


class Throttle:
    """Counts attempts and refuses those past their limit, with the time to wait."""

    def __init__(
        self,
        database: Database,
        window: timedelta,
        clock: Clock,
    ) -> None:
        self._db = database
        self._window = window
        self._clock = clock
        self._insert = (
            postgresql.insert if database.engine.dialect.name == "postgresql" else sqlite.insert
        )

    async def attempt(self, limits: Sequence[Limit], *, reason: str, message: str) -> None:
        """Count one attempt against every limit; raise ResourceExhausted if any is exceeded."""
        if not limits:
            return
        now = self._clock()
        retry_after: timedelta | None = None
        async with self._db.write() as session:
            for limit in sorted(limits, key=lambda item: item.key):  # one lock order: no deadlock
                count, window_start = await self._count(session, limit.key, now)
                if count > limit.maximum:
                    left = window_start + self._window - now
                    retry_after = left if retry_after is None else max(retry_after, left)
        if retry_after is not None:
            raise ResourceExhausted(reason, message, max(retry_after, timedelta(seconds=1)))

    async def check(self, limits: Sequence[Limit], *, reason: str, message: str) -> None:
        """Raise ResourceExhausted if any key's count in its current window reached its limit."""
        if not limits:
            return
        now = self._clock()
        maximum = {limit.key: limit.maximum for limit in limits}
        query = select(ThrottleCounter.key, ThrottleCounter.count, ThrottleCounter.window_start)
        async with self._db.rows() as connection:
            rows = (await connection.execute(query.where(ThrottleCounter.key.in_(maximum)))).all()
        waits = [
            start + self._window - now
            for key, count, start in rows
            if count >= maximum[key] and start + self._window > now
        ]
        if waits:
            raise ResourceExhausted(reason, message, max(max(waits), timedelta(seconds=1)))

    async def count(self, session: AsyncSession, keys: Sequence[str]) -> None:
        """Count one event against each key, in `session`'s transaction."""
        now = self._clock()
        for key in sorted(keys):  # one lock order: concurrent transactions queue, never deadlock
            await self._count(session, key, now)

    async def purge(self, session: AsyncSession, now: datetime) -> int:
        """Delete the counters whose window has ended; returns how many."""
        result = await session.execute(
            delete(ThrottleCounter).where(ThrottleCounter.window_start <= now - self._window)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def reset(self, session: AsyncSession, key: str) -> None:
        """Forget every attempt counted against `key`."""
        await session.execute(delete(ThrottleCounter).where(ThrottleCounter.key == key))

    async def _count(self, session: AsyncSession, key: str, now: object) -> tuple[int, object]:
        """Add one to `key`'s count in the current window (a new window if it ended)."""
        at = literal(now, UTCDateTime())
        ended = ThrottleCounter.window_start <= literal(now - self._window, UTCDateTime())
        statement = self._insert(ThrottleCounter).values(key=key, window_start=now, count=1)
        statement = statement.on_conflict_do_update(
            index_elements=[ThrottleCounter.key],
            set_={
                "count": case((ended, 1), else_=ThrottleCounter.count + 1),
                "window_start": case((ended, at), else_=ThrottleCounter.window_start),
            },
        ).returning(ThrottleCounter.count, ThrottleCounter.window_start)
        row = (await session.execute(statement)).one()
        return int(row[0]), row[1]

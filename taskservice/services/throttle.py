"""Brute-force throttling: attempts per key (an account, a client address) in a fixed window.

Counters live in the database (`throttle_counters`), so every replica shares them. An attempt is
counted *before* the expensive work it guards (bcrypt), by one atomic upsert that also reads the
new count back: concurrent attempts each get a distinct count, so no burst of parallel guesses
slips past the limit between a check and an increment. Past the limit the attempt is refused
with the time left in the window; refused attempts are counted too, which cannot lengthen a
fixed window. A success may give its attempt back (`release`) or clear the key (`reset`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, delete, literal, update
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

    async def release(self, session: AsyncSession, key: str) -> None:
        """Give back one attempt counted against `key` (it turned out to be a success)."""
        await session.execute(
            update(ThrottleCounter)
            .where(ThrottleCounter.key == key, ThrottleCounter.count > 0)
            .values(count=ThrottleCounter.count - 1)
        )

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

"""The current authorisation state of users, as every authenticated call needs it.

A token stays valid only while its user exists, is active, and still has the credential generation
(`token_version`) the token was issued at. Reading that row costs about a millisecond per call, so
on PostgreSQL it is cached in-process and invalidated across processes: every transaction that
changes a user's state also sends `NOTIFY auth_state_changed, '<user id>'`, delivered to every
process at commit, and the process that made the change forgets its own entry right after commit.

The cache is used only while the LISTEN connection is up (see `PgListener`); while it is down,
every call reads the row. SQLite has no cross-process channel, so there the cache is used only when
this process is the database's sole server (`sole_owner`: one worker), where every change to a
user's state is made, and forgotten, here. The one change another process can make there is the
`create-admin` CLI promoting a user, which reaches this cache within CACHE_TTL_SECONDS; nothing
outside a server revokes anything. Reads race with changes safely: an entry read before an
invalidation is never stored after it (a generation counter).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.engine import Database
from taskservice.db.models import USER_KIND_HUMAN, USER_KIND_SERVICE, User
from taskservice.db.notifications import PgListener
from taskservice.db.reads import Prepared

#: NOTIFY channel carrying the ids of users whose authorisation state changed.
CHANNEL = "auth_state_changed"
#: Entries kept at most; the least recently used go first.
CACHE_SIZE = 10_000
#: Seconds an entry is trusted even without a notification: a bound on any missed hint.
CACHE_TTL_SECONDS = 60.0
#: A user's authorisation state, as one plain row.
_STATE = Prepared(
    select(
        User.is_active, User.is_admin, User.token_version, User.kind, User.permissions, User.email
    ).where(User.id == bindparam("user_id"))
)


@dataclass(frozen=True)
class AuthState:
    """What authorisation needs to know about a user right now."""

    is_active: bool
    is_admin: bool
    token_version: int
    #: `human` or `service` (a service account: no role, only the permissions it was given).
    kind: str = USER_KIND_HUMAN
    #: A service account's permissions as stored; None for people.
    permissions: str | None = None
    #: The user's email (announced on change like the rest), so a caller's own user is known
    #: without reading it again.
    email: str = ""

    @property
    def is_service_account(self) -> bool:
        """Whether the user is a service account."""
        return self.kind == USER_KIND_SERVICE


class AuthStateStore:
    """Reads users' authorisation state, through a cache kept honest by notifications."""

    def __init__(self, database: Database, *, sole_owner: bool = False) -> None:
        self._database = database
        self._notifies = database.engine.dialect.name == "postgresql"
        self._sole_owner = sole_owner and not self._notifies
        self._cache: OrderedDict[int, tuple[float, AuthState]] = OrderedDict()
        self._generation = 0
        self._listener: PgListener | None = None
        # payload prefix -> (on_message, on_reset) of other caches kept by the same channel
        self._subscribers: dict[str, tuple[Callable[[str], None], Callable[[], None]]] = {}
        if self._notifies:
            self._listener = PgListener(
                database.engine.url, CHANNEL, self._on_notification, self.forget_all
            )

    @property
    def caching(self) -> bool:
        """Whether entries are cached now: while notifications can reach us, or as sole owner."""
        if self._sole_owner:
            return True
        return self._listener is not None and self._listener.connected

    async def start(self) -> None:
        """Start listening for changes made by any process."""
        if self._listener is not None:
            await self._listener.start()

    async def stop(self) -> None:
        """Stop listening; the cache is dropped."""
        if self._listener is not None:
            await self._listener.stop()

    async def get(self, user_id: int) -> AuthState | None:
        """The user's state, or None when the user does not exist."""
        caching = self.caching
        if caching:
            entry = self._cache.get(user_id)
            if entry is not None and entry[0] > time.monotonic():
                self._cache.move_to_end(user_id)
                return entry[1]
        generation = self._generation
        async with self._database.reads() as reader:
            row = await reader.first(_STATE, {"user_id": user_id})
        state = None if row is None else AuthState(*row)
        if state is not None and caching and generation == self._generation:
            self._cache[user_id] = (time.monotonic() + CACHE_TTL_SECONDS, state)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return state

    async def announce(self, session: AsyncSession, user_id: int) -> None:
        """Within a transaction that changes a user's state: tell every process at commit."""
        if self._notifies:
            await session.execute(select(func.pg_notify(CHANNEL, str(user_id))))

    def subscribe(
        self, prefix: str, on_message: Callable[[str], None], on_reset: Callable[[], None]
    ) -> None:
        """Let another cache (API keys) share the channel: payloads `<prefix>:<rest>` go to it.

        `on_reset` runs whenever this store forgets everything (the channel dropped or came back).
        """
        self._subscribers[prefix] = (on_message, on_reset)

    async def announce_other(self, session: AsyncSession, prefix: str, rest: str) -> None:
        """Within a transaction: tell every process's `prefix` subscriber `rest` at commit."""
        if self._notifies:
            await session.execute(select(func.pg_notify(CHANNEL, f"{prefix}:{rest}")))

    def forget(self, user_id: int) -> None:
        """Drop one entry (call after the changing transaction committed)."""
        self._generation += 1
        self._cache.pop(user_id, None)

    def forget_all(self) -> None:
        """Drop every entry, e.g. when notifications may have been missed."""
        self._generation += 1
        self._cache.clear()
        for _on_message, on_reset in self._subscribers.values():
            on_reset()

    def _on_notification(self, payload: str) -> None:
        if payload.isdigit():
            self.forget(int(payload))
            return
        prefix, _, rest = payload.partition(":")
        subscriber = self._subscribers.get(prefix)
        if subscriber is not None:
            subscriber[0](rest)
        else:
            self.forget_all()

"""API keys: long-lived credentials with which services act as a user (`Bearer tsk_...`).

Who manages which keys: every user their own, admins anyone's. A regular user naming another
user (or another user's key) gets NOT_FOUND exactly as for one that does not exist, so key
management tells nobody which users exist. Keys are managed only with a login's access token: a
call authenticated by a key cannot create or delete keys, so a leaked key cannot outlive its
revocation by minting a successor.

A key may be limited to a list of permissions when it is created (least privilege for machine
callers); the list is stored with the key and never widened, and on every call the key's
Principal carries it as `scope`, intersected with the user's role as of that call, so a user's
demotion takes the admin permissions from their keys at once.

Checking a key costs one keyed hash and nothing from the database once its row is cached, which
happens exactly when `AuthStateStore` caches (PostgreSQL while its LISTEN connection is up; the
sole server of a SQLite file): a deleted key is dropped here at once and from other processes by
NOTIFY (on the same channel as users' authorisation state), and everything is dropped whenever
that channel is down. The user behind the key is checked on every call through `AuthStateStore`,
so a deactivated or deleted user's keys stop at once. `last_use_time` is written at most once a
minute per key: the process remembers when it last wrote it, and the UPDATE itself only applies
when the stored time is a minute old, so replicas do not multiply the writes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, or_, select, update

from taskservice.db.engine import Database
from taskservice.db.models import API_KEY_DISPLAY_NAME_MAX_LENGTH, ApiKey, User
from taskservice.db.reads import Prepared
from taskservice.errors import (
    FieldViolation,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from taskservice.security.credentials import API_KEY_KIND, CredentialHasher, parse
from taskservice.services import audit
from taskservice.services.audit import AuditTrail
from taskservice.services.auth_state import CACHE_SIZE, CACHE_TTL_SECONDS, AuthStateStore
from taskservice.services.authorization import (
    Permission,
    check_permission_names,
    may,
    parse_stored,
    stored_permissions,
)
from taskservice.services.clock import Clock
from taskservice.services.pagination import PageTokens, page_size, page_size_violation
from taskservice.services.principal import Principal
from taskservice.services.validation import Violations, nul_violation, require_id

#: Most keys one user may hold.
MAX_KEYS_PER_USER = 100
#: How stale `last_use_time` may get.
LAST_USE_RESOLUTION = timedelta(minutes=1)
#: Payload prefix of key revocations on the auth-state channel.
NOTIFY_PREFIX = "api_key"
#: What authenticating a key needs of its row, found by the key's non-secret lookup id.
_KEY_BY_LOOKUP = Prepared(
    select(
        ApiKey.id,
        ApiKey.user_id,
        ApiKey.secret_hash,
        ApiKey.expire_time,
        ApiKey.last_use_time,
        ApiKey.permissions,
    ).where(ApiKey.lookup == bindparam("lookup"))
)


@dataclass(frozen=True)
class CreatedKey:
    """A new key and its secret, which is never available again."""

    key: ApiKey
    secret: str


@dataclass(frozen=True)
class ApiKeyPage:
    """One page of keys, newest first, and the token for the next (empty on the last)."""

    keys: list[ApiKey]
    next_page_token: str


@dataclass
class _Entry:
    """What authenticating a key needs from its row."""

    key_id: int
    user_id: int
    secret_hash: str
    expire_time: datetime | None
    last_use_time: datetime | None
    permissions: str | None


class ApiKeyService:
    """Creates, lists, revokes and checks API keys."""

    def __init__(
        self,
        database: Database,
        hasher: CredentialHasher,
        states: AuthStateStore,
        page_tokens: PageTokens,
        audit_trail: AuditTrail,
        clock: Clock,
    ) -> None:
        self._db = database
        self._hasher = hasher
        self._states = states
        self._page_tokens = page_tokens
        self._audit = audit_trail
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, _Entry]] = OrderedDict()
        self._generation = 0
        states.subscribe(NOTIFY_PREFIX, self._forget, self._forget_all)

    async def create(
        self,
        caller: Principal,
        user_id: int,
        display_name: str,
        expire_time: datetime | None,
        also: FieldViolation | None = None,
        permissions: Sequence[str] = (),
    ) -> CreatedKey:
        """A new key for `user_id` (0: the caller), returned with its secret.

        `also` is a bad field the edge found converting the request (an unreadable expire_time),
        reported together with every other. `permissions` (names, `tasks.read`) limit the key;
        none: not limited. They are not checked against the owner's role here: the role is
        applied on every call, so a key can never do more than its user may at that moment.
        """
        caller.require_login_credential()
        owner = self._owner(caller, user_id)
        problems = Violations()
        problems.add(also)
        problems.add(FieldViolation("user_id", "must not be negative") if user_id < 0 else None)
        name = display_name.strip()
        problems.add(
            nul_violation("display_name", name),
            FieldViolation(
                "display_name", f"must be 1 to {API_KEY_DISPLAY_NAME_MAX_LENGTH} characters"
            )
            if not 0 < len(name) <= API_KEY_DISPLAY_NAME_MAX_LENGTH
            else None,
        )
        now = self._clock()
        if expire_time is not None and expire_time <= now:
            problems.add(FieldViolation("expire_time", "must be in the future"))
        scope = _check_permissions(permissions, problems)
        problems.raise_if_any()
        minted = self._hasher.mint(API_KEY_KIND)
        async with self._db.write() as session:
            if await session.get(User, owner, with_for_update=True) is None:
                raise _user_not_found()
            held = await session.scalar(select(func.count()).where(ApiKey.user_id == owner))
            if (held or 0) >= MAX_KEYS_PER_USER:
                raise ResourceExhausted(
                    "API_KEY_LIMIT", f"a user may hold at most {MAX_KEYS_PER_USER} API keys"
                )
            key = ApiKey(
                user_id=owner,
                display_name=name,
                lookup=minted.lookup,
                secret_hash=minted.secret_hash,
                create_time=now,
                expire_time=expire_time,
                permissions=scope,
            )
            session.add(key)
            self._audit.record(
                session, audit.API_KEY_CREATED, actor_id=caller.user_id, target_user_id=owner
            )
        return CreatedKey(key, minted.text)

    async def list(
        self, caller: Principal, user_id: int, requested_size: int, token: str
    ) -> ApiKeyPage:
        """A user's keys, newest first, in keyset pages."""
        caller.require_login_credential()
        owner = self._owner(caller, user_id)
        scope = {"list": "api_keys", "user": owner}
        problems = Violations()
        problems.add(FieldViolation("user_id", "must not be negative") if user_id < 0 else None)
        problems.add(page_size_violation(requested_size))
        after = problems.check(lambda: self._page_tokens.open(token, scope))
        problems.raise_if_any()
        size = page_size(requested_size)
        query = (
            select(ApiKey).where(ApiKey.user_id == owner).order_by(ApiKey.id.desc()).limit(size + 1)
        )
        if after is not None:
            query = query.where(ApiKey.id < after)
        async with self._db.read() as session:
            if owner != caller.user_id and await session.get(User, owner) is None:
                raise _user_not_found()
            keys = list((await session.scalars(query)).all())
        return ApiKeyPage(*self._page_tokens.page(keys, size, scope, key=lambda row: row.id))

    async def delete(self, caller: Principal, key_id: int) -> None:
        """Revoke a key: refused from the next call on, on every replica."""
        caller.require_login_credential()
        require_id("id", key_id)
        async with self._db.write() as session:
            key = await session.get(ApiKey, key_id, with_for_update=True)
            if key is None or not may(caller, Permission.API_KEYS_MANAGE, key.user_id):
                raise NotFound("API_KEY_NOT_FOUND", "no API key has this id")
            lookup = key.lookup
            await session.execute(delete(ApiKey).where(ApiKey.id == key_id))
            self._audit.record(
                session, audit.API_KEY_REVOKED, actor_id=caller.user_id, target_user_id=key.user_id
            )
            await self._states.announce_other(session, NOTIFY_PREFIX, lookup)
        self._forget(lookup)

    async def authenticate(self, text: str) -> Principal:
        """The user a key stands for, at their current role; UNAUTHENTICATED otherwise."""
        presented = parse(text, API_KEY_KIND)
        if presented is None:
            raise Unauthenticated("API_KEY_INVALID", "API key is malformed")
        entry = await self._entry(presented.lookup)
        # A miss is compared against a stand-in too, so it costs what a wrong secret does.
        matches = self._hasher.matches(presented, None if entry is None else entry.secret_hash)
        if entry is None or not matches:
            raise Unauthenticated("API_KEY_INVALID", "API key is not valid")
        now = self._clock()
        if entry.expire_time is not None and entry.expire_time <= now:
            raise Unauthenticated("API_KEY_EXPIRED", "API key has expired")
        state = await self._states.get(entry.user_id)
        if state is None or not state.is_active:
            raise Unauthenticated(
                "API_KEY_REVOKED", "the user of this API key is deactivated or deleted"
            )
        if entry.last_use_time is None or now - entry.last_use_time >= LAST_USE_RESOLUTION:
            await self._touch(entry, now)
        return Principal(
            user_id=entry.user_id,
            is_admin=state.is_admin,
            via_api_key=True,
            scope=parse_stored(entry.permissions),
            granted=parse_stored(state.permissions) if state.is_service_account else None,
            email=state.email,
        )

    def _owner(self, caller: Principal, user_id: int) -> int:
        """Whose keys the call is about; NOT_FOUND for a caller naming someone else unallowed.

        NOT_FOUND rather than PERMISSION_DENIED: key management must not tell who exists.
        """
        owner = user_id or caller.user_id
        if not may(caller, Permission.API_KEYS_MANAGE, owner):
            raise _user_not_found()
        return owner

    async def _entry(self, lookup: str) -> _Entry | None:
        caching = self._states.caching
        if caching:
            cached = self._cache.get(lookup)
            if cached is not None and cached[0] > time.monotonic():
                self._cache.move_to_end(lookup)
                return cached[1]
        generation = self._generation
        async with self._db.reads() as reader:
            row = await reader.first(_KEY_BY_LOOKUP, {"lookup": lookup})
        entry = None if row is None else _Entry(*row)
        if entry is not None and caching and generation == self._generation:
            self._cache[lookup] = (time.monotonic() + CACHE_TTL_SECONDS, entry)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return entry

    async def _touch(self, entry: _Entry, now: datetime) -> None:
        """Record a use, unless some replica did within the last minute."""
        entry.last_use_time = now
        async with self._db.statement() as connection:
            await connection.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == entry.key_id,
                    or_(
                        ApiKey.last_use_time.is_(None),
                        ApiKey.last_use_time <= now - LAST_USE_RESOLUTION,
                    ),
                )
                .values(last_use_time=now)
            )

    def _forget(self, lookup: str) -> None:
        self._generation += 1
        self._cache.pop(lookup, None)

    def _forget_all(self) -> None:
        self._generation += 1
        self._cache.clear()


def _check_permissions(names: Sequence[str], problems: Violations) -> str | None:
    """The stored form of a new key's permissions (None: not limited), noting bad entries."""
    chosen = check_permission_names(names, problems)
    return stored_permissions(chosen) if chosen else None


def _user_not_found() -> NotFound:
    return NotFound("USER_NOT_FOUND", "no user has this id")

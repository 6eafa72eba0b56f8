"""Registration, login, refresh tokens, password changes, and turning a credential into a Principal.

`authenticate` takes whatever a caller sent as `authorization: Bearer <value>`, from any edge: an
API key (`tsk_...`, see `api_keys`) or a JWT access token. Logins and anonymous registrations are
throttled (see `throttle`) before any bcrypt work, with the same answer for unknown accounts as
for known ones. Refresh tokens rotate within a family; presenting a retired one revokes the family.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.engine import Database
from taskservice.db.models import USER_KIND_SERVICE, RefreshToken, User
from taskservice.errors import (
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from taskservice.security.credentials import (
    REFRESH_TOKEN_KIND,
    CredentialHasher,
    looks_like_api_key,
    parse,
)
from taskservice.security.passwords import PasswordHasher
from taskservice.security.tokens import IssuedToken, TokenCodec
from taskservice.services import audit
from taskservice.services.api_keys import ApiKeyService
from taskservice.services.audit import AuditTrail, log_event
from taskservice.services.auth_state import AuthStateStore
from taskservice.services.authorization import Permission, authorize
from taskservice.services.clock import Clock
from taskservice.services.principal import Principal
from taskservice.services.throttle import Limit, Throttle, account_key, address_key
from taskservice.services.users import email_taken
from taskservice.services.validation import (
    FieldViolation,
    email_violation,
    new_password_violation,
    normalize_email,
    raise_if,
)

#: The one message for every failed login, whatever the cause.
LOGIN_FAILED = "email or password is incorrect, or the account is deactivated"
#: The one message for every refresh token that cannot be used (reuse aside).
REFRESH_REFUSED = "refresh token is not valid: it is unknown, expired or revoked"
#: Longest refresh token accepted in a request.
REFRESH_TOKEN_MAX_LENGTH = 200


@dataclass(frozen=True)
class AuthPolicy:
    """Lifetimes and throttle limits, from the settings."""

    refresh_lifetime: timedelta
    max_failures_per_account: int
    max_failures_per_address: int
    max_registrations_per_address: int


@dataclass(frozen=True)
class SignedIn:
    """A user together with a fresh access token and refresh token for them."""

    user: User
    token: IssuedToken
    refresh_token: str = ""


@dataclass(frozen=True)
class Refreshed:
    """What RefreshToken returns: a new access token and the family's next refresh token."""

    token: IssuedToken
    refresh_token: str


class AuthService:
    """Accounts and credentials."""

    def __init__(
        self,
        database: Database,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        states: AuthStateStore,
        *,
        credentials: CredentialHasher,
        api_keys: ApiKeyService,
        throttle: Throttle,
        audit_trail: AuditTrail,
        policy: AuthPolicy,
        clock: Clock,
        on_throttled: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._db = database
        self._hasher = hasher
        self._tokens = tokens
        self._states = states
        self._credentials = credentials
        self._api_keys = api_keys
        self._throttle = throttle
        self._audit = audit_trail
        self._policy = policy
        self._clock = clock
        self._on_throttled = on_throttled

    async def authenticate(self, bearer: str) -> Principal:
        """The caller a bearer value (API key or access token) stands for, if valid and live."""
        if looks_like_api_key(bearer):
            return await self._api_keys.authenticate(bearer)
        claims = self._tokens.verify(bearer)
        state = await self._states.get(claims.user_id)
        if state is None:
            raise _user_gone()
        if not state.is_active:
            raise Unauthenticated("TOKEN_REVOKED", "the user of this access token is deactivated")
        if state.token_version != claims.token_version:
            raise Unauthenticated(
                "TOKEN_REVOKED",
                "access token was revoked by a password or role change; log in again",
            )
        return Principal(user_id=claims.user_id, is_admin=state.is_admin)

    async def register(
        self,
        caller: Principal | None,
        email: str,
        password: str,
        is_admin: bool,
        client_address: str | None = None,
    ) -> SignedIn:
        """Create a user. Only an admin may create an admin; anyone may create a regular user.

        Anonymous registrations are throttled per client address (admins' are not).
        """
        if is_admin:  # creating an admin is managing users
            _admin_creation_needs_users_manage(caller)
        if caller is None and (key := address_key("register", client_address)) is not None:
            await self._throttled(
                self._throttle.attempt(
                    [Limit(key, self._policy.max_registrations_per_address)],
                    reason="REGISTRATION_THROTTLED",
                    message="too many registrations from this address; retry later",
                ),
                audit.REGISTRATION_THROTTLED,
            )
        normalized, bad_email = email_violation("email", email)
        raise_if(bad_email, new_password_violation("password", password))
        password_hash = await self._hasher.hash(password)
        user = User(email=normalized, password_hash=password_hash, is_admin=is_admin)
        try:
            async with self._db.write() as session:
                if await session.scalar(select(User.id).where(User.email == normalized)):
                    raise email_taken()
                session.add(user)
                await session.flush()
                refresh = self._start_family(session, user)
                self._audit.record(
                    session,
                    audit.USER_REGISTERED,
                    actor_id=caller.user_id if caller is not None else user.id,
                    target_user_id=user.id,
                )
        except IntegrityError:  # a concurrent registration won the race for this email
            raise email_taken() from None
        return SignedIn(user, self._tokens.issue(user.id, user.token_version), refresh)

    async def login(self, email: str, password: str, client_address: str | None = None) -> SignedIn:
        """Exchange credentials for tokens; every failure looks and takes the same.

        Past the limit of recent failures for the account or the client address, the attempt is
        refused before bcrypt runs, without checking the password at all. A failure is counted
        against both, in the transaction that audits it; a success clears the account's count.
        """
        raise_if(
            None if email.strip() else FieldViolation("email", "required"),
            None if password else FieldViolation("password", "required"),
        )
        try:
            normalized = normalize_email(email)
        except ValueError:
            normalized = None
        account = account_key(normalized or email.strip().lower())
        address = address_key("login", client_address)
        limits = [Limit(account, self._policy.max_failures_per_account)]
        if address is not None:
            limits.append(Limit(address, self._policy.max_failures_per_address))
        await self._throttled(
            self._throttle.check(
                limits,
                reason="LOGIN_THROTTLED",
                message="too many failed logins; retry after the delay given",
            ),
            audit.LOGIN_THROTTLED,
        )
        user = None
        if normalized is not None:
            async with self._db.read() as session:
                user = await session.scalar(select(User).where(User.email == normalized))
        if user is not None and user.kind == USER_KIND_SERVICE:
            raise no_password()
        matches = await self._hasher.verify(password, None if user is None else user.password_hash)
        if user is None or not matches or not user.is_active:
            async with self._db.write() as session:
                await self._throttle.count(session, [limit.key for limit in limits])
                self._audit.record(
                    session,
                    audit.LOGIN_FAILED,
                    actor_id=None,
                    target_user_id=None if user is None else user.id,
                    outcome=audit.FAILURE,
                )
            raise Unauthenticated("LOGIN_FAILED", LOGIN_FAILED)
        async with self._db.write() as session:
            await self._throttle.reset(session, account)
            refresh = self._start_family(session, user)
            self._audit.record(
                session, audit.LOGIN_SUCCEEDED, actor_id=user.id, target_user_id=user.id
            )
        return SignedIn(user, self._tokens.issue(user.id, user.token_version), refresh)

    async def refresh(self, refresh_token: str) -> Refreshed:
        """Rotate a refresh token: a new access token and the family's next refresh token.

        The presented token is retired by a conditional UPDATE (`use_time IS NULL`), so of two
        concurrent refreshes exactly one retires it; the other has presented a retired token,
        which is reuse: the whole family is revoked.
        """
        if not refresh_token:
            raise_if(FieldViolation("refresh_token", "required"))
        presented = parse(refresh_token, REFRESH_TOKEN_KIND)
        if presented is None:
            raise Unauthenticated("REFRESH_TOKEN_INVALID", REFRESH_REFUSED)
        now = self._clock()
        outcome = "invalid"
        async with self._db.write() as session:
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.lookup == presented.lookup)
            )
            if not self._credentials.matches(presented, None if row is None else row.secret_hash):
                row = None
            if row is None or row.revoke_time is not None or row.expire_time <= now:
                outcome = "invalid"
            elif row.use_time is not None:
                outcome = "reused"
            else:
                user = await session.get(User, row.user_id)
                if user is not None and user.kind == USER_KIND_SERVICE:
                    raise no_password()
                if user is None or not user.is_active or user.token_version != row.token_version:
                    outcome = "invalid"
                elif not await self._retire(session, row.id, now):
                    outcome = "reused"
                else:
                    outcome = "ok"
                    next_token = self._next_in_family(session, row.family, user)
                    issued = self._tokens.issue(user.id, user.token_version)
            if outcome == "reused" and row is not None:
                await self._revoke_family(session, row.family, now)
                self._audit.record(
                    session,
                    audit.REFRESH_TOKEN_REUSED,
                    actor_id=None,
                    target_user_id=row.user_id,
                    outcome=audit.DENIED,
                )
        if outcome == "reused":
            raise Unauthenticated(
                "REFRESH_TOKEN_REUSED",
                "refresh token was already used: its whole family is revoked; log in again",
            )
        if outcome != "ok":
            raise Unauthenticated("REFRESH_TOKEN_INVALID", REFRESH_REFUSED)
        return Refreshed(issued, next_token)

    async def logout(self, refresh_token: str) -> None:
        """Revoke the family of a refresh token; unknown or revoked tokens are fine (RFC 7009)."""
        _require_refresh_token(refresh_token)
        presented = parse(refresh_token, REFRESH_TOKEN_KIND)
        if presented is None:
            return
        async with self._db.write() as session:
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.lookup == presented.lookup)
            )
            if row is None or not self._credentials.matches(presented, row.secret_hash):
                return
            if row.revoke_time is None:
                await self._revoke_family(session, row.family, self._clock())
                self._audit.record(
                    session, audit.LOGGED_OUT, actor_id=row.user_id, target_user_id=row.user_id
                )

    async def purge_expired(self) -> int:
        """Delete refresh tokens past their expiry and throttle counters past their window.

        An expired token is refused anyway; once deleted, replaying it is merely unknown rather
        than reuse, which changes nothing for its family (expired too, or revoked).
        """
        now = self._clock()
        async with self._db.write() as session:
            result = await session.execute(
                delete(RefreshToken)
                .where(RefreshToken.expire_time <= now)
                .execution_options(synchronize_session=False)
            )
            counters = await self._throttle.purge(session, now)
        return int(result.rowcount or 0) + counters  # type: ignore[attr-defined]

    async def change_password(
        self, caller: Principal, current_password: str, new_password: str
    ) -> IssuedToken:
        """Set a new password and revoke every token and refresh family issued before it.

        Checking `current_password` is a password oracle for whoever holds an access token or
        API key, so failures count against the account's failed-login limit (the same counter
        Login uses: the two together give no more guesses than Login alone), and past it the
        attempt is refused before bcrypt runs. A success clears the count, as a login does.
        """
        if caller.is_service_account:
            raise no_password()
        raise_if(new_password_violation("new_password", new_password))
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(User.password_hash, User.email).where(User.id == caller.user_id)
                )
            ).first()
        stored, email = (None, None) if row is None else row
        account = account_key(email or f"user:{caller.user_id}")
        await self._throttled(
            self._throttle.check(
                [Limit(account, self._policy.max_failures_per_account)],
                reason="PASSWORD_CHANGE_THROTTLED",
                message="too many failed password checks; retry after the delay given",
            ),
            audit.PASSWORD_CHANGE_THROTTLED,
        )
        if not await self._hasher.verify(current_password, stored):
            async with self._db.write() as session:
                await self._throttle.count(session, [account])
                self._audit.record(
                    session,
                    audit.PASSWORD_CHANGE_FAILED,
                    actor_id=caller.user_id,
                    target_user_id=caller.user_id,
                    outcome=audit.FAILURE,
                )
            raise Unauthenticated("PASSWORD_INCORRECT", "current_password is incorrect")
        password_hash = await self._hasher.hash(new_password)
        async with self._db.write() as session:
            user = await session.get(User, caller.user_id, with_for_update=True)
            if user is None:
                raise _user_gone()
            if user.password_hash != stored:  # changed since it was checked: check again
                raise Unauthenticated("PASSWORD_INCORRECT", "current_password is incorrect")
            user.password_hash = password_hash
            await self._throttle.reset(session, account)
            # Ends every access token and every refresh family issued at the older version.
            user.token_version += 1
            version = user.token_version
            await self._states.announce(session, caller.user_id)
            self._audit.record(
                session,
                audit.PASSWORD_CHANGED,
                actor_id=caller.user_id,
                target_user_id=caller.user_id,
            )
        self._states.forget(caller.user_id)
        return self._tokens.issue(caller.user_id, version)

    async def _throttled(self, gate: Awaitable[None], kind: str) -> None:
        """Pass `gate`; when it refuses, log and count the refusal, then raise it."""
        try:
            await gate
        except ResourceExhausted:
            self._on_throttled(kind)
            log_event(
                kind,
                actor_id=None,
                target_user_id=None,
                outcome=audit.DENIED,
                request_id=self._audit.request_id(),
            )
            raise

    def _start_family(self, session: AsyncSession, user: User) -> str:
        """The first refresh token of a new family (a login), added to `session`."""
        family = self._credentials.mint(REFRESH_TOKEN_KIND).lookup
        return self._next_in_family(session, family, user)

    def _next_in_family(self, session: AsyncSession, family: str, user: User) -> str:
        minted = self._credentials.mint(REFRESH_TOKEN_KIND)
        now = self._clock()
        session.add(
            RefreshToken(
                user_id=user.id,
                family=family,
                lookup=minted.lookup,
                secret_hash=minted.secret_hash,
                token_version=user.token_version,
                create_time=now,
                expire_time=now + self._policy.refresh_lifetime,
            )
        )
        return minted.text

    async def _retire(self, session: AsyncSession, token_id: int, now: object) -> bool:
        """Mark a token used, unless someone did first; whether this call did."""
        result = await session.execute(
            update(RefreshToken)
            .where(
                RefreshToken.id == token_id,
                RefreshToken.use_time.is_(None),
                RefreshToken.revoke_time.is_(None),
            )
            .values(use_time=now)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    async def _revoke_family(self, session: AsyncSession, family: str, now: object) -> None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family == family, RefreshToken.revoke_time.is_(None))
            .values(revoke_time=now)
            .execution_options(synchronize_session=False)
        )


def _require_refresh_token(refresh_token: str) -> None:
    if not refresh_token:
        raise_if(FieldViolation("refresh_token", "required"))
    if len(refresh_token) > REFRESH_TOKEN_MAX_LENGTH:
        raise_if(
            FieldViolation(
                "refresh_token", f"must be at most {REFRESH_TOKEN_MAX_LENGTH} characters"
            )
        )


def _user_gone() -> Unauthenticated:
    return Unauthenticated("TOKEN_REVOKED", "the user of this access token no longer exists")


def _admin_creation_needs_users_manage(caller: Principal | None) -> None:
    """Refuse to create an admin unless the caller holds `users.manage`."""

    def refused(metadata: dict[str, str]) -> PermissionDenied:
        return PermissionDenied(
            "ADMIN_REQUIRED", "only an administrator may create administrators", metadata
        )

    if caller is None:
        raise refused({"permission": Permission.USERS_MANAGE.value})
    authorize(caller, Permission.USERS_MANAGE, otherwise=refused)


def no_password() -> FailedPrecondition:
    """The refusal of Login, RefreshToken and ChangePassword to a service account.

    A service account has no password and authenticates with API keys only: telling its caller
    so plainly saves an operator from guessing at a password it never had.
    """
    return FailedPrecondition(
        "SERVICE_ACCOUNT_HAS_NO_PASSWORD",
        "service accounts have no password: they call with API keys an admin creates for them",
    )

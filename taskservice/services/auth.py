"""Registration, login, password changes, and turning an access token into a Principal."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from taskservice.db.engine import Database
from taskservice.db.models import User
from taskservice.errors import PermissionDenied, Unauthenticated
from taskservice.security.passwords import PasswordHasher
from taskservice.security.tokens import IssuedToken, TokenCodec
from taskservice.services.auth_state import AuthStateStore
from taskservice.services.principal import Principal
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


@dataclass(frozen=True)
class SignedIn:
    """A user together with a fresh access token for them."""

    user: User
    token: IssuedToken


class AuthService:
    """Accounts and credentials."""

    def __init__(
        self,
        database: Database,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        states: AuthStateStore,
    ) -> None:
        self._db = database
        self._hasher = hasher
        self._tokens = tokens
        self._states = states

    async def authenticate(self, access_token: str) -> Principal:
        """The caller a token stands for, if the token is valid and not revoked."""
        claims = self._tokens.verify(access_token)
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
        self, caller: Principal | None, email: str, password: str, is_admin: bool
    ) -> SignedIn:
        """Create a user. Only an admin may create an admin; anyone may create a regular user."""
        if is_admin and (caller is None or not caller.is_admin):
            raise PermissionDenied(
                "ADMIN_REQUIRED", "only an administrator may create administrators"
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
        except IntegrityError:  # a concurrent registration won the race for this email
            raise email_taken() from None
        return SignedIn(user, self._tokens.issue(user.id, user.token_version))

    async def login(self, email: str, password: str) -> SignedIn:
        """Exchange credentials for a token; every failure looks and takes the same."""
        raise_if(
            None if email.strip() else FieldViolation("email", "required"),
            None if password else FieldViolation("password", "required"),
        )
        try:
            normalized = normalize_email(email)
        except ValueError:
            normalized = None
        user = None
        if normalized is not None:
            async with self._db.read() as session:
                user = await session.scalar(select(User).where(User.email == normalized))
        matches = await self._hasher.verify(password, None if user is None else user.password_hash)
        if user is None or not matches or not user.is_active:
            raise Unauthenticated("LOGIN_FAILED", LOGIN_FAILED)
        return SignedIn(user, self._tokens.issue(user.id, user.token_version))

    async def change_password(
        self, caller: Principal, current_password: str, new_password: str
    ) -> IssuedToken:
        """Set a new password and revoke every token issued before it."""
        raise_if(new_password_violation("new_password", new_password))
        async with self._db.read() as session:
            stored = await session.scalar(
                select(User.password_hash).where(User.id == caller.user_id)
            )
        if not await self._hasher.verify(current_password, stored):
            raise Unauthenticated("PASSWORD_INCORRECT", "current_password is incorrect")
        password_hash = await self._hasher.hash(new_password)
        async with self._db.write() as session:
            user = await session.get(User, caller.user_id, with_for_update=True)
            if user is None:
                raise _user_gone()
            if user.password_hash != stored:  # changed since it was checked: check again
                raise Unauthenticated("PASSWORD_INCORRECT", "current_password is incorrect")
            user.password_hash = password_hash
            user.token_version += 1
            version = user.token_version
            await self._states.announce(session, caller.user_id)
        self._states.forget(caller.user_id)
        return self._tokens.issue(caller.user_id, version)


def _user_gone() -> Unauthenticated:
    return Unauthenticated("TOKEN_REVOKED", "the user of this access token no longer exists")

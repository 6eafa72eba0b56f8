"""Oracles of the credential RPCs: API keys, refresh tokens, Logout and the audit trail.

Restated from the proto comments: who may manage which keys (their own; admins anyone's; another
user's reads like a missing one), display names, expiry and permissions (each a grantable one,
at most once, echoed in the enum's order), key pages newest first; refresh
tokens rotating within a family, a retired one revoking its family, a user's password change,
deactivation, demotion or deletion ending their families; Logout accepting anything non-empty
up to 200 characters. Whether an audit filter is valid is asked of the server's own parser (as
`email_or_none` asks the server's email rule): the filter language is tested on its own in
test_filtering; here the point is what the list answers around it.

The keys created here are not used to call: what the fuzz's standing keys (a service account's,
the admin's keys limited to `tasks.read_all` or `tasks.write_all`) may do is modelled with the
task and list calls (fuzz_model), and test_scoped_api_keys covers scoped keys in general.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from taskservice.errors import InvalidArgument
from taskservice.services.audit import AUDIT_FILTER_SCHEMA
from taskservice.services.filtering import canonical, parse
from tests.fuzz_rules import (
    DENIED,
    EXHAUSTED,
    INVALID,
    NOT_FOUND,
    UNAUTHENTICATED,
    Conditions,
    Credential,
    Expect,
    IssuedPage,
    UserRow,
    check,
    effective_page_size,
    only,
    pair,
    permission_problems,
    stored_time,
    timestamp_problem,
    to_datetime,
)

DISPLAY_NAME_MAX = 100
MAX_KEYS_PER_USER = 100
REFRESH_TOKEN_MAX = 200
#: Expiry times this close to the present may be judged either way (the clocks are not the model's).
_NOW_SLACK = timedelta(minutes=1)
AUDIT_EVENTS = frozenset(
    {
        "login_succeeded",
        "login_failed",
        "user_registered",
        "password_changed",
        "password_change_failed",
        "refresh_token_reused",
        "logged_out",
        "api_key_created",
        "api_key_revoked",
        "user_role_changed",
        "user_deactivated",
        "user_activated",
        "user_deleted",
        "task_admin_action",
        "permission_missing",
    }
)


@dataclass
class KeyRow:
    """An API key as the model knows it."""

    id: int
    user_id: int
    display_name: str
    expire_time: tuple[int, int] | None
    #: The permissions it was limited to (enum numbers, in the enum's order); (): not limited.
    permissions: tuple[int, ...] = ()


@dataclass
class RefreshRow:
    """A refresh token the server issued: its family, user, generation, and whether it was used."""

    family: int
    user_id: int
    version: int
    used: bool = False


@dataclass
class CredentialState:
    """What the credential oracles remember."""

    api_keys: dict[int, KeyRow] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshRow] = field(default_factory=dict)
    revoked_families: set[int] = field(default_factory=set)
    families: int = 0


class CredentialOracles:
    """The ApiKeyService, AuditService, RefreshToken and Logout half of the model."""

    users: dict[int, UserRow]
    pages: list[IssuedPage]
    cred: CredentialState

    def caller(self, credential: Credential) -> UserRow | None:
        """Supplied by Model."""
        raise NotImplementedError

    def add_token(self, user_id: int, token: str) -> Credential:
        """Supplied by Model."""
        raise NotImplementedError

    def _authenticated(self, credential: Credential) -> tuple[UserRow | None, Expect | None]:
        raise NotImplementedError

    def _page_position(
        self, token: str, scope: tuple[object, ...], conditions: Conditions
    ) -> object:
        raise NotImplementedError

    def _record_page(
        self, response: Any, scope: tuple[object, ...], ids: list[int], after: object
    ) -> None:
        raise NotImplementedError

    def credential_oracles(self) -> dict[str, Any]:
        """Method name -> oracle."""
        return {
            "/taskservice.v1.AuthService/RefreshToken": self._refresh_token,
            "/taskservice.v1.AuthService/Logout": self._logout,
            "/taskservice.v1.ApiKeyService/CreateApiKey": self._create_api_key,
            "/taskservice.v1.ApiKeyService/ListApiKeys": self._list_api_keys,
            "/taskservice.v1.ApiKeyService/DeleteApiKey": self._delete_api_key,
            "/taskservice.v1.AuditService/ListAuditEvents": self._list_audit_events,
        }

    # --- refresh tokens ------------------------------------------------------------------------

    def add_refresh_token(self, user_id: int, token: str, family: int | None = None) -> None:
        """Hold a refresh token an OK answer issued (a new family unless one is given)."""
        check(token.startswith("tsr_"), f"refresh token {token[:8]!r}... lacks the tsr_ prefix")
        check(token not in self.cred.refresh_tokens, "a refresh token was issued twice")
        if family is None:
            self.cred.families += 1
            family = self.cred.families
        self.cred.refresh_tokens[token] = RefreshRow(family, user_id, self.users[user_id].version)

    def _refresh_token(self, credential: Credential, request: Any) -> Expect:
        conditions = Conditions()
        token = request.refresh_token
        if not token:
            conditions.add(INVALID, "refresh_token is required", "refresh_token")
            return conditions.expect(lambda response: None)
        row = self.cred.refresh_tokens.get(token)
        if row is None:
            return only(UNAUTHENTICATED, "a refresh token the server never issued")
        if row.family in self.cred.revoked_families:
            return only(UNAUTHENTICATED, "its family was revoked")
        if row.used:
            # Refused, and the whole family goes with it: the answer is certain, so apply now.
            self.cred.revoked_families.add(row.family)
            return only(UNAUTHENTICATED, "a retired token presented again (reuse)")
        user = self.users.get(row.user_id)
        if user is None or not user.is_active or user.version != row.version:
            return only(UNAUTHENTICATED, "its user is gone, deactivated or changed credentials")

        def on_ok(response: Any) -> None:
            check(response.token_type == "Bearer", f"token_type {response.token_type!r}")
            check(response.expires_in > 0, f"expires_in {response.expires_in}")
            row.used = True
            self.add_refresh_token(row.user_id, response.refresh_token, row.family)
            self.add_token(row.user_id, response.access_token)

        return conditions.expect(on_ok)

    def _logout(self, credential: Credential, request: Any) -> Expect:
        conditions = Conditions()
        token = request.refresh_token
        if not token or len(token) > REFRESH_TOKEN_MAX:
            conditions.add(INVALID, "refresh_token empty or over 200 characters", "refresh_token")
        row = self.cred.refresh_tokens.get(token)

        def on_ok(response: Any) -> None:
            if row is not None:
                self.cred.revoked_families.add(row.family)

        return conditions.expect(on_ok)

    # --- API keys ------------------------------------------------------------------------------

    def _key_owner(self, caller: UserRow, user_id: int, conditions: Conditions) -> int:
        if user_id < 0:
            conditions.add(INVALID, "negative user_id", "user_id")
        owner = user_id or caller.id
        if owner != caller.id and (not caller.is_admin or owner not in self.users):
            conditions.add(NOT_FOUND, "another user's (for a regular user) or a missing user")
        return owner

    def _create_api_key(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        owner = self._key_owner(caller, request.user_id, conditions)
        name = request.display_name.strip()
        if "\x00" in name or not 0 < len(name) <= DISPLAY_NAME_MAX:
            conditions.add(INVALID, "display_name empty, too long or with NUL", "display_name")
        expire_time = None
        if request.HasField("expire_time"):
            if (problem := timestamp_problem(request.expire_time)) is not None:
                conditions.add(INVALID, f"expire_time {problem}", "expire_time")
            else:
                expire_time = stored_time(request.expire_time)
                when = to_datetime(expire_time)
                now = datetime.now(UTC)
                if when <= now - _NOW_SLACK:
                    conditions.add(INVALID, "expire_time in the past", "expire_time")
                elif when <= now + _NOW_SLACK:
                    conditions.perhaps(INVALID, "expire_time about now", "expire_time")
        permissions = permission_problems(request.permissions, conditions)
        held = sum(1 for key in self.cred.api_keys.values() if key.user_id == owner)
        if held >= MAX_KEYS_PER_USER:
            conditions.add(EXHAUSTED, "the user holds 100 keys")

        def on_ok(response: Any) -> None:
            key = response.api_key
            check(key.id > 0 and key.id not in self.cred.api_keys, f"new key has id {key.id}")
            check(key.user_id == owner, f"key for {key.user_id}, expected {owner}")
            check(key.display_name == name, f"display_name {key.display_name!r}")
            check(response.secret.startswith(key.prefix + "_"), "secret does not start with prefix")
            check(len(response.secret) == 64, f"a secret of {len(response.secret)} characters")
            got_expiry = pair(key.expire_time) if key.HasField("expire_time") else None
            check(got_expiry == expire_time, f"expire_time {got_expiry}, expected {expire_time}")
            got = tuple(key.permissions)
            check(got == permissions, f"permissions {got}, expected {permissions}")
            self.cred.api_keys[key.id] = KeyRow(key.id, owner, name, expire_time, permissions)

        return conditions.expect(on_ok)

    def _list_api_keys(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        owner = self._key_owner(caller, request.user_id, conditions)
        if request.page_size < 0:
            conditions.add(INVALID, "negative page_size", "page_size")
        scope: tuple[object, ...] = ("api_keys", owner)
        after = self._page_position(request.page_token, scope, conditions)

        def on_ok(response: Any) -> None:
            ids = [key.id for key in response.api_keys]
            remaining = sorted(
                (
                    key.id
                    for key in self.cred.api_keys.values()
                    if key.user_id == owner and (after is None or key.id < after)  # type: ignore[operator]
                ),
                reverse=True,
            )
            size = effective_page_size(request.page_size)
            check(len(ids) <= size, f"a page of {len(ids)} for page_size {request.page_size}")
            check(ids == remaining[: len(ids)], f"page {ids} is not the start of {remaining}")
            check(
                bool(response.next_page_token) or len(ids) == len(remaining),
                f"no next_page_token after {ids} while {remaining} remain",
            )
            for key in response.api_keys:
                row = self.cred.api_keys[key.id]
                check(key.display_name == row.display_name, f"key {key.id}'s name changed")
                check(
                    tuple(key.permissions) == row.permissions,
                    f"key {key.id}'s permissions {list(key.permissions)}, not {row.permissions}",
                )
                check(key.user_id == owner, f"key {key.id} of user {key.user_id} listed")
            self._record_page(response, scope, ids, after)

        return conditions.expect(on_ok)

    def _delete_api_key(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        key = self.cred.api_keys.get(request.id)
        if request.id <= 0:
            conditions.add(INVALID, "id not positive", "id")
        elif key is None or (key.user_id != caller.id and not caller.is_admin):
            conditions.add(NOT_FOUND, "no such key, or another user's")

        def on_ok(response: Any) -> None:
            del self.cred.api_keys[request.id]

        return conditions.expect(on_ok)

    def forget_user_credentials(self, user_id: int) -> None:
        """A deleted user's keys go with them (their refresh tokens die by the user check)."""
        self.cred.api_keys = {k: v for k, v in self.cred.api_keys.items() if v.user_id != user_id}

    # --- audit ---------------------------------------------------------------------------------

    def _list_audit_events(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if not caller.is_admin:
            conditions.add(DENIED, "admin-only method called by a regular user")
        if request.page_size < 0:
            conditions.add(INVALID, "negative page_size", "page_size")
        meaning: str | None = None
        try:
            meaning = canonical(parse(request.filter, AUDIT_FILTER_SCHEMA))
        except InvalidArgument:
            conditions.add(INVALID, "filter does not parse", "filter")
        scope: tuple[object, ...] = ("audit_events", meaning)
        after = (
            self._page_position(request.page_token, scope, conditions)
            if meaning is not None
            else None
        )
        if meaning is None and request.page_token:
            conditions.may_name("page_token", "checked against a filter that does not parse")

        def on_ok(response: Any) -> None:
            ids = [event.id for event in response.audit_events]
            check(ids == sorted(ids, reverse=True), f"events {ids} are not newest first")
            check(len(set(ids)) == len(ids), f"an event listed twice in {ids}")
            if after is not None:
                check(all(i < after for i in ids), f"page {ids} does not continue after {after}")  # type: ignore[operator]
            size = effective_page_size(request.page_size)
            check(len(ids) <= size, f"a page of {len(ids)} for page_size {request.page_size}")
            for event in response.audit_events:
                check(event.event in AUDIT_EVENTS, f"unknown event {event.event!r}")
                check(
                    event.outcome in {"success", "failure", "denied"}, f"outcome {event.outcome!r}"
                )
            self._record_page(response, scope, ids, after)

        return conditions.expect(on_ok)

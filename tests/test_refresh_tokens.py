"""Refresh tokens: rotation within a family, reuse detection, logout, and revocation."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from sqlalchemy import func, select

from taskservice.db.models import RefreshToken, ThrottleCounter
from taskservice.server import Application
from taskservice.v1 import audit_service_pb2 as audit_pb
from taskservice.v1 import auth_service_pb2 as pb
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import ManualClock, Stubs
from tests.helpers import PASSWORD, Account, bearer, fails, make_admin, register
from tests.test_access_log import log_lines  # noqa: F401 - a fixture

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def _login(stubs: Stubs, account: Account) -> pb.LoginResponse:
    return await stubs.auth.Login(pb.LoginRequest(email=account.user.email, password=PASSWORD))


async def _refresh(stubs: Stubs, token: str) -> pb.RefreshTokenResponse:
    return await stubs.auth.RefreshToken(pb.RefreshTokenRequest(refresh_token=token))


async def _refused(stubs: Stubs, token: str, reason: str = "REFRESH_TOKEN_INVALID") -> None:
    failure = await fails(_refresh(stubs, token), UNAUTHENTICATED)
    assert failure.reason == reason


async def test_login_and_register_return_refresh_tokens_that_rotate(stubs: Stubs) -> None:
    registered = await stubs.auth.Register(
        pb.RegisterRequest(email="rotate@example.com", password=PASSWORD)
    )
    assert registered.refresh_token.startswith("tsr_")
    login = await stubs.auth.Login(pb.LoginRequest(email="rotate@example.com", password=PASSWORD))
    assert login.refresh_token.startswith("tsr_")
    assert login.refresh_token != registered.refresh_token

    refreshed = await _refresh(stubs, login.refresh_token)
    assert refreshed.token_type == "Bearer"
    assert refreshed.expires_in == 30 * 60
    assert refreshed.refresh_token.startswith("tsr_")
    assert refreshed.refresh_token != login.refresh_token
    me = await stubs.users.GetMe(users_pb.GetMeRequest(), metadata=bearer(refreshed.access_token))
    assert me.user.id == login.user.id
    again = await _refresh(stubs, refreshed.refresh_token)
    await _refresh(stubs, again.refresh_token)
    await _refresh(stubs, registered.refresh_token)  # another family, untouched


async def test_a_retired_token_presented_again_revokes_its_family(
    app: Application, stubs: Stubs
) -> None:
    admin = await make_admin(app, stubs)
    account = await register(stubs)
    login = await _login(stubs, account)
    other_family = (await _login(stubs, account)).refresh_token
    successor = (await _refresh(stubs, login.refresh_token)).refresh_token

    await _refused(stubs, login.refresh_token, "REFRESH_TOKEN_REUSED")
    await _refused(stubs, successor)  # the whole family is gone
    await _refused(stubs, login.refresh_token)  # and stays gone, without repeating the alarm
    await _refresh(stubs, other_family)  # other logins are not affected

    events = await stubs.audit.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(filter='event = "refresh_token_reused"'),
        metadata=admin.metadata,
    )
    assert [(e.target_user_id, e.outcome) for e in events.audit_events] == [
        (account.user.id, "denied")
    ]


async def test_of_concurrent_refreshes_with_one_token_exactly_one_wins(
    app: Application, stubs: Stubs
) -> None:
    account = await register(stubs)
    token = (await _login(stubs, account)).refresh_token
    results = await asyncio.gather(
        *(_refresh(stubs, token) for _ in range(6)), return_exceptions=True
    )
    winners = [result for result in results if isinstance(result, pb.RefreshTokenResponse)]
    losers = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 5
    assert {loser.code() for loser in losers} == {UNAUTHENTICATED}
    details = [dict(loser.trailing_metadata())["grpc-status-details-bin"] for loser in losers]
    # The first loser to be refused set off the alarm; any later one found the family revoked.
    assert any(b"REFRESH_TOKEN_REUSED" in detail for detail in details)
    assert all(b"REFRESH_TOKEN_REUSED" in d or b"REFRESH_TOKEN_INVALID" in d for d in details)
    # The losers presented a retired token: the family, the winner's successor included, is
    # revoked (the OAuth 2.0 Security BCP's reuse rule admits no exception for races).
    await _refused(stubs, winners[0].refresh_token)
    async with app.database.read() as session:
        successors = await session.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.user_id == account.user.id)
        )
    assert successors == 3  # Register's family, the login, and exactly one successor


async def test_logout_revokes_the_family_and_accepts_any_token(stubs: Stubs) -> None:
    account = await register(stubs)
    login = await _login(stubs, account)
    successor = (await _refresh(stubs, login.refresh_token)).refresh_token
    await stubs.auth.Logout(pb.LogoutRequest(refresh_token=successor))
    await _refused(stubs, successor)
    await stubs.auth.Logout(pb.LogoutRequest(refresh_token=successor))  # again: still fine
    await stubs.auth.Logout(pb.LogoutRequest(refresh_token="tsr_not-a-token"))
    failure = await fails(
        stubs.auth.Logout(pb.LogoutRequest(refresh_token="")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(failure.fields) == {"refresh_token"}
    failure = await fails(
        stubs.auth.Logout(pb.LogoutRequest(refresh_token="x" * 201)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"refresh_token"}


@pytest.mark.parametrize("token", ["", "garbage", "tsr_0123456789abcdef_" + "A" * 43, "x" * 5000])
async def test_unusable_refresh_tokens_are_refused(stubs: Stubs, token: str) -> None:
    if not token:
        failure = await fails(_refresh(stubs, token), grpc.StatusCode.INVALID_ARGUMENT)
        assert set(failure.fields) == {"refresh_token"}
    else:
        await _refused(stubs, token)


async def test_a_password_change_revokes_every_family(stubs: Stubs) -> None:
    account = await register(stubs)
    families = [(await _login(stubs, account)).refresh_token for _ in range(2)]
    await stubs.auth.ChangePassword(
        pb.ChangePasswordRequest(current_password=PASSWORD, new_password="another password"),
        metadata=account.metadata,
    )
    for token in families:
        await _refused(stubs, token)


async def test_deactivation_and_deletion_revoke_every_family(
    app: Application, stubs: Stubs
) -> None:
    admin = await make_admin(app, stubs)
    deactivated, deleted = await register(stubs), await register(stubs)
    tokens = {
        account.user.id: (await _login(stubs, account)).refresh_token
        for account in (deactivated, deleted)
    }
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": deactivated.user.id, "is_active": False},
            update_mask={"paths": ["is_active"]},
        ),
        metadata=admin.metadata,
    )
    await stubs.users.DeleteUser(
        users_pb.DeleteUserRequest(id=deleted.user.id), metadata=admin.metadata
    )
    for token in tokens.values():
        await _refused(stubs, token)
    # Reactivation does not bring old families back.
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": deactivated.user.id, "is_active": True},
            update_mask={"paths": ["is_active"]},
        ),
        metadata=admin.metadata,
    )
    await _refused(stubs, tokens[deactivated.user.id])


async def test_refresh_tokens_expire(stubs: Stubs, clock: ManualClock) -> None:
    account = await register(stubs)
    token = (await _login(stubs, account)).refresh_token
    clock.advance(days=29, hours=23)
    token = (await _refresh(stubs, token)).refresh_token  # a fresh lifetime from here
    clock.advance(days=30)
    await _refused(stubs, token)


async def test_refresh_tokens_are_in_no_log_line(
    stubs: Stubs,
    log_lines: io.StringIO,  # noqa: F811 - the fixture
) -> None:
    account = await register(stubs)
    login = await _login(stubs, account)
    refreshed = await _refresh(stubs, login.refresh_token)
    await _refused(stubs, login.refresh_token, "REFRESH_TOKEN_REUSED")
    await stubs.auth.Logout(pb.LogoutRequest(refresh_token=refreshed.refresh_token))
    logged = log_lines.getvalue()
    assert "refresh_token_reused" in logged
    for token in (login.refresh_token, refreshed.refresh_token):
        assert token.split("_", 2)[2] not in logged


async def test_expired_refresh_tokens_and_ended_throttle_windows_are_purged(
    app: Application, stubs: Stubs, clock: ManualClock
) -> None:
    account = await register(stubs)
    old = (await _login(stubs, account)).refresh_token
    await fails(
        stubs.auth.Login(pb.LoginRequest(email=account.user.email, password="wrong password")),
        UNAUTHENTICATED,
    )
    clock.advance(days=29)
    kept = (await _login(stubs, account)).refresh_token  # also resets the account's counter
    clock.advance(days=2)
    assert app.auth is not None
    assert await app.auth.purge_expired() >= 2  # Register's and the first login's tokens
    async with app.database.read() as session:
        left = await session.scalar(select(func.count()).select_from(RefreshToken))
        counters = await session.scalar(select(func.count()).select_from(ThrottleCounter))
    assert left == 1
    assert counters == 0
    await _refused(stubs, old)
    await _refresh(stubs, kept)

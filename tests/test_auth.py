"""AuthService: registration, login and password changes, end to end over gRPC."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from taskservice.security.passwords import PasswordHasher
from taskservice.server import Application, build_server
from taskservice.services.auth import LOGIN_FAILED
from taskservice.v1 import auth_service_pb2 as pb
from taskservice.v1 import user_service_pb2
from tests.conftest import Stubs, make_settings, stubs_for
from tests.helpers import PASSWORD, bearer, fails, make_admin, register, unique_email

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def test_register_returns_the_user_and_a_working_token(stubs: Stubs) -> None:
    response = await stubs.auth.Register(
        pb.RegisterRequest(email="ada@example.com", password=PASSWORD)
    )
    assert response.user.id > 0
    assert response.user.email == "ada@example.com"
    assert response.user.is_active
    assert not response.user.is_admin
    assert response.user.create_time.seconds > 0
    assert (response.token_type, response.expires_in) == ("Bearer", 30 * 60)
    me = await stubs.users.GetMe(
        user_service_pb2.GetMeRequest(), metadata=bearer(response.access_token)
    )
    assert me.user == response.user


async def test_emails_are_trimmed_and_lower_cased(stubs: Stubs) -> None:
    response = await stubs.auth.Register(
        pb.RegisterRequest(email="  Grace.Hopper@Navy.MIL ", password=PASSWORD)
    )
    assert response.user.email == "grace.hopper@navy.mil"


async def test_a_duplicate_email_in_any_case_already_exists(stubs: Stubs) -> None:
    await register(stubs, "alan@example.com")
    failure = await fails(
        stubs.auth.Register(pb.RegisterRequest(email="ALAN@example.COM", password=PASSWORD)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert failure.reason == "EMAIL_TAKEN"


async def test_anonymous_callers_cannot_register_admins_and_nothing_is_created(
    app: Application, stubs: Stubs
) -> None:
    failure = await fails(
        stubs.auth.Register(
            pb.RegisterRequest(email="mallory@example.com", password=PASSWORD, is_admin=True)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert failure.reason == "ADMIN_REQUIRED"
    await fails(
        stubs.auth.Login(pb.LoginRequest(email="mallory@example.com", password=PASSWORD)),
        UNAUTHENTICATED,
    )
    admin = await make_admin(app, stubs)
    users = await stubs.users.ListUsers(
        user_service_pb2.ListUsersRequest(), metadata=admin.metadata
    )
    assert "mallory@example.com" not in {user.email for user in users.users}


async def test_regular_users_cannot_register_admins(stubs: Stubs) -> None:
    user = await register(stubs)
    await fails(
        stubs.auth.Register(
            pb.RegisterRequest(email=unique_email(), password=PASSWORD, is_admin=True),
            metadata=user.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_admins_can_register_admins(app: Application, stubs: Stubs) -> None:
    admin = await make_admin(app, stubs)
    response = await stubs.auth.Register(
        pb.RegisterRequest(email=unique_email(), password=PASSWORD, is_admin=True),
        metadata=admin.metadata,
    )
    assert response.user.is_admin


async def test_register_with_a_bad_token_is_unauthenticated(stubs: Stubs) -> None:
    await fails(
        stubs.auth.Register(
            pb.RegisterRequest(email=unique_email(), password=PASSWORD), metadata=bearer("x.y.z")
        ),
        UNAUTHENTICATED,
    )


@pytest.mark.parametrize(
    ("email", "password", "bad_fields"),
    [
        ("not-an-email", PASSWORD, {"email"}),
        ("", PASSWORD, {"email"}),
        ("a" * 250 + "@example.com", PASSWORD, {"email"}),
        (None, "short", {"password"}),
        (None, "é" * 37, {"password"}),  # 37 characters but 74 bytes: over bcrypt's limit
        ("nope", "short", {"email", "password"}),
    ],
)
async def test_bad_registrations_name_every_bad_field_and_create_nothing(
    stubs: Stubs, email: str | None, password: str, bad_fields: set[str]
) -> None:
    email = unique_email() if email is None else email
    failure = await fails(
        stubs.auth.Register(pb.RegisterRequest(email=email, password=password)), INVALID
    )
    assert set(failure.fields) == bad_fields
    if "email" not in bad_fields:
        await fails(
            stubs.auth.Login(pb.LoginRequest(email=email, password=password)), UNAUTHENTICATED
        )


async def test_a_72_byte_password_is_accepted_whole(stubs: Stubs) -> None:
    password = "p" * 72
    account = await register(stubs, password=password)
    await fails(
        stubs.auth.Login(pb.LoginRequest(email=account.user.email, password=password[:71])),
        UNAUTHENTICATED,
    )
    response = await stubs.auth.Login(pb.LoginRequest(email=account.user.email, password=password))
    assert response.user.id == account.user.id


# bcrypt's key is the password, a NUL, and again up to 72 bytes: "abc\0abc\0abc" and "abc"
# hash alike, as do "<password>\0<password>" and "<password>". So no password may hold a NUL.
NUL_PASSWORD = "abc\x00abc\x00abc"


async def test_a_password_with_nul_is_refused_and_its_prefix_cannot_log_in(stubs: Stubs) -> None:
    email = unique_email()
    failure = await fails(
        stubs.auth.Register(pb.RegisterRequest(email=email, password=NUL_PASSWORD)), INVALID
    )
    assert failure.reason == "INVALID_ARGUMENT"
    assert set(failure.fields) == {"password"}
    assert "NUL" in failure.fields["password"]
    for password in ("abc", NUL_PASSWORD):
        refused = await fails(
            stubs.auth.Login(pb.LoginRequest(email=email, password=password)), UNAUTHENTICATED
        )
        assert (refused.message, refused.reason) == (LOGIN_FAILED, "LOGIN_FAILED")
    await register(stubs, email)  # nothing was created: the email is still free


@pytest.mark.parametrize(
    "password",
    [
        f"{PASSWORD}\x00{PASSWORD}",
        f"{PASSWORD}\x00{PASSWORD}\x00{PASSWORD}"[:72],
        f"{PASSWORD}\x00",
        "\x00",
    ],
)
async def test_a_password_with_nul_never_logs_in_as_a_user(stubs: Stubs, password: str) -> None:
    """Login with NUL fails like any wrong password, even where bcrypt alone would say yes."""
    account = await register(stubs)
    failure = await fails(
        stubs.auth.Login(pb.LoginRequest(email=account.user.email, password=password)),
        UNAUTHENTICATED,
    )
    assert (failure.message, failure.reason) == (LOGIN_FAILED, "LOGIN_FAILED")


async def test_login_returns_a_bearer_token_with_its_lifetime(stubs: Stubs) -> None:
    account = await register(stubs)
    response = await stubs.auth.Login(pb.LoginRequest(email=account.user.email, password=PASSWORD))
    assert response.token_type == "Bearer"
    assert response.expires_in == 30 * 60
    assert response.user == account.user
    me = await stubs.users.GetMe(
        user_service_pb2.GetMeRequest(), metadata=bearer(response.access_token)
    )
    assert me.user.id == account.user.id


async def test_login_email_is_case_insensitive(stubs: Stubs) -> None:
    account = await register(stubs, "case@example.com")
    response = await stubs.auth.Login(pb.LoginRequest(email=" CASE@Example.com", password=PASSWORD))
    assert response.user.id == account.user.id


async def test_wrong_password_unknown_email_and_deactivated_user_fail_alike(
    app: Application, stubs: Stubs
) -> None:
    admin = await make_admin(app, stubs)
    account = await register(stubs)
    deactivated = await register(stubs)
    await stubs.users.UpdateUser(
        user_service_pb2.UpdateUserRequest(
            user={"id": deactivated.user.id, "is_active": False},
            update_mask={"paths": ["is_active"]},
        ),
        metadata=admin.metadata,
    )
    attempts = [
        (account.user.email, "wrong password"),
        ("nobody@example.com", PASSWORD),
        (deactivated.user.email, PASSWORD),
        (account.user.email, "x" * 73),  # over bcrypt's limit: an ordinary failure
        (account.user.email, "x" * 5000),
        ("not even an email", PASSWORD),
    ]
    failures = [
        await fails(stubs.auth.Login(pb.LoginRequest(email=e, password=p)), UNAUTHENTICATED)
        for e, p in attempts
    ]
    assert {(f.message, f.reason) for f in failures} == {(LOGIN_FAILED, "LOGIN_FAILED")}


async def test_login_without_email_or_password_is_invalid(stubs: Stubs) -> None:
    failure = await fails(stubs.auth.Login(pb.LoginRequest()), INVALID)
    assert set(failure.fields) == {"email", "password"}


@pytest.fixture
async def costly_app(database_url: str) -> AsyncIterator[Application]:
    """A server hashing at the production cost (12), for timing and load behaviour."""
    application = await build_server(make_settings(database_url, bcrypt_rounds=12))
    await application.start()
    yield application
    await application.stop(grace=None)


@pytest.fixture
async def costly_stubs(costly_app: Application) -> AsyncIterator[Stubs]:
    async with stubs_for(costly_app) as stubs:
        yield stubs


async def _login_seconds(stubs: Stubs, email: str, password: str) -> float:
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError):
        await stubs.auth.Login(pb.LoginRequest(email=email, password=password))
    return time.perf_counter() - started


async def test_unknown_emails_take_as_long_as_wrong_passwords(costly_stubs: Stubs) -> None:
    account = await register(costly_stubs)
    wrong = [await _login_seconds(costly_stubs, account.user.email, "wrong pass") for _ in range(3)]
    unknown = [await _login_seconds(costly_stubs, "nobody@example.com", PASSWORD) for _ in range(3)]
    # Without the dummy hash an unknown email answers in about a millisecond instead of a
    # bcrypt computation (~100+ ms at cost 12); the bound leaves room for a noisy machine.
    assert sorted(unknown)[1] > 0.5 * sorted(wrong)[1]


async def test_get_me_answers_long_before_a_login_storm_finishes(costly_stubs: Stubs) -> None:
    account = await register(costly_stubs)
    request = pb.LoginRequest(email=account.user.email, password=PASSWORD)
    logins = [asyncio.ensure_future(costly_stubs.auth.Login(request)) for _ in range(16)]
    # Once one login has finished, the rest are hashing: the storm is on.
    await asyncio.wait(logins, return_when=asyncio.FIRST_COMPLETED)
    started = time.perf_counter()
    me = await costly_stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)
    get_me_seconds = time.perf_counter() - started
    still_hashing = sum(not login.done() for login in logins)
    await asyncio.gather(*logins)
    assert me.user.id == account.user.id
    assert still_hashing >= 8, f"GetMe took {get_me_seconds:.3f}s; only {still_hashing} logins left"


async def test_change_password_revokes_older_tokens(stubs: Stubs) -> None:
    account = await register(stubs)
    response = await stubs.auth.ChangePassword(
        pb.ChangePasswordRequest(current_password=PASSWORD, new_password="a new passphrase"),
        metadata=account.metadata,
    )
    failure = await fails(
        stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata),
        UNAUTHENTICATED,
    )
    assert failure.reason == "TOKEN_REVOKED"
    me = await stubs.users.GetMe(
        user_service_pb2.GetMeRequest(), metadata=bearer(response.access_token)
    )
    assert me.user.id == account.user.id
    await fails(
        stubs.auth.Login(pb.LoginRequest(email=account.user.email, password=PASSWORD)),
        UNAUTHENTICATED,
    )
    await stubs.auth.Login(pb.LoginRequest(email=account.user.email, password="a new passphrase"))


async def test_change_password_needs_the_current_password(stubs: Stubs) -> None:
    account = await register(stubs)
    failure = await fails(
        stubs.auth.ChangePassword(
            pb.ChangePasswordRequest(current_password="not it!!", new_password="another one"),
            metadata=account.metadata,
        ),
        UNAUTHENTICATED,
    )
    assert failure.reason == "PASSWORD_INCORRECT"
    await stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)


async def test_change_password_validates_the_new_password(stubs: Stubs) -> None:
    account = await register(stubs)
    failure = await fails(
        stubs.auth.ChangePassword(
            pb.ChangePasswordRequest(current_password=PASSWORD, new_password="short"),
            metadata=account.metadata,
        ),
        INVALID,
    )
    assert set(failure.fields) == {"new_password"}


async def test_change_password_refuses_a_new_password_with_nul_and_changes_nothing(
    stubs: Stubs,
) -> None:
    account = await register(stubs)
    failure = await fails(
        stubs.auth.ChangePassword(
            pb.ChangePasswordRequest(current_password=PASSWORD, new_password=NUL_PASSWORD),
            metadata=account.metadata,
        ),
        INVALID,
    )
    assert failure.reason == "INVALID_ARGUMENT"
    assert set(failure.fields) == {"new_password"}
    assert "NUL" in failure.fields["new_password"]
    await stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)
    await fails(
        stubs.auth.Login(pb.LoginRequest(email=account.user.email, password="abc")),
        UNAUTHENTICATED,
    )
    await stubs.auth.Login(pb.LoginRequest(email=account.user.email, password=PASSWORD))


async def test_change_password_refuses_a_current_password_with_nul(stubs: Stubs) -> None:
    """The password, a NUL and the password again is not it, though bcrypt alone matches it."""
    account = await register(stubs)
    failure = await fails(
        stubs.auth.ChangePassword(
            pb.ChangePasswordRequest(
                current_password=f"{PASSWORD}\x00{PASSWORD}", new_password="a new passphrase"
            ),
            metadata=account.metadata,
        ),
        UNAUTHENTICATED,
    )
    assert failure.reason == "PASSWORD_INCORRECT"
    await stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)


async def test_change_password_needs_a_token(stubs: Stubs) -> None:
    await fails(
        stubs.auth.ChangePassword(
            pb.ChangePasswordRequest(current_password=PASSWORD, new_password="a new passphrase")
        ),
        UNAUTHENTICATED,
    )


async def test_debug_sql_logging_never_shows_passwords_or_hashes(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    application = await build_server(make_settings(database_url, debug=True))
    await application.start()
    try:
        async with stubs_for(application) as stubs:
            account = await register(stubs, password="a secret passphrase")
            await stubs.auth.Login(
                pb.LoginRequest(email=account.user.email, password="a secret passphrase")
            )
    finally:
        await application.stop(grace=None)
    assert "INSERT INTO users" in caplog.text  # SQL is echoed...
    assert "$2b$" not in caplog.text  # ...but never its values
    assert "a secret passphrase" not in caplog.text
    assert account.token not in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread niceness is Linux's")
async def test_hashing_threads_yield_the_cpu_to_the_event_loop() -> None:
    """The bcrypt threads run at idle priority, so under CPU contention other calls keep theirs."""
    hasher = PasswordHasher(rounds=4, threads=1)
    try:
        await hasher.hash("a password")  # starts the thread
        loop = asyncio.get_running_loop()
        policy = await loop.run_in_executor(
            hasher._executor, lambda: os.sched_getscheduler(threading.get_native_id())
        )
        assert policy == os.SCHED_IDLE
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        hasher.close()

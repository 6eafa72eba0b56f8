"""UserService: GetMe for everyone; listing, reading, changing and deleting users for admins."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.server import Application
from taskservice.v1 import user_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, make_admin, register

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _update(user_id: int, paths: list[str], **values: object) -> pb.UpdateUserRequest:
    return pb.UpdateUserRequest(user={"id": user_id, **values}, update_mask={"paths": paths})


@pytest.fixture
async def admin(app: Application, stubs: Stubs) -> Account:
    return await make_admin(app, stubs)


@pytest.fixture
async def member(stubs: Stubs) -> Account:
    return await register(stubs)


async def test_get_me_returns_the_caller_without_secrets(stubs: Stubs, member: Account) -> None:
    response = await stubs.users.GetMe(pb.GetMeRequest(), metadata=member.metadata)
    assert response.user == member.user
    assert b"$2b$" not in response.SerializeToString()


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("ListUsers", pb.ListUsersRequest()),
        ("GetUser", pb.GetUserRequest(id=1)),
        ("UpdateUser", _update(1, ["is_admin"], is_admin=True)),
        ("DeleteUser", pb.DeleteUserRequest(id=1)),
    ],
)
async def test_admin_methods_deny_regular_users(
    stubs: Stubs, member: Account, method: str, request_: object
) -> None:
    failure = await fails(getattr(stubs.users, method)(request_, metadata=member.metadata), DENIED)
    assert failure.reason == "ADMIN_REQUIRED"


async def test_a_regular_user_cannot_promote_themself(stubs: Stubs, member: Account) -> None:
    await fails(
        stubs.users.UpdateUser(
            _update(member.user.id, ["is_admin"], is_admin=True), metadata=member.metadata
        ),
        DENIED,
    )
    me = await stubs.users.GetMe(pb.GetMeRequest(), metadata=member.metadata)
    assert not me.user.is_admin


async def test_get_user(stubs: Stubs, admin: Account, member: Account) -> None:
    response = await stubs.users.GetUser(
        pb.GetUserRequest(id=member.user.id), metadata=admin.metadata
    )
    assert response.user == member.user
    failure = await fails(
        stubs.users.GetUser(pb.GetUserRequest(id=10**12), metadata=admin.metadata), NOT_FOUND
    )
    assert failure.reason == "USER_NOT_FOUND"
    failure = await fails(
        stubs.users.GetUser(pb.GetUserRequest(), metadata=admin.metadata), INVALID
    )
    assert set(failure.fields) == {"id"}


async def test_list_users_walks_every_user_once_oldest_first(stubs: Stubs, admin: Account) -> None:
    members = [await register(stubs) for _ in range(7)]
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = await stubs.users.ListUsers(
            pb.ListUsersRequest(page_size=3, page_token=token), metadata=admin.metadata
        )
        pages += 1
        seen.extend(user.id for user in page.users)
        assert len(page.users) <= 3
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted([admin.user.id, *(m.user.id for m in members)])
    assert pages == 3


async def test_list_users_page_sizes(stubs: Stubs, admin: Account) -> None:
    for _ in range(2):
        await register(stubs)
    everyone = await stubs.users.ListUsers(pb.ListUsersRequest(), metadata=admin.metadata)
    assert len(everyone.users) == 3
    assert everyone.next_page_token == ""
    clamped = await stubs.users.ListUsers(
        pb.ListUsersRequest(page_size=10**6), metadata=admin.metadata
    )
    assert len(clamped.users) == 3
    failure = await fails(
        stubs.users.ListUsers(pb.ListUsersRequest(page_size=-1), metadata=admin.metadata), INVALID
    )
    assert set(failure.fields) == {"page_size"}


@pytest.mark.parametrize(
    "mangle", [lambda t: "garbage", lambda t: t[:-2] + "AA", lambda t: "x" + t]
)
async def test_list_users_refuses_tokens_it_did_not_issue(
    stubs: Stubs, admin: Account, mangle: object
) -> None:
    await register(stubs)
    page = await stubs.users.ListUsers(pb.ListUsersRequest(page_size=1), metadata=admin.metadata)
    assert page.next_page_token
    bad = mangle(page.next_page_token)  # type: ignore[operator]
    failure = await fails(
        stubs.users.ListUsers(pb.ListUsersRequest(page_token=bad), metadata=admin.metadata),
        INVALID,
    )
    assert set(failure.fields) == {"page_token"}


async def test_update_user_changes_only_the_masked_fields(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    response = await stubs.users.UpdateUser(
        _update(member.user.id, ["email"], email=" New.Name@Example.com", is_admin=True),
        metadata=admin.metadata,
    )
    assert response.user.email == "new.name@example.com"
    assert not response.user.is_admin
    assert response.user.update_time.ToDatetime() >= member.user.update_time.ToDatetime()


async def test_admins_can_promote_users(stubs: Stubs, admin: Account, member: Account) -> None:
    response = await stubs.users.UpdateUser(
        _update(member.user.id, ["is_admin"], is_admin=True), metadata=admin.metadata
    )
    assert response.user.is_admin
    # Promotion takes effect on the member's existing token at once.
    await stubs.users.ListUsers(pb.ListUsersRequest(), metadata=member.metadata)


async def test_update_user_to_a_taken_email_already_exists(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    await fails(
        stubs.users.UpdateUser(
            _update(member.user.id, ["email"], email=admin.user.email.upper()),
            metadata=admin.metadata,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )


@pytest.mark.parametrize(
    ("paths", "values", "bad_fields"),
    [
        ([], {}, {"update_mask"}),
        (["nickname"], {}, {"update_mask"}),
        (["id"], {}, {"update_mask"}),
        (["create_time"], {}, {"update_mask"}),
        (["email"], {"email": "not an email"}, {"user.email"}),
        (["email", "password_hash"], {"email": "nope"}, {"update_mask", "user.email"}),
    ],
)
async def test_update_user_refuses_bad_masks_and_values_and_changes_nothing(
    stubs: Stubs,
    admin: Account,
    member: Account,
    paths: list[str],
    values: dict[str, object],
    bad_fields: set[str],
) -> None:
    failure = await fails(
        stubs.users.UpdateUser(_update(member.user.id, paths, **values), metadata=admin.metadata),
        INVALID,
    )
    assert set(failure.fields) == bad_fields
    after = await stubs.users.GetUser(pb.GetUserRequest(id=member.user.id), metadata=admin.metadata)
    assert after.user == member.user


async def test_update_of_a_missing_user_is_not_found(stubs: Stubs, admin: Account) -> None:
    await fails(
        stubs.users.UpdateUser(
            _update(10**12, ["is_active"], is_active=False), metadata=admin.metadata
        ),
        NOT_FOUND,
    )


@pytest.mark.parametrize(
    "request_factory",
    [
        lambda me: _update(me, ["is_active"], is_active=False),
        lambda me: _update(me, ["is_admin"], is_admin=False),
        lambda me: pb.DeleteUserRequest(id=me),
    ],
    ids=["deactivate", "demote", "delete"],
)
async def test_admins_cannot_lock_themselves_out(
    stubs: Stubs, admin: Account, request_factory: object
) -> None:
    request = request_factory(admin.user.id)  # type: ignore[operator]
    method = (
        stubs.users.DeleteUser
        if isinstance(request, pb.DeleteUserRequest)
        else stubs.users.UpdateUser
    )
    failure = await fails(method(request, metadata=admin.metadata), PRECONDITION)
    assert failure.reason == "SELF_LOCKOUT"
    me = await stubs.users.GetMe(pb.GetMeRequest(), metadata=admin.metadata)
    assert me.user.is_admin
    assert me.user.is_active


async def test_admins_demoting_each_other_at_once_leave_one_admin(
    app: Application, stubs: Stubs
) -> None:
    first, second = await make_admin(app, stubs), await make_admin(app, stubs)
    results = await asyncio.gather(
        stubs.users.UpdateUser(
            _update(second.user.id, ["is_admin"], is_admin=False), metadata=first.metadata
        ),
        stubs.users.UpdateUser(
            _update(first.user.id, ["is_admin"], is_admin=False), metadata=second.metadata
        ),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1
    assert isinstance(failed[0], grpc.aio.AioRpcError)
    # Refused as the last admin, or already demoted (and so its token revoked) when it arrived.
    assert failed[0].code() in {PRECONDITION, grpc.StatusCode.UNAUTHENTICATED}, failed[0]
    survivor, demoted = (first, second) if failed[0] is results[1] else (second, first)
    me = await stubs.users.GetMe(pb.GetMeRequest(), metadata=survivor.metadata)
    assert me.user.is_admin
    await fails(
        stubs.users.GetMe(pb.GetMeRequest(), metadata=demoted.metadata),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_delete_user_deletes_their_tasks_too(
    app: Application, stubs: Stubs, admin: Account, member: Account
) -> None:
    url = app.settings.sqlalchemy_url
    engine = create_async_engine(url)
    insert = text(
        "INSERT INTO tasks (owner_id, title, description, status, version, create_time, "
        "update_time) VALUES (:owner, 'a task', '', 'todo', 1, CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP)"
    )
    count = text("SELECT count(*) FROM tasks WHERE owner_id = :owner")
    try:
        async with engine.begin() as connection:
            for owner in (member.user.id, member.user.id, admin.user.id):
                await connection.execute(insert, {"owner": owner})
        await stubs.users.DeleteUser(
            pb.DeleteUserRequest(id=member.user.id), metadata=admin.metadata
        )
        async with engine.connect() as connection:
            assert await connection.scalar(count, {"owner": member.user.id}) == 0
            assert await connection.scalar(count, {"owner": admin.user.id}) == 1
    finally:
        await engine.dispose()
    await fails(
        stubs.users.GetUser(pb.GetUserRequest(id=member.user.id), metadata=admin.metadata),
        NOT_FOUND,
    )
    await fails(
        stubs.users.DeleteUser(pb.DeleteUserRequest(id=member.user.id), metadata=admin.metadata),
        NOT_FOUND,
    )


async def test_every_bad_field_of_a_user_request_is_named_at_once(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    """One BadRequest lists every bad field (API conventions), and nothing changes.

    Found by the fuzz: a bad id or page size answered alone, hiding the other bad fields.
    """
    update = await fails(
        stubs.users.UpdateUser(
            _update(0, ["email", "id"], email="not an email"), metadata=admin.metadata
        ),
        INVALID,
    )
    assert set(update.fields) == {"user.id", "update_mask", "user.email"}
    listing = await fails(
        stubs.users.ListUsers(
            pb.ListUsersRequest(page_size=-1, page_token="forged"), metadata=admin.metadata
        ),
        INVALID,
    )
    assert set(listing.fields) == {"page_size", "page_token"}
    me = await stubs.users.GetMe(pb.GetMeRequest(), metadata=member.metadata)
    assert me.user == member.user

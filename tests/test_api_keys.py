"""API keys: services authenticate as a user with `Bearer tsk_...`; users manage their own keys."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from taskservice.server import Application, build_server
from taskservice.v1 import api_key_service_pb2 as pb
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import ManualClock, Stubs, make_settings, stubs_for
from tests.helpers import Account, bearer, fails, make_admin, register
from tests.test_access_log import log_lines  # noqa: F401 - a fixture
from tests.test_auth_state import PROPAGATION_SECONDS, _eventually

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
KEY_SHAPE = re.compile(r"tsk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


@pytest.fixture
async def admin(app: Application, stubs: Stubs) -> Account:
    return await make_admin(app, stubs)


@pytest.fixture
async def member(stubs: Stubs) -> Account:
    return await register(stubs)


def _at(clock: ManualClock, **delta: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(clock.now + timedelta(**delta))
    return stamp


async def _create(
    stubs: Stubs, caller: Account, user_id: int = 0, name: str = "ci deploys", **fields: object
) -> pb.CreateApiKeyResponse:
    return await stubs.api_keys.CreateApiKey(
        pb.CreateApiKeyRequest(user_id=user_id, display_name=name, **fields),
        metadata=caller.metadata,
    )


async def _me(stubs: Stubs, secret: str) -> users_pb.User:
    return (await stubs.users.GetMe(users_pb.GetMeRequest(), metadata=bearer(secret))).user


async def test_a_user_creates_lists_and_revokes_their_own_key(
    stubs: Stubs, member: Account, clock: ManualClock
) -> None:
    created = await _create(stubs, member, name="  nightly export  ")
    assert KEY_SHAPE.fullmatch(created.secret)
    key = created.api_key
    assert key.user_id == member.user.id
    assert key.display_name == "nightly export"
    assert key.prefix == created.secret[:20]
    assert key.prefix.startswith("tsk_")
    assert key.create_time.ToDatetime().replace(microsecond=0) == clock.now.replace(
        microsecond=0, tzinfo=None
    )
    assert not key.HasField("expire_time")
    assert not key.HasField("last_use_time")

    listed = await stubs.api_keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=member.metadata)
    assert list(listed.api_keys) == [key]
    # The secret is shown once: nothing a list returns carries it.
    secret_part = created.secret.split("_", 2)[2]
    assert secret_part.encode() not in listed.SerializeToString()

    assert (await _me(stubs, created.secret)).id == member.user.id
    await stubs.api_keys.DeleteApiKey(pb.DeleteApiKeyRequest(id=key.id), metadata=member.metadata)
    failure = await fails(_me(stubs, created.secret), UNAUTHENTICATED)
    assert failure.reason == "API_KEY_INVALID"
    listed = await stubs.api_keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=member.metadata)
    assert list(listed.api_keys) == []
    again = await fails(
        stubs.api_keys.DeleteApiKey(pb.DeleteApiKeyRequest(id=key.id), metadata=member.metadata),
        NOT_FOUND,
    )
    assert again.reason == "API_KEY_NOT_FOUND"


async def test_a_key_acts_with_its_users_current_role(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    secret = (await _create(stubs, member)).secret
    denied = await fails(
        stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=bearer(secret)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert denied.reason == "ADMIN_REQUIRED"
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": member.user.id, "is_admin": True}, update_mask={"paths": ["is_admin"]}
        ),
        metadata=admin.metadata,
    )
    await stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=bearer(secret))


async def test_last_use_time_is_written_at_most_once_a_minute(
    stubs: Stubs, member: Account, clock: ManualClock
) -> None:
    created = await _create(stubs, member)

    async def last_use() -> Timestamp | None:
        listed = await stubs.api_keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=member.metadata)
        key = listed.api_keys[0]
        return key.last_use_time if key.HasField("last_use_time") else None

    first_use = clock.now
    await _me(stubs, created.secret)
    assert (await last_use()).ToDatetime() == first_use.replace(tzinfo=None)  # type: ignore[union-attr]
    clock.advance(seconds=59)
    await _me(stubs, created.secret)
    assert (await last_use()).ToDatetime() == first_use.replace(tzinfo=None)  # type: ignore[union-attr]
    clock.advance(seconds=2)
    await _me(stubs, created.secret)
    assert (await last_use()).ToDatetime() == clock.now.replace(tzinfo=None)  # type: ignore[union-attr]


async def test_an_expired_key_is_refused(stubs: Stubs, member: Account, clock: ManualClock) -> None:
    created = await _create(stubs, member, expire_time=_at(clock, hours=1))
    assert created.api_key.expire_time == _at(clock, hours=1)
    await _me(stubs, created.secret)
    clock.advance(hours=1)
    failure = await fails(_me(stubs, created.secret), UNAUTHENTICATED)
    assert failure.reason == "API_KEY_EXPIRED"


async def test_bad_create_requests_name_every_bad_field_and_create_nothing(
    stubs: Stubs, member: Account, clock: ManualClock
) -> None:
    failure = await fails(
        _create(stubs, member, name="   ", expire_time=_at(clock, seconds=-1)), INVALID
    )
    assert set(failure.fields) == {"display_name", "expire_time"}
    failure = await fails(_create(stubs, member, name="x" * 101), INVALID)
    assert set(failure.fields) == {"display_name"}
    failure = await fails(_create(stubs, member, expire_time=_at(clock)), INVALID)
    assert set(failure.fields) == {"expire_time"}
    listed = await stubs.api_keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=member.metadata)
    assert list(listed.api_keys) == []


async def test_a_regular_user_cannot_tell_other_users_from_missing_ones(
    stubs: Stubs, member: Account
) -> None:
    other = await register(stubs)
    others_key = (await _create(stubs, other)).api_key
    missing_user, existing_user = [
        await fails(_create(stubs, member, user_id=user_id), NOT_FOUND)
        for user_id in (other.user.id + 1000, other.user.id)
    ]
    assert (missing_user.reason, missing_user.message) == (
        existing_user.reason,
        existing_user.message,
    )
    assert existing_user.reason == "USER_NOT_FOUND"
    for user_id in (other.user.id + 1000, other.user.id):
        listed = await fails(
            stubs.api_keys.ListApiKeys(
                pb.ListApiKeysRequest(user_id=user_id), metadata=member.metadata
            ),
            NOT_FOUND,
        )
        assert (listed.reason, listed.message) == (missing_user.reason, missing_user.message)
    missing_key, existing_key = [
        await fails(
            stubs.api_keys.DeleteApiKey(
                pb.DeleteApiKeyRequest(id=key_id), metadata=member.metadata
            ),
            NOT_FOUND,
        )
        for key_id in (others_key.id + 1000, others_key.id)
    ]
    assert (missing_key.reason, missing_key.message) == (existing_key.reason, existing_key.message)
    # And the other user's key still works.
    listed = await stubs.api_keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=other.metadata)
    assert [key.id for key in listed.api_keys] == [others_key.id]


async def test_admins_manage_anyones_keys(stubs: Stubs, admin: Account, member: Account) -> None:
    created = await _create(stubs, admin, user_id=member.user.id)
    assert created.api_key.user_id == member.user.id
    assert (await _me(stubs, created.secret)).id == member.user.id
    listed = await stubs.api_keys.ListApiKeys(
        pb.ListApiKeysRequest(user_id=member.user.id), metadata=admin.metadata
    )
    assert [key.id for key in listed.api_keys] == [created.api_key.id]
    await stubs.api_keys.DeleteApiKey(
        pb.DeleteApiKeyRequest(id=created.api_key.id), metadata=admin.metadata
    )
    await fails(_me(stubs, created.secret), UNAUTHENTICATED)
    missing = await fails(_create(stubs, admin, user_id=member.user.id + 1000), NOT_FOUND)
    assert missing.reason == "USER_NOT_FOUND"


async def test_a_key_cannot_manage_keys(stubs: Stubs, member: Account) -> None:
    created = await _create(stubs, member)
    as_key = Account(member.user, created.secret)
    for call in (
        _create(stubs, as_key),
        stubs.api_keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=as_key.metadata),
        stubs.api_keys.DeleteApiKey(
            pb.DeleteApiKeyRequest(id=created.api_key.id), metadata=as_key.metadata
        ),
    ):
        failure = await fails(call, grpc.StatusCode.PERMISSION_DENIED)
        assert failure.reason == "API_KEY_NOT_ALLOWED"


async def test_keys_list_newest_first_in_pages(stubs: Stubs, member: Account) -> None:
    ids = [(await _create(stubs, member, name=f"key {n}")).api_key.id for n in range(5)]
    seen, token = [], ""
    while True:
        page = await stubs.api_keys.ListApiKeys(
            pb.ListApiKeysRequest(page_size=2, page_token=token), metadata=member.metadata
        )
        seen += [key.id for key in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    other = await register(stubs)
    first = await stubs.api_keys.ListApiKeys(
        pb.ListApiKeysRequest(page_size=2), metadata=member.metadata
    )
    failure = await fails(
        stubs.api_keys.ListApiKeys(
            pb.ListApiKeysRequest(page_token=first.next_page_token), metadata=other.metadata
        ),
        INVALID,
    )
    assert set(failure.fields) == {"page_token"}
    failure = await fails(
        stubs.api_keys.ListApiKeys(pb.ListApiKeysRequest(page_size=-1), metadata=member.metadata),
        INVALID,
    )
    assert set(failure.fields) == {"page_size"}


@pytest.mark.parametrize(
    "mangle",
    [
        lambda secret: "tsk_not-a-key",
        lambda secret: secret[:-1] + ("A" if secret[-1] != "A" else "B"),  # right id, wrong secret
        lambda secret: "tsk_0123456789abcdef_" + secret.split("_", 2)[2],  # unknown id
    ],
)
async def test_malformed_unknown_and_wrong_keys_are_unauthenticated(
    stubs: Stubs, member: Account, mangle: object
) -> None:
    secret = (await _create(stubs, member)).secret
    failure = await fails(_me(stubs, mangle(secret)), UNAUTHENTICATED)  # type: ignore[operator]
    assert failure.reason == "API_KEY_INVALID"


async def test_the_secret_is_in_no_log_line(
    stubs: Stubs,
    member: Account,
    log_lines: io.StringIO,  # noqa: F811 - the fixture
) -> None:
    created = await _create(stubs, member)
    await _me(stubs, created.secret)
    await fails(_me(stubs, created.secret + "x"), UNAUTHENTICATED)
    await stubs.api_keys.DeleteApiKey(
        pb.DeleteApiKeyRequest(id=created.api_key.id), metadata=member.metadata
    )
    await fails(_me(stubs, created.secret), UNAUTHENTICATED)
    logged = log_lines.getvalue()
    assert "api_key_created" in logged
    assert "api_key_revoked" in logged
    assert created.secret.split("_", 2)[2] not in logged


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[tuple[Application, Application]]:
    """Two servers sharing one database, as two replicas (or workers) would.

    On SQLite two servers on one file are what WORKERS=2 runs, which is how they know not to
    cache what the other may change.
    """
    apps = [await build_server(make_settings(database_url, workers=2)) for _ in range(2)]
    for application in apps:
        await application.start()
    yield apps[0], apps[1]
    for application in apps:
        await application.stop(grace=None)


async def _refused(stubs: Stubs, secret: str, reasons: tuple[str, ...]) -> bool:
    """Whether the key is refused now, UNAUTHENTICATED with one of `reasons`."""
    try:
        await _me(stubs, secret)
    except grpc.aio.AioRpcError as error:
        details = str(error.trailing_metadata())
        return error.code() == UNAUTHENTICATED and any(reason in details for reason in reasons)
    return False


async def test_revocation_and_deactivation_reach_a_second_server(
    replicas: tuple[Application, Application],
) -> None:
    first, second = replicas
    async with stubs_for(first) as via_first, stubs_for(second) as via_second:
        admin = await make_admin(first, via_first)
        member = await register(via_first)
        revoked = (await _create(via_first, member)).secret
        kept = (await _create(via_first, member)).secret
        for secret in (revoked, kept):
            await _me(via_second, secret)  # cached by the second server on PostgreSQL
        keys = await via_first.api_keys.ListApiKeys(
            pb.ListApiKeysRequest(), metadata=member.metadata
        )
        revoked_id = next(key.id for key in keys.api_keys if revoked.startswith(key.prefix))
        await via_first.api_keys.DeleteApiKey(
            pb.DeleteApiKeyRequest(id=revoked_id), metadata=member.metadata
        )
        await _eventually(
            lambda: _refused(via_second, revoked, ("API_KEY_INVALID",)), PROPAGATION_SECONDS
        )
        await _me(via_second, kept)
        await via_first.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": member.user.id, "is_active": False},
                update_mask={"paths": ["is_active"]},
            ),
            metadata=admin.metadata,
        )
        await _eventually(
            lambda: _refused(via_second, kept, ("API_KEY_REVOKED",)), PROPAGATION_SECONDS
        )
        await via_first.users.DeleteUser(
            users_pb.DeleteUserRequest(id=member.user.id), metadata=admin.metadata
        )
        # Deleted with its user: refused as revoked (a cached key) or unknown (read afresh).
        await _eventually(
            lambda: _refused(via_second, kept, ("API_KEY_REVOKED", "API_KEY_INVALID")),
            PROPAGATION_SECONDS,
        )

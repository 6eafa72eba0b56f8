"""The audit trail: a row and a log line for every security-relevant event; admins read it."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import grpc
import pytest

from taskservice.server import Application
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import audit_service_pb2 as pb
from taskservice.v1 import auth_service_pb2 as auth_pb
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as tasks_pb
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import ManualClock, Stubs
from tests.helpers import PASSWORD, Account, fails, make_admin, register, unique_email
from tests.test_access_log import log_lines  # noqa: F401 - a fixture

EVERY_STORED_EVENT = {
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
}


@pytest.fixture
async def admin(app: Application, stubs: Stubs) -> Account:
    return await make_admin(app, stubs)


async def _events(stubs: Stubs, admin: Account, filter_text: str = "") -> list[pb.AuditEvent]:
    found, token = [], ""
    while True:
        page = await stubs.audit.ListAuditEvents(
            pb.ListAuditEventsRequest(filter=filter_text, page_token=token, page_size=7),
            metadata=admin.metadata,
        )
        found += list(page.audit_events)
        token = page.next_page_token
        if not token:
            return found


def _set_user(user_id: int, **fields: bool) -> users_pb.UpdateUserRequest:
    return users_pb.UpdateUserRequest(
        user={"id": user_id, **fields}, update_mask={"paths": list(fields)}
    )


async def test_every_security_event_leaves_a_row_and_a_log_line_and_no_secret(
    log_lines: io.StringIO,  # noqa: F811 - the fixture, first: it sees every line
    stubs: Stubs,
    admin: Account,
) -> None:
    member = await register(stubs)
    login = await stubs.auth.Login(
        auth_pb.LoginRequest(email=member.user.email, password=PASSWORD),
        metadata=(("x-request-id", "audit-login-1"),),
    )
    for email in (member.user.email, unique_email("nobody")):
        await fails(
            stubs.auth.Login(auth_pb.LoginRequest(email=email, password="wrong guess")),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    await fails(
        stubs.auth.ChangePassword(
            auth_pb.ChangePasswordRequest(current_password="wrong", new_password="new password"),
            metadata=member.metadata,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    changed = await stubs.auth.ChangePassword(
        auth_pb.ChangePasswordRequest(current_password=PASSWORD, new_password="new password"),
        metadata=member.metadata,
    )
    member = Account(member.user, changed.access_token)
    again = await stubs.auth.Login(
        auth_pb.LoginRequest(email=member.user.email, password="new password")
    )
    await stubs.auth.RefreshToken(auth_pb.RefreshTokenRequest(refresh_token=again.refresh_token))
    await fails(
        stubs.auth.RefreshToken(auth_pb.RefreshTokenRequest(refresh_token=again.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    other_login = await stubs.auth.Login(
        auth_pb.LoginRequest(email=member.user.email, password="new password")
    )
    await stubs.auth.Logout(auth_pb.LogoutRequest(refresh_token=other_login.refresh_token))
    key = await stubs.api_keys.CreateApiKey(
        keys_pb.CreateApiKeyRequest(display_name="ci"), metadata=member.metadata
    )
    await stubs.api_keys.DeleteApiKey(
        keys_pb.DeleteApiKeyRequest(id=key.api_key.id), metadata=member.metadata
    )
    task = (
        await stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task=task_pb2.Task(title="mine")), metadata=member.metadata
        )
    ).task
    await stubs.tasks.PatchTask(  # the owner's own write is not an admin action
        tasks_pb.PatchTaskRequest(
            task=task_pb2.Task(id=task.id, title="renamed"), update_mask={"paths": ["title"]}
        ),
        metadata=member.metadata,
    )
    await stubs.tasks.DeleteTask(tasks_pb.DeleteTaskRequest(id=task.id), metadata=admin.metadata)
    await stubs.users.UpdateUser(_set_user(member.user.id, is_admin=True), metadata=admin.metadata)
    await stubs.users.UpdateUser(_set_user(member.user.id, is_admin=False), metadata=admin.metadata)
    await stubs.users.UpdateUser(
        _set_user(member.user.id, is_active=False), metadata=admin.metadata
    )
    await stubs.users.UpdateUser(_set_user(member.user.id, is_active=True), metadata=admin.metadata)
    await stubs.users.DeleteUser(
        users_pb.DeleteUserRequest(id=member.user.id), metadata=admin.metadata
    )

    events = await _events(stubs, admin)
    assert [event.id for event in events] == sorted((event.id for event in events), reverse=True)
    assert {event.event for event in events} == EVERY_STORED_EVENT
    by_name: dict[str, list[pb.AuditEvent]] = {}
    for event in events:
        by_name.setdefault(event.event, []).append(event)
        assert event.request_id
        assert event.outcome in {"success", "failure", "denied"}
    succeeded = by_name["login_succeeded"]
    assert any(e.request_id == "audit-login-1" for e in succeeded)
    assert {(e.actor_id, e.target_user_id) for e in succeeded} == {
        (member.user.id, member.user.id),
        (admin.user.id, admin.user.id),
    }
    assert sorted(e.target_user_id for e in by_name["login_failed"]) == [0, member.user.id]
    assert {e.outcome for e in by_name["login_failed"]} == {"failure"}
    (deleted,) = by_name["user_deleted"]
    assert (deleted.actor_id, deleted.target_user_id) == (admin.user.id, member.user.id)
    (admin_action,) = by_name["task_admin_action"]
    assert (admin_action.actor_id, admin_action.target_user_id) == (admin.user.id, member.user.id)
    assert len(by_name["user_role_changed"]) == 2

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    audit_lines = [line for line in lines if line["logger"] == "taskservice.audit"]
    logged = {(line["event"], line["request_id"]) for line in audit_lines}
    assert {(event.event, event.request_id) for event in events} <= logged
    for line in audit_lines:
        assert set(line) >= {"event", "actor_id", "target_user_id", "outcome", "request_id"}
    everything = log_lines.getvalue()
    secrets = [
        PASSWORD,
        "new password",
        "wrong guess",
        member.token,
        login.access_token,
        *(token.split("_", 2)[2] for token in (login.refresh_token, again.refresh_token)),
        key.secret.split("_", 2)[2],
        "$2b$",
    ]
    for secret in secrets:
        assert secret not in everything


async def test_regular_users_may_not_read_the_trail(stubs: Stubs) -> None:
    member = await register(stubs)
    failure = await fails(
        stubs.audit.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=member.metadata),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert failure.reason == "ADMIN_REQUIRED"
    await fails(
        stubs.audit.ListAuditEvents(pb.ListAuditEventsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )


async def test_the_trail_filters_by_actor_target_event_and_time(
    stubs: Stubs, admin: Account, clock: ManualClock
) -> None:
    first = await register(stubs)
    clock.advance(hours=1)
    cutoff = clock.now
    second = await register(stubs)
    await fails(
        stubs.auth.Login(auth_pb.LoginRequest(email=second.user.email, password="nope")),
        grpc.StatusCode.UNAUTHENTICATED,
    )

    async def names(filter_text: str) -> list[tuple[str, int]]:
        return [(e.event, e.target_user_id) for e in await _events(stubs, admin, filter_text)]

    assert await names(f"target_user_id = {second.user.id}") == [
        ("login_failed", second.user.id),
        ("user_registered", second.user.id),
    ]
    assert await names(f'actor_id = {first.user.id} AND event = "user_registered"') == [
        ("user_registered", first.user.id)
    ]
    stamp = cutoff.isoformat().replace("+00:00", "Z")
    assert await names(f'create_time >= "{stamp}" AND NOT event:"failed"') == [
        ("user_registered", second.user.id)
    ]
    assert await names('actor_id:* AND event = "login_failed"') == []
    earlier = (cutoff - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    assert ("user_registered", first.user.id) in await names(
        f'create_time < "{earlier}" OR event = "user_registered"'
    )


async def test_each_admin_write_to_another_users_task_is_recorded_once(
    stubs: Stubs, admin: Account
) -> None:
    member = await register(stubs)
    task = (
        await stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task=task_pb2.Task(title="theirs")),
            metadata=member.metadata,
        )
    ).task
    for account, title in ((member, "by the owner"), (admin, "by an admin")):
        await stubs.tasks.PatchTask(
            tasks_pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, title=title), update_mask={"paths": ["title"]}
            ),
            metadata=account.metadata,
        )
    events = await _events(
        stubs, admin, f'event = "task_admin_action" AND target_user_id = {member.user.id}'
    )
    assert [(e.actor_id, e.target_user_id) for e in events] == [(admin.user.id, member.user.id)]


@pytest.mark.parametrize(
    "bad_filter", ["password = 1", "actor_id = ", 'event < "a"', 'actor_id = "x"']
)
async def test_bad_filters_are_invalid_argument(
    stubs: Stubs, admin: Account, bad_filter: str
) -> None:
    failure = await fails(
        stubs.audit.ListAuditEvents(
            pb.ListAuditEventsRequest(filter=bad_filter), metadata=admin.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.reason == "FILTER_INVALID"
    assert set(failure.fields) == {"filter"}
    assert "position" in failure.fields["filter"]


async def test_page_tokens_are_bound_to_their_filter(stubs: Stubs, admin: Account) -> None:
    for _ in range(3):
        await register(stubs)
    page = await stubs.audit.ListAuditEvents(
        pb.ListAuditEventsRequest(page_size=1, filter='event = "user_registered"'),
        metadata=admin.metadata,
    )
    assert page.next_page_token
    failure = await fails(
        stubs.audit.ListAuditEvents(
            pb.ListAuditEventsRequest(page_token=page.next_page_token), metadata=admin.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"page_token"}
    failure = await fails(
        stubs.audit.ListAuditEvents(
            pb.ListAuditEventsRequest(page_size=-1), metadata=admin.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.fields) == {"page_size"}


async def test_events_older_than_the_retention_are_swept(
    app: Application, stubs: Stubs, admin: Account, clock: ManualClock
) -> None:
    """AUDIT_RETENTION_DAYS (365 by default) bounds the table; the sweep keeps newer events."""
    old = await register(stubs)
    clock.advance(days=300)
    recent = await register(stubs)
    assert app.audit is not None
    assert await app.audit.purge_expired() == 0
    clock.advance(days=100)  # `old`'s events are 400 days old now, `recent`'s 100
    assert await app.audit.purge_expired() >= 1
    targets = {e.target_user_id for e in await _events(stubs, admin)}
    assert recent.user.id in targets
    assert old.user.id not in targets

"""The original REST API on HTTP_PORT: its routes, shapes, statuses and FastAPI-style errors.

Every test drives the real server (both databases) over real HTTP with httpx, as the original's
frontend (axios) or curl would, and checks what such a client sees; the deliberate differences
from the original (docs/rest.md) each have a test of their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import jwt
import pytest
from openapi_spec_validator import validate

from taskservice.http.rest.routes import MAX_LIMIT, MAX_SKIP
from taskservice.server import Application, build_server
from taskservice.v1 import (
    audit_service_pb2,
    task_list_pb2,
    task_list_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    user_service_pb2,
)
from taskservice.v1 import task_list_service_pb2 as lsvc
from tests.conftest import Stubs, make_settings
from tests.helpers import PASSWORD, bearer, make_admin, register, unique_email
from tests.proxy import TcpProxy

API = "/api/v1"
FRONTEND = "https://tasks.example.com"


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def rest_register(
    http: httpx.AsyncClient, email: str | None = None, **extra: Any
) -> dict[str, Any]:
    response = await http.post(
        f"{API}/auth/register",
        json={"email": email or unique_email(), "password": PASSWORD, **extra},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def rest_login(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await http.post(f"{API}/auth/login", data={"username": email, "password": password})


async def create_task(http: httpx.AsyncClient, token: str, **fields: Any) -> dict[str, Any]:
    response = await http.post(
        f"{API}/tasks/", json={"title": "a task", **fields}, headers=auth(token)
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# --- authentication ---------------------------------------------------------------------------


async def test_register_and_form_login_answer_the_original_token_shape(
    http: httpx.AsyncClient,
) -> None:
    email = unique_email()
    registered = await rest_register(http, email)
    assert set(registered) == {"access_token", "token_type", "user_id", "is_admin"}
    assert registered["token_type"] == "bearer"
    assert registered["is_admin"] is False
    login = await rest_login(http, email, PASSWORD)
    assert login.status_code == 200
    body = login.json()
    assert body["user_id"] == registered["user_id"]
    assert body["token_type"] == "bearer"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert isinstance(claims["exp"], int)
    assert claims["sub"] == str(body["user_id"])
    me = await http.get(f"{API}/users/me", headers=auth(body["access_token"]))
    assert me.json() == {
        "email": email,
        "is_active": True,
        "is_admin": False,
        "id": body["user_id"],
    }


async def test_a_wrong_password_is_401_with_the_original_detail(http: httpx.AsyncClient) -> None:
    email = unique_email()
    await rest_register(http, email)
    refused = await rest_login(http, email, "not the password")
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Incorrect email or password"}
    assert refused.headers["www-authenticate"] == "Bearer"


async def test_a_taken_email_is_400_email_already_registered(http: httpx.AsyncClient) -> None:
    email = unique_email()
    await rest_register(http, email)
    again = await http.post(f"{API}/auth/register", json={"email": email, "password": PASSWORD})
    assert again.status_code == 400
    assert again.json() == {"detail": "Email already registered"}


async def test_invalid_bodies_are_422_with_fastapi_items(http: httpx.AsyncClient) -> None:
    missing = await http.post(f"{API}/auth/register", json={"email": unique_email()})
    assert missing.status_code == 422
    assert missing.json() == {
        "detail": [{"type": "missing", "loc": ["body", "password"], "msg": "Field required"}]
    }
    bad_email = await http.post(
        f"{API}/auth/register", json={"email": "not-an-email", "password": PASSWORD}
    )
    assert bad_email.status_code == 422  # a service rule: one line of text naming the field
    assert bad_email.json()["detail"].startswith("email: ")
    wrong_type = await http.post(f"{API}/auth/register", json={"email": 5, "password": PASSWORD})
    assert wrong_type.json()["detail"][0] == {
        "type": "string_type",
        "loc": ["body", "email"],
        "msg": "Input should be a valid string",
    }
    not_json = await http.post(
        f"{API}/auth/register",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 422
    assert not_json.json()["detail"][0]["type"] == "json_invalid"
    assert not_json.json()["detail"][0]["loc"][0] == "body"
    empty = await http.post(f"{API}/auth/register", headers={"content-type": "application/json"})
    assert empty.json()["detail"] == [{"type": "missing", "loc": ["body"], "msg": "Field required"}]


async def test_the_login_form_needs_username_and_password(http: httpx.AsyncClient) -> None:
    response = await http.post(f"{API}/auth/login", data={"username": "", "password": "x"})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "missing", "loc": ["body", "username"], "msg": "Field required"}
    ]
    wrong_grant = await http.post(
        f"{API}/auth/login", data={"username": "a@b.com", "password": "x", "grant_type": "code"}
    )
    assert wrong_grant.status_code == 422
    assert wrong_grant.json()["detail"][0]["loc"] == ["body", "grant_type"]


async def test_self_registration_as_admin_creates_a_regular_user(
    app: Application, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    registered = await rest_register(http, is_admin=True)
    assert registered["is_admin"] is False
    me = await http.get(f"{API}/users/me", headers=auth(registered["access_token"]))
    assert me.json()["is_admin"] is False
    admin = await make_admin(app, stubs)
    by_admin = await http.post(
        f"{API}/auth/register",
        json={"email": unique_email(), "password": PASSWORD, "is_admin": True},
        headers=auth(admin.token),
    )
    assert by_admin.json()["is_admin"] is True


async def test_missing_or_bad_tokens_are_401_with_www_authenticate(
    http: httpx.AsyncClient,
) -> None:
    missing = await http.get(f"{API}/tasks/")
    assert missing.status_code == 401
    assert missing.json() == {"detail": "Not authenticated"}
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = await http.get(f"{API}/users/me", headers=auth("not.a.token"))
    assert forged.status_code == 401
    assert forged.json() == {"detail": "Could not validate credentials"}
    assert forged.headers["www-authenticate"] == "Bearer"
    scheme = await http.get(f"{API}/users/me", headers={"authorization": "Basic eDp5"})
    assert scheme.status_code == 401


async def test_a_token_from_rest_calls_grpc_and_a_grpc_token_calls_rest(
    http: httpx.AsyncClient, stubs: Stubs
) -> None:
    email = unique_email()
    await rest_register(http, email)
    token = (await rest_login(http, email, PASSWORD)).json()["access_token"]
    me = await stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=bearer(token))
    assert me.user.email == email
    account = await register(stubs)
    over_rest = await http.get(f"{API}/users/me", headers=auth(account.token))
    assert over_rest.json()["id"] == account.user.id


# --- tasks -----------------------------------------------------------------------------------


async def test_tasks_round_trip_in_the_original_shapes(http: httpx.AsyncClient) -> None:
    email = unique_email()
    user = await rest_register(http, email)
    token = user["access_token"]
    created = await create_task(http, token, title="write docs", description="rest.md")
    assert list(created) == [
        "title",
        "description",
        "status",
        "id",
        "owner_id",
        "created_at",
        "owner",
    ]
    assert created["status"] == "todo"
    assert created["owner_id"] == user["user_id"]
    assert created["owner"] == {
        "email": email,
        "is_active": True,
        "is_admin": False,
        "id": user["user_id"],
    }
    assert created["created_at"].endswith("Z")
    bare = await create_task(http, token, title="no description")
    assert bare["description"] is None
    task_url = f"{API}/tasks/{created['id']}"
    got = await http.get(task_url, headers=auth(token))
    assert got.json() == created
    put = await http.put(task_url, json={"title": "write the docs"}, headers=auth(token))
    assert put.status_code == 200
    assert put.json()["title"] == "write the docs"
    assert put.json()["description"] == "rest.md"  # PUT changes only what is sent, as before
    patched = await http.patch(task_url, json={"status": "in_progress"}, headers=auth(token))
    assert patched.json()["status"] == "in_progress"
    assert patched.json()["title"] == "write the docs"
    done = await http.put(
        task_url, json={"status": "done", "description": None}, headers=auth(token)
    )
    assert done.json()["status"] == "done"
    assert done.json()["description"] is None
    listed = await http.get(f"{API}/tasks/", headers=auth(token))
    assert listed.status_code == 200, listed.text
    assert [task["id"] for task in listed.json()] == [created["id"], bare["id"]]
    deleted = await http.delete(task_url, headers=auth(token))
    assert deleted.status_code == 200
    assert deleted.json() == {"message": "Task deleted successfully"}
    gone = await http.get(task_url, headers=auth(token))
    assert gone.status_code == 404
    assert gone.json() == {"detail": "Task not found"}
    again = await http.delete(task_url, headers=auth(token))
    assert again.status_code == 404
    edit_gone = await http.patch(task_url, json={"title": "x"}, headers=auth(token))
    assert edit_gone.status_code == 404
    listed = await http.get(f"{API}/tasks/", headers=auth(token))
    assert [task["id"] for task in listed.json()] == [bare["id"]]


async def test_a_deleted_task_is_in_the_trash_for_grpc_callers(
    http: httpx.AsyncClient, stubs: Stubs
) -> None:
    account = await register(stubs)
    task = await create_task(http, account.token)
    await http.delete(f"{API}/tasks/{task['id']}", headers=auth(account.token))
    trashed = await stubs.tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=task["id"]), metadata=account.metadata
    )
    assert trashed.task.HasField("delete_time")
    listed = await stubs.tasks.ListTasks(
        task_service_pb2.ListTasksRequest(show_deleted=True), metadata=account.metadata
    )
    assert [t.id for t in listed.tasks] == [task["id"]]


async def test_task_bodies_are_validated_like_the_original(http: httpx.AsyncClient) -> None:
    token = (await rest_register(http))["access_token"]
    bad_status = await http.post(
        f"{API}/tasks/", json={"title": "t", "status": "later"}, headers=auth(token)
    )
    assert bad_status.status_code == 422
    assert bad_status.json()["detail"] == [
        {
            "type": "enum",
            "loc": ["body", "status"],
            "msg": "Input should be 'todo', 'in_progress' or 'done'",
        }
    ]
    no_title = await http.post(f"{API}/tasks/", json={}, headers=auth(token))
    assert no_title.json()["detail"][0]["loc"] == ["body", "title"]
    # A service rule's violation is text, which the original frontend's task form shows (a list
    # there crashes it: it renders `detail` as it comes).
    blank = await http.post(f"{API}/tasks/", json={"title": "   "}, headers=auth(token))
    assert blank.status_code == 422
    assert blank.json() == {"detail": "title: 1 to 200 characters after trimming"}
    too_long = await http.post(f"{API}/tasks/", json={"title": "x" * 201}, headers=auth(token))
    assert too_long.status_code == 422
    assert too_long.json()["detail"].startswith("title: ")
    not_an_id = await http.get(f"{API}/tasks/abc", headers=auth(token))
    assert not_an_id.status_code == 422
    assert not_an_id.json()["detail"][0]["loc"] == ["path", "task_id"]
    assert not_an_id.json()["detail"][0]["type"] == "int_parsing"


async def test_other_users_task_is_not_found_like_a_missing_one(http: httpx.AsyncClient) -> None:
    owner = (await rest_register(http))["access_token"]
    other = (await rest_register(http))["access_token"]
    task = await create_task(http, owner)
    url = f"{API}/tasks/{task['id']}"
    missing_url = f"{API}/tasks/{task['id'] + 1000}"
    for method, body in (("GET", None), ("PUT", {"title": "x"}), ("PATCH", {"title": "x"})):
        foreign = await http.request(method, url, json=body, headers=auth(other))
        missing = await http.request(method, missing_url, json=body, headers=auth(other))
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json() == missing.json() == {"detail": "Task not found"}
    assert (await http.delete(url, headers=auth(other))).status_code == 404
    assert (await http.get(url, headers=auth(owner))).json()["title"] == "a task"


async def test_an_admin_lists_every_task_with_its_owner(
    app: Application, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    first = await rest_register(http)
    second = await rest_register(http)
    await create_task(http, first["access_token"], title="first's")
    await create_task(http, second["access_token"], title="second's")
    admin = await make_admin(app, stubs)
    listed = await http.get(f"{API}/tasks/", headers=auth(admin.token))
    assert listed.status_code == 200
    owners = {task["title"]: task["owner"]["id"] for task in listed.json()}
    assert owners == {"first's": first["user_id"], "second's": second["user_id"]}
    mine = await http.get(f"{API}/tasks/", headers=auth(first["access_token"]))
    assert [task["title"] for task in mine.json()] == ["first's"]


async def test_a_shared_lists_member_lists_and_edits_its_tasks_with_their_owner(
    http: httpx.AsyncClient, stubs: Stubs, channel: grpc.aio.Channel
) -> None:
    """A member of someone else's shared list sees its tasks over REST.

    They are owned by the list's owner (whom the member sees among the list's members); an
    editor changes them, a viewer may not.
    """
    lists = task_list_service_pb2_grpc.TaskListServiceStub(channel)
    owner, member, viewer = [await register(stubs) for _ in range(3)]
    shared = (
        await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=task_list_pb2.TaskList(title="Team")),
            metadata=owner.metadata,
        )
    ).task_list
    await lists.AddTaskListMember(
        lsvc.AddTaskListMemberRequest(
            task_list_id=shared.id,
            member=task_list_pb2.TaskListMember(
                user_id=member.user.id, role=task_list_pb2.TASK_LIST_ROLE_EDITOR
            ),
        ),
        metadata=owner.metadata,
    )
    await lists.AddTaskListMember(
        lsvc.AddTaskListMemberRequest(
            task_list_id=shared.id,
            member=task_list_pb2.TaskListMember(
                user_id=viewer.user.id, role=task_list_pb2.TASK_LIST_ROLE_VIEWER
            ),
        ),
        metadata=owner.metadata,
    )
    theirs = await stubs.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=task_pb2.Task(title="team task", task_list_id=shared.id)
        ),
        metadata=owner.metadata,
    )
    mine = await create_task(http, member.token, title="my own")
    owner_json = {
        "id": owner.user.id,
        "email": owner.user.email,
        "is_active": True,
        "is_admin": False,
    }
    listed = await http.get(f"{API}/tasks/", headers=auth(member.token))
    assert listed.status_code == 200, listed.text
    owners = {task["title"]: task["owner"] for task in listed.json()}
    assert owners == {"team task": owner_json, "my own": mine["owner"]}
    url = f"{API}/tasks/{theirs.task.id}"
    got = await http.get(url, headers=auth(member.token))
    assert got.status_code == 200, got.text
    assert got.json()["owner"] == owner_json
    edited = await http.put(url, json={"status": "done"}, headers=auth(member.token))
    assert edited.status_code == 200, edited.text
    assert (edited.json()["status"], edited.json()["owner"]) == ("done", owner_json)
    seen = await http.get(url, headers=auth(viewer.token))
    assert (seen.status_code, seen.json()["status"]) == (200, "done")
    refused = await http.put(url, json={"status": "todo"}, headers=auth(viewer.token))
    assert refused.status_code == 403
    assert refused.json() == {"detail": "this needs the EDITOR role on the task list"}


async def test_a_task_shows_its_owner_as_they_are_now(
    app: Application, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    """An owner is shown as they are now, whoever reads the task.

    The caller's own tasks show the caller as authenticated: a new email shows at once. An admin
    reading another user's task sees that user, not themself.
    """
    user = await rest_register(http)
    token = user["access_token"]
    task = await create_task(http, token)
    url = f"{API}/tasks/{task['id']}"
    admin = await make_admin(app, stubs)
    renamed = unique_email("renamed")
    changed = await http.patch(
        f"{API}/users/{user['user_id']}", json={"email": renamed}, headers=auth(admin.token)
    )
    assert changed.status_code == 200, changed.text
    owner = {"id": user["user_id"], "email": renamed, "is_active": True, "is_admin": False}
    assert (await http.get(url, headers=auth(token))).json()["owner"] == owner
    assert (await http.get(url, headers=auth(admin.token))).json()["owner"] == owner
    mine = await create_task(http, admin.token)
    assert mine["owner"] == {
        "id": admin.user.id,
        "email": admin.user.email,
        "is_active": True,
        "is_admin": True,
    }


async def test_skip_and_limit_window_the_list_up_to_their_bounds(http: httpx.AsyncClient) -> None:
    token = (await rest_register(http))["access_token"]
    ids = [(await create_task(http, token, title=f"t{n}"))["id"] for n in range(5)]
    window = await http.get(f"{API}/tasks/", params={"skip": 1, "limit": 2}, headers=auth(token))
    assert [task["id"] for task in window.json()] == ids[1:3]
    assert (await http.get(f"{API}/tasks/", params={"limit": 0}, headers=auth(token))).json() == []
    past = await http.get(f"{API}/tasks/", params={"skip": 4, "limit": 10}, headers=auth(token))
    assert [task["id"] for task in past.json()] == ids[4:]
    too_deep = await http.get(f"{API}/tasks/", params={"skip": MAX_SKIP + 1}, headers=auth(token))
    assert too_deep.status_code == 422
    assert too_deep.json()["detail"][0]["loc"] == ["query", "skip"]
    assert too_deep.json()["detail"][0]["type"] == "less_than_equal"
    too_long = await http.get(f"{API}/tasks/", params={"limit": MAX_LIMIT + 1}, headers=auth(token))
    assert too_long.status_code == 422
    negative = await http.get(f"{API}/tasks/", params={"skip": -1}, headers=auth(token))
    assert negative.json()["detail"][0]["type"] == "greater_than_equal"
    word = await http.get(f"{API}/tasks/", params={"limit": "many"}, headers=auth(token))
    assert word.json()["detail"][0]["type"] == "int_parsing"


# --- users -----------------------------------------------------------------------------------


async def test_user_administration_over_rest(
    app: Application, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    admin = await make_admin(app, stubs)
    user = await rest_register(http)
    await create_task(http, user["access_token"])
    users = await http.get(f"{API}/users/", headers=auth(admin.token))
    assert [u["id"] for u in users.json()] == [admin.user.id, user["user_id"]]
    window = await http.get(
        f"{API}/users/", params={"skip": 1, "limit": 5}, headers=auth(admin.token)
    )
    assert [u["id"] for u in window.json()] == [user["user_id"]]
    url = f"{API}/users/{user['user_id']}"
    got = await http.get(url, headers=auth(admin.token))
    assert got.json()["id"] == user["user_id"]
    promoted = await http.patch(url, json={"is_admin": True}, headers=auth(admin.token))
    assert promoted.json()["is_admin"] is True
    renamed = await http.patch(
        url, json={"email": "Renamed@Example.com"}, headers=auth(admin.token)
    )
    assert renamed.json()["email"] == "renamed@example.com"
    assert renamed.json()["is_admin"] is True
    deactivated = await http.patch(url, json={"is_active": False}, headers=auth(admin.token))
    assert deactivated.json()["is_active"] is False
    self_delete = await http.delete(f"{API}/users/{admin.user.id}", headers=auth(admin.token))
    assert self_delete.status_code == 400
    assert self_delete.json() == {"detail": "Cannot delete yourself"}
    deleted = await http.delete(url, headers=auth(admin.token))
    assert deleted.json() == {"message": "User deleted successfully"}
    missing = await http.get(url, headers=auth(admin.token))
    assert missing.status_code == 404
    assert missing.json() == {"detail": "User not found"}
    bad_email = await http.patch(
        f"{API}/users/{admin.user.id}", json={"email": "nope"}, headers=auth(admin.token)
    )
    assert bad_email.status_code == 422
    assert bad_email.json()["detail"].startswith("email: ")


async def test_user_administration_is_for_admins(http: httpx.AsyncClient) -> None:
    user = await rest_register(http)
    token = user["access_token"]
    url = f"{API}/users/{user['user_id']}"
    for method, path, body in (
        ("GET", f"{API}/users/", None),
        ("GET", url, None),
        ("PATCH", url, {"is_admin": True}),
        ("DELETE", url, None),
    ):
        refused = await http.request(method, path, json=body, headers=auth(token))
        assert refused.status_code == 403, (method, path)
        assert refused.json() == {"detail": "Insufficient permissions"}


# --- the HTTP around the routes ---------------------------------------------------------------


async def test_paths_redirect_and_refuse_as_fastapi_does(http: httpx.AsyncClient) -> None:
    redirect = await http.get(f"{API}/tasks")
    assert redirect.status_code == 307
    assert redirect.headers["location"].endswith(f"{API}/tasks/")
    unknown = await http.get(f"{API}/nothing")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Not Found"}
    wrong_method = await http.put(f"{API}/tasks/")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"detail": "Method Not Allowed"}


async def test_near_misses_of_a_route_are_answered_as_fastapi_does(
    http: httpx.AsyncClient,
) -> None:
    """Requests next to a route (a method it lacks, one segment more, a trailing slash, HEAD)."""
    user = await rest_register(http)
    headers = auth(user["access_token"])
    created = await http.post(f"{API}/tasks/", json={"title": "near"}, headers=headers)
    task_id = created.json()["id"]
    slash = await http.get(f"{API}/tasks/{task_id}/", headers=headers)
    assert slash.status_code == 307
    assert slash.headers["location"].endswith(f"{API}/tasks/{task_id}")
    deeper = await http.get(f"{API}/tasks/{task_id}/more", headers=headers)
    assert (deeper.status_code, deeper.json()) == (404, {"detail": "Not Found"})
    post_to_task = await http.post(f"{API}/tasks/{task_id}", json={}, headers=headers)
    assert post_to_task.status_code == 405
    assert set(post_to_task.headers["allow"].split(", ")) == {
        "GET",
        "HEAD",
        "PUT",
        "PATCH",
        "DELETE",
    }
    # `me` is a path of its own for GET only; PATCH reaches `/users/{user_id}` (admins only).
    patch_me = await http.patch(f"{API}/users/me", json={}, headers=headers)
    assert (patch_me.status_code, patch_me.json()) == (403, {"detail": "Insufficient permissions"})
    head = await http.head("/health")
    assert (head.status_code, head.content) == (200, b"")
    assert (await http.get(f"{API}/tasks/{task_id}", headers=headers)).json()["id"] == task_id


async def test_health_answers_as_the_original(app: Application, http: httpx.AsyncClient) -> None:
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "service": "backend"}
    await app.health.shutdown()
    assert (await http.get("/health")).status_code == 503


async def test_an_unexpected_error_is_500_with_only_a_request_id(
    app: Application, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = (await rest_register(http))["access_token"]

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    assert app.tasks is not None
    monkeypatch.setattr(app.tasks, "get_task", broken)
    response = await http.get(f"{API}/tasks/1", headers=auth(token), params=None)
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert response.json() == {"detail": f"internal error (request id {request_id})"}


async def test_a_database_outage_is_503(pg_database_url: str) -> None:
    """A real outage (the database's connections cut and refused) answers 503, never 500."""
    proxy, proxied_url = await TcpProxy.before_database(pg_database_url)
    app = await build_server(make_settings(proxied_url, db_connect_timeout_seconds=1.0))
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http:
            token = (await rest_register(http))["access_token"]
            await proxy.cut()
            for _ in range(3):  # the call that meets the outage, then those the gate refuses
                response = await http.get(f"{API}/tasks/", headers=auth(token))
                assert response.status_code == 503, response.text
                assert "database" in response.json()["detail"]
    finally:
        await app.stop(grace=None)
        await proxy.close()


async def test_an_oversize_body_is_413(database_url: str) -> None:
    app = await build_server(make_settings(database_url, max_message_bytes=1024))
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http:
            response = await http.post(
                f"{API}/auth/register", json={"email": "x" * 2000, "password": PASSWORD}
            )
        assert response.status_code == 413
        assert "detail" in response.json()
    finally:
        await app.stop(grace=None)


async def test_login_throttling_is_429_with_retry_after(database_url: str) -> None:
    settings = make_settings(database_url, login_max_failures_per_account=2)
    app = await build_server(settings)
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http:
            email = unique_email()
            await rest_register(http, email)
            for _ in range(2):
                assert (await rest_login(http, email, "wrong")).status_code == 401
            throttled = await rest_login(http, email, PASSWORD)
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1
    finally:
        await app.stop(grace=None)


async def test_each_call_is_logged_and_measured_as_its_rpc_with_protocol_rest(
    app: Application, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskservice.access")
    response = await http.get(f"{API}/users/me", headers={"x-request-id": "rest-call-1"})
    assert response.headers["x-request-id"] == "rest-call-1"
    [line] = [
        record for record in caplog.records if getattr(record, "request_id", None) == "rest-call-1"
    ]
    assert line.protocol == "rest"  # type: ignore[attr-defined]
    assert line.grpc_method == "GetMe"  # type: ignore[attr-defined]
    assert line.grpc_code == "UNAUTHENTICATED"  # type: ignore[attr-defined]
    handled = app.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "taskservice.v1.UserService",
            "grpc_method": "GetMe",
            "protocol": "rest",
            "grpc_code": "UNAUTHENTICATED",
        },
    )
    assert handled == 1.0
    generated = await http.get(f"{API}/users/me")
    assert generated.headers["x-request-id"]


async def test_rest_changes_are_audited_with_their_request_ids(
    app: Application, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    admin = await make_admin(app, stubs)
    user = await rest_register(http)
    deleted = await http.delete(
        f"{API}/users/{user['user_id']}",
        headers={**auth(admin.token), "x-request-id": "rest-audit-1"},
    )
    assert deleted.status_code == 200
    events = await stubs.audit.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(filter='event = "user_deleted"'),
        metadata=admin.metadata,
    )
    [event] = events.audit_events
    assert event.request_id == "rest-audit-1"
    assert event.actor_id == admin.user.id
    assert event.target_user_id == user["user_id"]


# --- CORS for a frontend on another origin ----------------------------------------------------


@pytest.fixture
async def cors_http(database_url: str) -> AsyncIterator[tuple[Application, httpx.AsyncClient]]:
    app = await build_server(make_settings(database_url, cors_allowed_origins=FRONTEND))
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
            yield app, client
    finally:
        await app.stop(grace=None)


async def test_preflights_allow_the_rest_methods_for_allowed_origins(
    cors_http: tuple[Application, httpx.AsyncClient],
) -> None:
    _, http = cors_http
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        allowed = await http.options(
            f"{API}/tasks/1",
            headers={
                "origin": FRONTEND,
                "access-control-request-method": method,
                "access-control-request-headers": "authorization,content-type",
            },
        )
        assert allowed.status_code == 200, method
        assert allowed.headers["access-control-allow-origin"] == FRONTEND
        assert method in allowed.headers["access-control-allow-methods"]
        headers = allowed.headers["access-control-allow-headers"].lower()
        assert "authorization" in headers
        assert "content-type" in headers
    refused = await http.options(
        f"{API}/tasks/1",
        headers={"origin": "https://evil.example.net", "access-control-request-method": "DELETE"},
    )
    assert "access-control-allow-origin" not in refused.headers


async def test_every_answer_carries_the_allow_origin_header_errors_included(
    cors_http: tuple[Application, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, http = cors_http
    origin = {"origin": FRONTEND}
    user = await http.post(
        f"{API}/auth/register",
        json={"email": unique_email(), "password": PASSWORD},
        headers=origin,
    )
    assert user.headers["access-control-allow-origin"] == FRONTEND
    token = user.json()["access_token"]
    headers = {**origin, **auth(token)}
    answers = {
        401: await http.get(f"{API}/tasks/", headers=origin),
        403: await http.get(f"{API}/users/", headers=headers),
        404: await http.get(f"{API}/tasks/999", headers=headers),
        422: await http.post(f"{API}/tasks/", json={}, headers=headers),
    }

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    assert app.tasks is not None
    monkeypatch.setattr(app.tasks, "get_task", broken)
    answers[500] = await http.get(f"{API}/tasks/1", headers=headers)
    for status, response in answers.items():
        assert response.status_code == status
        assert response.headers["access-control-allow-origin"] == FRONTEND, status
        assert "detail" in response.json()
    exposed = answers[401].headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed
    assert "www-authenticate" in exposed


# --- OpenAPI and Swagger UI ------------------------------------------------------------------


async def test_openapi_json_is_a_valid_openapi_31_document_of_every_route(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert operations == {
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/auth/login"),
        ("GET", "/api/v1/users/"),
        ("GET", "/api/v1/users/me"),
        ("GET", "/api/v1/users/{user_id}"),
        ("PATCH", "/api/v1/users/{user_id}"),
        ("DELETE", "/api/v1/users/{user_id}"),
        ("GET", "/api/v1/tasks/"),
        ("POST", "/api/v1/tasks/"),
        ("GET", "/api/v1/tasks/{task_id}"),
        ("PUT", "/api/v1/tasks/{task_id}"),
        ("PATCH", "/api/v1/tasks/{task_id}"),
        ("DELETE", "/api/v1/tasks/{task_id}"),
        ("GET", "/health"),
    }


async def test_docs_serve_swagger_ui_from_this_server_only(http: httpx.AsyncClient) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text
    assert "https://" not in page.text
    sources = [
        part.split('"', 1)[0]
        for part in page.text.split('src="')[1:] + page.text.split('href="')[1:]
    ]
    assert sources
    fetched = await asyncio.gather(*(http.get(source) for source in sources))
    for source, asset in zip(sources, fetched, strict=True):
        assert asset.status_code == 200, source
        assert asset.content, source
    init = await http.get("/docs/init.js")
    assert "/openapi.json" in init.text
    assert "validatorUrl: null" in init.text

"""The REST routes under hostile or unlucky input: cheap to refuse, never a 500, never a write.

Each case was a 500 or a stalled event loop before: a lone surrogate or a JSON bomb in a body,
a login form of a million fields, a stale token sent along with a registration (the original's
frontend does that), and a refusal the permission-denied metric did not count.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from taskservice.server import Application
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import permissions_pb2 as perms
from tests.conftest import Stubs
from tests.helpers import PASSWORD, make_admin, register, unique_email
from tests.test_permissions import _denials

API = "/api/v1"


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _tasks(http: httpx.AsyncClient, token: str) -> list[dict[str, object]]:
    listed = await http.get(f"{API}/tasks/", headers=_auth(token))
    assert listed.status_code == 200
    return listed.json()  # type: ignore[no-any-return]


async def test_lone_surrogates_and_deep_nesting_are_422_json_invalid_and_store_nothing(
    http: httpx.AsyncClient, stubs: Stubs
) -> None:
    member = await register(stubs)
    headers = {**_auth(member.token), "content-type": "application/json"}
    bodies = [
        b'{"title": "\\ud800"}',
        b'{"title": "ok", "description": "\\uDFFF tail"}',
        b"[" * 100_000,
        b'{"title": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    ]
    for body in bodies:
        created = await http.post(f"{API}/tasks/", content=body, headers=headers)
        assert created.status_code == 422, (body[:40], created.text)
        assert created.json()["detail"][0]["type"] == "json_invalid"
    registered = await http.post(
        f"{API}/auth/register",
        content=b'{"email": "%s", "password": "\\ud83d%s"}' % (unique_email().encode(), b"x" * 12),
        headers={"content-type": "application/json"},
    )
    assert registered.status_code == 422
    assert await _tasks(http, member.token) == []
    # An escaped character that is whole text is still fine.
    created = await http.post(
        f"{API}/tasks/", content=b'{"title": "caf\\u00e9 \\ud83d\\ude00"}', headers=headers
    )
    assert created.status_code == 200, created.text
    assert created.json()["title"] == "caf\u00e9 \U0001f600"


async def test_a_login_form_of_many_fields_or_bytes_is_refused_without_parsing_it(
    app: Application, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    member = await register(stubs)
    many = "&".join(["a=1"] * 2_000) + f"&username={member.user.email}&password={PASSWORD}"
    refused = await http.post(
        f"{API}/auth/login",
        content=many,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert refused.status_code == 422
    huge = await http.post(
        f"{API}/auth/login",
        content=b"username=" + b"a" * 20_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    # The usual form, OAuth 2's optional fields included, still signs in.
    fine = await http.post(
        f"{API}/auth/login",
        data={
            "grant_type": "password",
            "username": member.user.email,
            "password": PASSWORD,
            "scope": "",
            "client_id": "",
            "client_secret": "",
        },
    )
    assert fine.status_code == 200, fine.text
    # Several such forms at once do not hold up the other calls.
    health = asyncio.create_task(http.get("/health"))
    floods = [
        http.post(
            f"{API}/auth/login",
            content=many,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        for _ in range(3)
    ]
    assert {response.status_code for response in await asyncio.gather(*floods)} == {422}
    assert (await health).status_code == 200


async def test_a_stale_token_sent_with_a_registration_is_ignored_as_the_original_did(
    http: httpx.AsyncClient,
) -> None:
    registered = await http.post(
        f"{API}/auth/register",
        json={"email": unique_email(), "password": PASSWORD, "is_admin": False},
        headers=_auth("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"),
    )
    assert registered.status_code == 200, registered.text
    assert registered.json()["is_admin"] is False


async def test_a_rest_refusal_for_a_missing_permission_is_counted(
    app: Application, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    admin = await make_admin(app, stubs)
    created = await stubs.api_keys.CreateApiKey(
        keys_pb.CreateApiKeyRequest(
            display_name="reader", permissions=[perms.PERMISSION_TASKS_READ_ALL]
        ),
        metadata=admin.metadata,
    )
    method = "/taskservice.v1.UserService/ListUsers"
    before = _denials(app, method, "users.manage")
    refused = await http.get(f"{API}/users/", headers=_auth(created.secret))
    assert refused.status_code == 403
    assert _denials(app, method, "users.manage") == before + 1

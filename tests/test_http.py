"""The HTTP edge: the same API over Connect (JSON, binary, GET) and gRPC-Web, with real HTTP.

Each test drives the real server (both databases) with httpx, over HTTP/1.1 unless it says
HTTP/2, and checks what a browser or curl would see: codes, error details, request ids, CORS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from taskservice.server import Application, build_server
from taskservice.v1 import (
    auth_service_pb2,
    task_pb2,
    task_service_pb2,
    user_service_pb2,
)
from tests.conftest import Stubs, make_settings
from tests.helpers import PASSWORD, fails, register, unique_email
from tests.http_client import (
    GrpcWebReply,
    auth_headers,
    connect_failure,
    connect_json,
    connect_proto,
    get_url,
    grpc_web,
    grpc_web_failure,
    grpc_web_stream,
    merged_metadata,
)

AUTH = "/taskservice.v1.AuthService"
USERS = "/taskservice.v1.UserService"
TASKS = "/taskservice.v1.TaskService"
HEALTH = "/grpc.health.v1.Health/Check"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


async def _register_over_http(http: httpx.AsyncClient) -> tuple[int, str]:
    response = await connect_json(
        http, f"{AUTH}/Register", {"email": unique_email(), "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return int(body["user"]["id"]), body["accessToken"]


async def test_connect_json_registers_logs_in_creates_and_reads_back(
    http: httpx.AsyncClient,
) -> None:
    email = unique_email()
    registered = await connect_json(
        http, f"{AUTH}/Register", {"email": email, "password": PASSWORD}
    )
    assert registered.status_code == 200
    login = await connect_json(http, f"{AUTH}/Login", {"email": email, "password": PASSWORD})
    assert login.status_code == 200
    token = login.json()["accessToken"]
    created = await connect_json(
        http,
        f"{TASKS}/CreateTask",
        {"task": {"title": "write the HTTP edge", "priority": "TASK_PRIORITY_HIGH"}},
        **auth_headers(token),
    )
    assert created.status_code == 200, created.text
    task = created.json()["task"]
    assert task["title"] == "write the HTTP edge"
    assert task["ownerId"] == registered.json()["user"]["id"]
    listed = await connect_json(http, f"{TASKS}/ListTasks", {}, **auth_headers(token))
    assert [t["id"] for t in listed.json()["tasks"]] == [task["id"]]


async def test_read_only_methods_answer_cacheable_get_requests(http: httpx.AsyncClient) -> None:
    user_id, token = await _register_over_http(http)
    created = await connect_json(
        http, f"{TASKS}/CreateTask", {"task": {"title": "t"}}, **auth_headers(token)
    )
    task_id = created.json()["task"]["id"]
    headers = auth_headers(token)
    got = await http.get(get_url(f"{TASKS}/GetTask", {"id": task_id}), headers=headers)
    assert got.status_code == 200
    assert got.json()["task"]["id"] == task_id
    batch = await http.get(get_url(f"{TASKS}/BatchGetTasks", {"ids": [task_id]}), headers=headers)
    assert [t["id"] for t in batch.json()["tasks"]] == [task_id]
    listed = await http.get(get_url(f"{TASKS}/ListTasks", {"pageSize": 5}), headers=headers)
    assert [t["id"] for t in listed.json()["tasks"]] == [task_id]
    me = await http.get(get_url(f"{USERS}/GetMe", {}), headers=headers)
    assert me.json()["user"]["id"] == str(user_id)


async def test_methods_with_side_effects_refuse_get(http: httpx.AsyncClient) -> None:
    _, token = await _register_over_http(http)
    url = get_url(f"{TASKS}/CreateTask", {"task": {"title": "t"}})
    response = await http.get(url, headers=auth_headers(token))
    assert response.status_code == 405
    listed = await connect_json(http, f"{TASKS}/ListTasks", {}, **auth_headers(token))
    assert listed.json().get("tasks", []) == []


async def test_connect_binary_unary_uses_the_protobuf_messages(http: httpx.AsyncClient) -> None:
    _, token = await _register_over_http(http)
    response = await connect_proto(
        http,
        f"{TASKS}/CreateTask",
        task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="binary")),
        **auth_headers(token),
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    task = task_service_pb2.CreateTaskResponse.FromString(response.content).task
    assert task.title == "binary"
    assert task.id > 0


async def test_grpc_web_unary_returns_the_message_and_ok_trailers(
    http: httpx.AsyncClient,
) -> None:
    reply = await grpc_web(
        http,
        f"{AUTH}/Register",
        auth_service_pb2.RegisterRequest(email=unique_email(), password=PASSWORD),
        x_request_id="web-1",
    )
    assert reply.http_status == 200
    assert reply.grpc_status == 0
    assert merged_metadata(reply, "x-request-id") == ["web-1"]
    [message] = reply.messages
    token = auth_service_pb2.RegisterResponse.FromString(message).access_token
    created = await grpc_web(
        http,
        f"{TASKS}/CreateTask",
        task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="from grpc-web")),
        **auth_headers(token),
    )
    assert created.grpc_status == 0
    task = task_service_pb2.CreateTaskResponse.FromString(created.messages[0]).task
    assert task.title == "from grpc-web"


async def test_a_task_made_on_one_edge_is_read_on_the_other(
    http: httpx.AsyncClient, stubs: Stubs
) -> None:
    account = await register(stubs)
    made = await stubs.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="over gRPC")),
        metadata=account.metadata,
    )
    got = await http.get(
        get_url(f"{TASKS}/GetTask", {"id": made.task.id}), headers=auth_headers(account.token)
    )
    assert got.json()["task"]["etag"] == made.task.etag
    patched = await connect_json(
        http,
        f"{TASKS}/PatchTask",
        {"task": {"id": made.task.id, "title": "over Connect"}, "updateMask": "title"},
        **auth_headers(account.token),
    )
    assert patched.status_code == 200, patched.text
    again = await stubs.tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=made.task.id), metadata=account.metadata
    )
    assert again.task.title == "over Connect"


async def test_validation_errors_carry_the_same_details_on_every_protocol(
    http: httpx.AsyncClient, stubs: Stubs
) -> None:
    account = await register(stubs)
    bad = task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title=" ", priority=99))
    on_grpc = await fails(
        stubs.tasks.CreateTask(bad, metadata=account.metadata), grpc.StatusCode.INVALID_ARGUMENT
    )
    headers = auth_headers(account.token)
    json_reply = await connect_json(
        http, f"{TASKS}/CreateTask", {"task": {"title": " ", "priority": 99}}, **headers
    )
    assert json_reply.status_code == 400
    binary_reply = await connect_proto(http, f"{TASKS}/CreateTask", bad, **headers)
    assert binary_reply.status_code == 400
    web_reply = await grpc_web(http, f"{TASKS}/CreateTask", bad, **headers)
    assert web_reply.http_status == 200
    assert web_reply.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for failure in (
        connect_failure(json_reply),
        connect_failure(binary_reply),
        grpc_web_failure(web_reply),
    ):
        assert failure.code == "INVALID_ARGUMENT"
        assert failure.message == on_grpc.message
        assert failure.reason == on_grpc.reason == "INVALID_ARGUMENT"
        assert failure.fields == on_grpc.fields
        assert set(failure.fields) == {"task.title", "task.priority"}


async def test_not_found_is_the_same_on_every_protocol(http: httpx.AsyncClient) -> None:
    _, token = await _register_over_http(http)
    headers = auth_headers(token)
    post = await connect_json(http, f"{TASKS}/GetTask", {"id": 424242}, **headers)
    get = await http.get(get_url(f"{TASKS}/GetTask", {"id": 424242}), headers=headers)
    web = await grpc_web(
        http, f"{TASKS}/GetTask", task_service_pb2.GetTaskRequest(id=424242), **headers
    )
    assert post.status_code == get.status_code == 404
    failures = [connect_failure(post), connect_failure(get), grpc_web_failure(web)]
    assert {(f.code, f.reason, f.message) for f in failures} == {
        (failures[0].code, failures[0].reason, failures[0].message)
    }
    assert failures[0].code == "NOT_FOUND"


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [(None, "TOKEN_MISSING"), ("Basic abc", "TOKEN_MALFORMED"), ("Bearer not.a.jwt", None)],
)
async def test_a_token_fault_is_unauthenticated_on_every_protocol(
    http: httpx.AsyncClient, stubs: Stubs, authorization: str | None, reason: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    metadata = tuple(headers.items())
    on_grpc = await fails(
        stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=metadata),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert reason is None or on_grpc.reason == reason
    post = await connect_json(http, f"{USERS}/GetMe", {}, **headers)
    get = await http.get(get_url(f"{USERS}/GetMe", {}), headers=headers)
    web = await grpc_web(http, f"{USERS}/GetMe", user_service_pb2.GetMeRequest(), **headers)
    assert post.status_code == get.status_code == 401
    for failure in (connect_failure(post), connect_failure(get), grpc_web_failure(web)):
        assert failure.code == "UNAUTHENTICATED"
        assert (failure.reason, failure.message) == (on_grpc.reason, on_grpc.message)


@pytest.mark.parametrize("outcome", ["ok", "error"])
async def test_the_request_id_comes_back_once_as_a_header_on_every_protocol(
    http: httpx.AsyncClient, outcome: str
) -> None:
    """Once across headers and trailers, which clients merge: never "id, id" in an error's metadata.

    The error is GetMe's UNAUTHENTICATED for a malformed token, as a browser hits it.
    """
    _, token = await _register_over_http(http)
    headers = auth_headers(token if outcome == "ok" else "not.a.jwt")
    me = user_service_pb2.GetMeRequest()
    replies: dict[str, httpx.Response | GrpcWebReply] = {
        "json": await connect_json(http, f"{USERS}/GetMe", {}, **headers, x_request_id="id-json"),
        "proto": await connect_proto(
            http, f"{USERS}/GetMe", me, **headers, x_request_id="id-proto"
        ),
        "get": await http.get(
            get_url(f"{USERS}/GetMe", {}), headers={**headers, "x-request-id": "id-get"}
        ),
        "grpc-web": await grpc_web(
            http, f"{USERS}/GetMe", me, **headers, x_request_id="id-grpc-web"
        ),
    }
    for name, reply in replies.items():
        if isinstance(reply, GrpcWebReply):
            assert reply.grpc_status == (0 if outcome == "ok" else UNAUTHENTICATED), name
        else:
            assert reply.status_code == (200 if outcome == "ok" else 401), name
        assert merged_metadata(reply, "x-request-id") == [f"id-{name}"], name
        assert reply.headers.get_list("x-request-id") == [f"id-{name}"], name


async def test_an_unusable_request_id_is_replaced_by_a_generated_one(
    http: httpx.AsyncClient,
) -> None:
    made = await connect_json(http, f"{USERS}/GetMe", {}, x_request_id="not valid!")
    [generated] = merged_metadata(made, "x-request-id")
    assert generated != "not valid!"
    assert len(generated) > 8
    web = await grpc_web(http, f"{USERS}/GetMe", user_service_pb2.GetMeRequest())
    assert len(merged_metadata(web, "x-request-id")) == 1


async def test_an_unexpected_error_is_internal_with_a_request_id_and_no_internals(
    app: Application,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, token = await _register_over_http(http)
    secret = "secret-internal-detail-3f9a"

    async def broken(*_args: object) -> object:
        raise RuntimeError(secret)

    assert app.tasks is not None
    monkeypatch.setattr(app.tasks, "get_task", broken)
    caplog.set_level(logging.ERROR, logger="taskservice")
    headers = auth_headers(token)
    post = await connect_json(http, f"{TASKS}/GetTask", {"id": 1}, **headers)
    get = await http.get(get_url(f"{TASKS}/GetTask", {"id": 1}), headers=headers)
    binary = await connect_proto(
        http, f"{TASKS}/GetTask", task_service_pb2.GetTaskRequest(id=1), **headers
    )
    web = await grpc_web(http, f"{TASKS}/GetTask", task_service_pb2.GetTaskRequest(id=1), **headers)
    for response in (post, get, binary):
        assert response.status_code == 500
        assert secret not in response.text
        assert secret not in str(response.headers)
    assert secret not in web.headers.get("grpc-message", "")
    failures = [connect_failure(post), connect_failure(get), connect_failure(binary)]
    failures.append(grpc_web_failure(web))
    for failure in failures:
        request_id = failure.error_metadata["request_id"]
        assert failure.code == "INTERNAL"
        assert failure.reason == "INTERNAL"
        assert failure.message == f"internal error (request id {request_id})"
        logged = [r for r in caplog.records if request_id in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].exc_info is not None


def test_a_response_that_cannot_be_encoded_is_internal_without_its_text() -> None:
    from taskservice.http.codecs import safe_codecs

    for codec in safe_codecs():
        with pytest.raises(ConnectError) as caught:
            codec.encode(object())
        assert caught.value.code is Code.INTERNAL
        assert caught.value.message.startswith("internal error (request id ")
        assert "object" not in caught.value.message


async def test_a_body_that_is_not_the_message_is_invalid_argument_on_request(
    http: httpx.AsyncClient,
) -> None:
    _, token = await _register_over_http(http)
    headers = auth_headers(token)
    binary = await http.post(
        f"{TASKS}/GetTask",
        content=b"\xff\xff\xff",
        headers={"content-type": "application/proto", **headers},
    )
    not_json = await http.post(
        f"{TASKS}/GetTask",
        content=b"{not json",
        headers={"content-type": "application/json", **headers},
    )
    for response in (binary, not_json):
        assert response.status_code == 400
        failure = connect_failure(response)
        assert failure.code == "INVALID_ARGUMENT"
        assert list(failure.fields) == ["request"]


async def test_oversize_bodies_are_refused_on_every_protocol(database_url: str) -> None:
    app = await build_server(make_settings(database_url, max_message_bytes=1024))
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http:
            big = {"email": unique_email(), "password": "p" * 2000}
            connect = await connect_json(http, f"{AUTH}/Register", big)
            assert connect.status_code == 429
            assert connect_failure_code(connect) == "RESOURCE_EXHAUSTED"
            web = await grpc_web(http, f"{AUTH}/Register", auth_service_pb2.RegisterRequest(**big))
            assert web.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            login = await connect_json(
                http, f"{AUTH}/Login", {"email": big["email"], "password": PASSWORD}
            )
            assert login.status_code == 401  # nothing was registered
    finally:
        await app.stop(grace=None)


def connect_failure_code(response: httpx.Response) -> str:
    return str(response.json()["code"]).upper()


async def test_h2c_with_prior_knowledge_serves_connect(app: Application) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{app.http_port}", http1=False, http2=True
    ) as http:
        response = await connect_json(
            http, f"{AUTH}/Register", {"email": unique_email(), "password": PASSWORD}
        )
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200
        web = await grpc_web(http, f"{USERS}/GetMe", user_service_pb2.GetMeRequest())
        assert web.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_answers_sent_before_the_body_is_read_keep_the_http2_connection(
    app: Application,
) -> None:
    """A refusal sent while the client still sends its body: that body must not end the connection.

    The refused calls (no token; a body over MAX_MESSAGE_BYTES) are answered before their
    bodies are read, so the body's late DATA frames reach a closed stream; the connection and
    the calls multiplexed on it go on.
    """
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{app.http_port}", http1=False, http2=True
    ) as http:
        email = unique_email()
        signed_in = await connect_json(
            http, f"{AUTH}/Register", {"email": email, "password": PASSWORD}
        )
        token = signed_in.json()["accessToken"]
        title = "x" * 200_000
        oversized = "x" * (app.settings.max_message_bytes + 1)

        async def refused() -> list[int]:
            no_token = await connect_json(http, f"{TASKS}/CreateTask", {"task": {"title": title}})
            rest_no_token = await http.post("/api/v1/tasks/", json={"title": title})
            too_big = await connect_json(
                http, f"{TASKS}/CreateTask", {"task": {"title": oversized}}, **auth_headers(token)
            )
            return [no_token.status_code, rest_no_token.status_code, too_big.status_code]

        async def served() -> int:
            login = await connect_json(
                http, f"{AUTH}/Login", {"email": email, "password": PASSWORD}
            )
            return login.status_code

        statuses, login = await asyncio.gather(refused(), served())
        assert statuses[:2] == [401, 401]
        assert statuses[2] in (413, 429)
        assert login == 200
        after = await connect_json(http, f"{USERS}/GetMe", {}, **auth_headers(token))
        assert (after.status_code, after.json()["user"]["email"]) == (200, email)
        assert after.http_version == "HTTP/2"


async def test_each_call_is_logged_and_measured_once_with_its_protocol(
    app: Application, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskservice.access")
    await connect_json(http, f"{USERS}/GetMe", {}, x_request_id="log-connect")
    await grpc_web(http, f"{USERS}/GetMe", user_service_pb2.GetMeRequest(), x_request_id="log-web")
    lines = {
        record.request_id: record  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == "taskservice.access"
    }
    assert lines["log-connect"].protocol == "connect"  # type: ignore[attr-defined]
    assert lines["log-web"].protocol == "grpc-web"  # type: ignore[attr-defined]
    for record in (lines["log-connect"], lines["log-web"]):
        assert record.grpc_method == "GetMe"  # type: ignore[attr-defined]
        assert record.grpc_code == "UNAUTHENTICATED"  # type: ignore[attr-defined]
    handled = app.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "taskservice.v1.UserService",
            "grpc_method": "GetMe",
            "protocol": "connect",
            "grpc_code": "UNAUTHENTICATED",
        },
    )
    assert handled == 1.0


async def test_health_check_over_http_answers_probes_by_status_code(
    app: Application, http: httpx.AsyncClient
) -> None:
    ready = await http.get(get_url(HEALTH, {"service": "readiness"}))
    assert ready.status_code == 200
    assert ready.json() == {"status": "SERVING"}
    posted = await connect_json(http, HEALTH, {"service": "liveness"})
    assert posted.json() == {"status": "SERVING"}
    unknown = await http.get(get_url(HEALTH, {"service": "no-such-name"}))
    assert unknown.status_code == 404
    await app.health.shutdown()
    draining = await http.get(get_url(HEALTH, {"service": "readiness"}))
    assert draining.status_code == 503
    assert connect_failure(draining).reason == "NOT_SERVING"


async def test_unknown_paths_are_not_found(http: httpx.AsyncClient) -> None:
    assert (await http.post("/taskservice.v1.NoService/Nothing", json={})).status_code == 404
    assert (await http.get("/")).status_code == 404


CORS_ORIGIN = "https://tasks.example.com"


@pytest.fixture
async def cors_app(database_url: str) -> AsyncIterator[Application]:
    app = await build_server(make_settings(database_url, cors_allowed_origins=CORS_ORIGIN))
    await app.start()
    yield app
    await app.stop(grace=None)


def _preflight(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,connect-protocol-version",
    }


async def test_cors_answers_preflights_from_allowed_origins_only(cors_app: Application) -> None:
    base = f"http://127.0.0.1:{cors_app.http_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        allowed = await http.options(f"{TASKS}/CreateTask", headers=_preflight(CORS_ORIGIN))
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == CORS_ORIGIN
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        refused = await http.options(
            f"{TASKS}/CreateTask", headers=_preflight("https://evil.example.net")
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        call = await connect_json(http, f"{USERS}/GetMe", {}, origin=CORS_ORIGIN)
        assert call.headers["access-control-allow-origin"] == CORS_ORIGIN
        exposed = call.headers["access-control-expose-headers"].lower()
        for name in ("x-request-id", "grpc-status-details-bin"):
            assert name in exposed
        other = await connect_json(http, f"{USERS}/GetMe", {}, origin="https://evil.example.net")
        assert "access-control-allow-origin" not in other.headers


async def test_no_origin_is_allowed_by_default(http: httpx.AsyncClient) -> None:
    refused = await http.options(f"{TASKS}/CreateTask", headers=_preflight(CORS_ORIGIN))
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_http_port_off_serves_grpc_only(database_url: str) -> None:
    app = await build_server(make_settings(database_url, http_port="off"))
    assert app.http is None
    assert app.http_port is None
    await app.database.engine.dispose()
    app.hasher.close()
    await app.server.stop(None)


async def test_a_busy_http_port_stops_the_start_with_a_clear_error(database_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            await build_server(make_settings(database_url, http_host="127.0.0.1", http_port=port))


async def test_watch_tasks_streams_changes_over_grpc_web_until_the_token_is_revoked(
    http: httpx.AsyncClient, stubs: Stubs
) -> None:
    """A browser's WatchTasks: a bookmark, then each change as it commits, read frame by frame.

    Changing the password revokes the stream's token: the stream ends UNAUTHENTICATED within
    the 5 seconds the API promises, with the reason in the trailers, as on native gRPC.
    """
    account = await register(stubs)
    headers = auth_headers(account.token)
    request = task_service_pb2.WatchTasksRequest()
    async with grpc_web_stream(
        http, f"{TASKS}/WatchTasks", request, **headers, x_request_id="watch-1"
    ) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["x-request-id"] == "watch-1"  # before any message
        opening = await stream.next_message()
        assert opening is not None
        bookmark = task_service_pb2.WatchTasksResponse.FromString(opening)
        assert not bookmark.HasField("change")
        created = await connect_json(
            http, f"{TASKS}/CreateTask", {"task": {"title": "watched"}}, **headers
        )
        assert created.status_code == 200, created.text
        message = None
        async with asyncio.timeout(10):
            while message is None or not message.HasField("change"):
                raw = await stream.next_message()
                assert raw is not None, stream.trailers
                message = task_service_pb2.WatchTasksResponse.FromString(raw)
        assert message.revision == bookmark.revision + 1
        assert message.change.type == task_service_pb2.TASK_CHANGE_TYPE_CREATED
        assert message.change.task.title == "watched"
        assert message.change.task.id == int(created.json()["task"]["id"])

        await stubs.auth.ChangePassword(
            auth_service_pb2.ChangePasswordRequest(
                current_password=PASSWORD, new_password=PASSWORD + "-new"
            ),
            metadata=account.metadata,
        )
        async with asyncio.timeout(5):
            while await stream.next_message() is not None:
                pass
        failure = stream.failure()
        assert merged_metadata(stream, "x-request-id") == ["watch-1"]
    assert (failure.code, failure.reason) == ("UNAUTHENTICATED", "TOKEN_REVOKED")


def _hold_get_task(
    app: Application, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Make GetTask wait inside the service: (set once a call is held, set to let it go on)."""
    entered, release = asyncio.Event(), asyncio.Event()
    assert app.tasks is not None
    real_get_task = app.tasks.get_task

    async def held(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return await real_get_task(*args)

    monkeypatch.setattr(app.tasks, "get_task", held)
    return entered, release


async def test_stopping_refuses_new_connections_and_lets_calls_in_flight_finish(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await build_server(make_settings(database_url))
    await app.start()
    stopped = False
    try:
        base = f"http://127.0.0.1:{app.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            _, token = await _register_over_http(http)
            entered, release = _hold_get_task(app, monkeypatch)
            in_flight = asyncio.ensure_future(
                connect_json(http, f"{TASKS}/GetTask", {"id": 1}, **auth_headers(token))
            )
            await asyncio.wait_for(entered.wait(), 10)
            stopping = asyncio.ensure_future(app.stop(grace=10))
            async with asyncio.timeout(10):  # the listener closes at once
                while True:
                    try:
                        async with httpx.AsyncClient(base_url=base) as late:
                            await late.post(HEALTH, json={})
                    except httpx.ConnectError:
                        break
                    except (httpx.RemoteProtocolError, httpx.ReadError):
                        pass  # connected as the listener closed: closed unanswered, not served
                    await asyncio.sleep(0.01)
            release.set()
            response = await in_flight
            assert response.status_code == 404  # it ran to the end: no task 1 for this user
            await asyncio.wait_for(stopping, 10)
            stopped = True
    finally:
        if not stopped:
            await app.stop(grace=None)


async def test_calls_over_max_concurrent_rpcs_are_refused_at_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await build_server(make_settings(database_url, max_concurrent_rpcs=1))
    await app.start()
    try:
        base = f"http://127.0.0.1:{app.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            _, token = await _register_over_http(http)
            entered, release = _hold_get_task(app, monkeypatch)
            headers = auth_headers(token)
            in_flight = asyncio.ensure_future(
                connect_json(http, f"{TASKS}/GetTask", {"id": 1}, **headers)
            )
            await asyncio.wait_for(entered.wait(), 10)
            refused = await connect_json(http, f"{USERS}/GetMe", {}, **headers)
            assert refused.status_code == 429
            assert connect_failure(refused).reason == "TOO_MANY_CALLS"
            release.set()
            assert (await in_flight).status_code == 404
            assert (await connect_json(http, f"{USERS}/GetMe", {}, **headers)).status_code == 200
    finally:
        await app.stop(grace=None)


@pytest.mark.parametrize(
    "content_type", ["application/grpc", "application/grpc+proto", "application/grpc-web-text"]
)
async def test_native_grpc_and_grpc_web_text_are_refused_with_where_to_go(
    http: httpx.AsyncClient, content_type: str
) -> None:
    response = await http.post(
        f"{USERS}/GetMe", content=b"\x00\x00\x00\x00\x00", headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert "GRPC_PORT" in response.text
    assert "ASGI" not in response.text
    assert "grpc-message" not in response.headers

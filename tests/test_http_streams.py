"""Server streams on the HTTP edge, through the same calls layer as every unary call.

A stand-in stream method, served exactly as the generated applications serve theirs
(ServicerMethods over a servicer whose method is an async generator, behind the edge's
interceptors), shows what WatchTasks cannot on demand: the caller is authenticated before the
first message, messages arrive as they are yielded, a domain error mid-stream ends it with the
same status and details, and the call is logged once with its type. WatchTasks itself over
gRPC-Web is tested in tests/test_http.py.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import AsyncIterator, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from connectrpc.interceptor import Interceptor
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.server import ConnectASGIApplication, Endpoint

from taskservice import errors
from taskservice.calls.authentication import current_principal
from taskservice.http.app import Router, ServicerMethods, connect_options, with_cors
from taskservice.http.calls import GateAndAuthenticate, ObserveAndMapErrors
from taskservice.http.server import HttpServer, bind_socket
from taskservice.server import Application
from taskservice.v1 import user_pb2, user_service_pb2
from tests.conftest import Stubs
from tests.helpers import register
from tests.http_client import auth_headers, frame, grpc_web, grpc_web_failure, merged_metadata

SERVICE = "test.v1.StreamService"
PATH = f"/{SERVICE}/Count"

_COUNT = MethodInfo(
    name="Count",
    service_name=SERVICE,
    input=user_service_pb2.GetUserRequest,
    output=user_pb2.User,
    idempotency_level=IdempotencyLevel.UNKNOWN,
    stream_type=StreamType.SERVER_STREAM,
)


class CountingServicer:
    """A stand-in streaming servicer: up to 3 messages naming the caller; past 3, an error."""

    async def Count(  # noqa: N802 - the RPC's name
        self, request: user_service_pb2.GetUserRequest, context: object
    ) -> AsyncIterator[user_pb2.User]:
        """Messages as the stream's servicer yields them."""
        principal = current_principal.get()
        assert principal is not None
        for number in range(min(request.id, 3)):
            yield user_pb2.User(id=principal.user_id, email=f"message-{number}@example.com")
        if request.id > 3:
            raise errors.NotFound("TASK_NOT_FOUND", "no more messages")


class StreamApplication(ConnectASGIApplication[Any]):
    """One server-stream endpoint, shaped like a generated application."""

    def __init__(self, service: Any, **options: Any) -> None:
        super().__init__(service=service, endpoints=_endpoints, **options)

    @property
    def path(self) -> str:
        """The service's URL prefix."""
        return f"/{SERVICE}"


def _endpoints(service: Any) -> Mapping[str, Endpoint[Any, Any]]:
    return {PATH: Endpoint.server_stream(method=_COUNT, function=service.count)}


@pytest.fixture
async def stream_edge(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    auth = app.auth
    assert auth is not None
    interceptors: Iterable[Interceptor] = (
        ObserveAndMapErrors(app.metrics, on_database_error=app.health.suspect),
        GateAndAuthenticate(auth, is_ready=lambda: app.health.ready),
    )
    descriptor: Any = SimpleNamespace(methods=[SimpleNamespace(name="Count")])
    methods = ServicerMethods(CountingServicer(), descriptor)
    application = StreamApplication(
        methods, **connect_options(interceptors, app.settings.max_message_bytes)
    )
    server = HttpServer(
        with_cors(Router([application]), ()),
        app.settings,
        bind_socket("127.0.0.1", 0, reuse_port=False),
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            yield client
    finally:
        await server.stop(grace=None)


async def test_a_server_stream_over_grpc_web_sends_each_message_then_ok(
    stream_edge: httpx.AsyncClient, stubs: Stubs
) -> None:
    account = await register(stubs)
    reply = await grpc_web(
        stream_edge,
        PATH,
        user_service_pb2.GetUserRequest(id=3),
        **auth_headers(account.token),
        x_request_id="stream-1",
    )
    assert reply.grpc_status == 0
    users = [user_pb2.User.FromString(message) for message in reply.messages]
    assert [u.email for u in users] == [f"message-{n}@example.com" for n in range(3)]
    assert {u.id for u in users} == {account.user.id}
    assert merged_metadata(reply, "x-request-id") == ["stream-1"]
    assert reply.headers["x-request-id"] == "stream-1"


async def test_a_server_stream_refuses_a_missing_token_before_any_message(
    stream_edge: httpx.AsyncClient,
) -> None:
    reply = await grpc_web(stream_edge, PATH, user_service_pb2.GetUserRequest(id=3))
    assert reply.messages == []
    failure = grpc_web_failure(reply)
    assert (failure.code, failure.reason) == ("UNAUTHENTICATED", "TOKEN_MISSING")


async def test_an_error_mid_stream_ends_it_with_the_same_status_and_details(
    stream_edge: httpx.AsyncClient, stubs: Stubs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskservice.access")
    account = await register(stubs)
    reply = await grpc_web(
        stream_edge,
        PATH,
        user_service_pb2.GetUserRequest(id=4),
        **auth_headers(account.token),
        x_request_id="stream-2",
    )
    assert len(reply.messages) == 3
    failure = grpc_web_failure(reply)
    assert (failure.code, failure.reason, failure.message) == (
        "NOT_FOUND",
        "TASK_NOT_FOUND",
        "no more messages",
    )
    assert merged_metadata(reply, "x-request-id") == ["stream-2"]
    [line] = [r for r in caplog.records if getattr(r, "request_id", None) == "stream-2"]
    assert line.protocol == "grpc-web"  # type: ignore[attr-defined]
    assert line.grpc_code == "NOT_FOUND"  # type: ignore[attr-defined]
    assert line.user_id == account.user.id  # type: ignore[attr-defined]


async def test_a_server_stream_over_connect_json_ends_with_an_end_stream_message(
    stream_edge: httpx.AsyncClient, stubs: Stubs
) -> None:
    account = await register(stubs)
    body = frame(json.dumps({"id": "4"}).encode())
    response = await stream_edge.post(
        PATH,
        content=body,
        headers={
            "content-type": "application/connect+json",
            "x-request-id": "stream-3",
            **auth_headers(account.token),
        },
    )
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["stream-3"]
    envelopes = []
    data = response.content
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        envelopes.append((flags, json.loads(data[5 : 5 + length])))
        data = data[5 + length :]
    *messages, (end_flags, end) = envelopes
    assert [m["email"] for _f, m in messages] == [f"message-{n}@example.com" for n in range(3)]
    assert end_flags & 0x02
    assert end["error"]["code"] == "not_found"
    assert [d["type"] for d in end["error"]["details"]] == ["google.rpc.ErrorInfo"]
    # The end-stream message's metadata is the trailers, which clients merge with the headers.
    assert "x-request-id" not in end.get("metadata", {})

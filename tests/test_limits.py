"""Transport limits: an oversize request is RESOURCE_EXHAUSTED and nothing else breaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from taskservice.server import Application, build_server
from taskservice.v1 import auth_service_pb2, task_pb2, user_service_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import make_settings, stubs_for
from tests.helpers import PASSWORD, fails, register
from tests.http_client import auth_headers, connect_json, grpc_web_stream
from tests.watching import DEADLINE, read_until

LIMIT = 64 * 1024


@pytest.fixture
async def small_app(database_url: str) -> AsyncIterator[Application]:
    application = await build_server(make_settings(database_url, max_message_bytes=LIMIT))
    await application.start()
    yield application
    await application.stop(grace=None)


async def test_an_oversize_request_is_resource_exhausted_and_the_server_carries_on(
    small_app: Application,
) -> None:
    async with stubs_for(small_app) as stubs:
        account = await register(stubs)
        oversize = pb.CreateTaskRequest(task=task_pb2.Task(title="big", description="d" * LIMIT))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stubs.tasks.CreateTask(oversize, metadata=account.metadata)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        listed = await stubs.tasks.ListTasks(pb.ListTasksRequest(), metadata=account.metadata)
        assert list(listed.tasks) == []
        me = await stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)
        assert me.user.id == account.user.id


async def test_calls_beyond_the_concurrency_limit_are_resource_exhausted(
    database_url: str,
) -> None:
    settings = make_settings(database_url, max_concurrent_rpcs=2, bcrypt_rounds=12)
    application = await build_server(settings)
    await application.start()
    try:
        async with stubs_for(application) as stubs:
            account = await register(stubs)
            login = auth_service_pb2.LoginRequest(email=account.user.email, password=PASSWORD)
            results = await asyncio.gather(
                *(stubs.auth.Login(login) for _ in range(6)), return_exceptions=True
            )
    finally:
        await application.stop(grace=None)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert 1 <= len(results) - len(refused) <= 2


#: Watch streams held open against a MAX_CONCURRENT_RPCS of 2, on each protocol.
WATCHERS = 5


def _reasons(errors: list[grpc.aio.AioRpcError]) -> set[str]:
    reasons = set()
    for error in errors:
        details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
        for detail in status_pb2.Status.FromString(details).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reasons.add(info.reason)
    return reasons


async def test_watch_streams_do_not_use_up_the_unary_call_limit(database_url: str) -> None:
    settings = make_settings(database_url, max_concurrent_rpcs=2, bcrypt_rounds=12)
    application = await build_server(settings)
    await application.start()
    try:
        async with (
            stubs_for(application) as stubs,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.http_port}") as http,
            contextlib.AsyncExitStack() as open_streams,
        ):
            account = await register(stubs)
            watch = pb.WatchTasksRequest()
            grpc_streams = [
                stubs.tasks.WatchTasks(watch, metadata=account.metadata) for _ in range(WATCHERS)
            ]
            for stream in grpc_streams:  # each has started: its first bookmark came
                await read_until(stream, lambda responses: len(responses) == 1)
            for _ in range(WATCHERS):
                web_stream = await open_streams.enter_async_context(
                    grpc_web_stream(
                        http,
                        "/taskservice.v1.TaskService/WatchTasks",
                        watch,
                        **auth_headers(account.token),
                    )
                )
                async with asyncio.timeout(DEADLINE):
                    assert await web_stream.next_message() is not None

            for _ in range(3):  # one at a time: every unary call has room on both edges
                me = await stubs.users.GetMe(
                    user_service_pb2.GetMeRequest(), metadata=account.metadata
                )
                assert me.user.id == account.user.id
                response = await connect_json(
                    http, "/taskservice.v1.UserService/GetMe", {}, **auth_headers(account.token)
                )
                assert response.status_code == 200, response.text

            # Unary calls beyond the limit are still refused, streams or not.
            login = auth_service_pb2.LoginRequest(email=account.user.email, password=PASSWORD)
            results = await asyncio.gather(
                *(stubs.auth.Login(login) for _ in range(6)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert _reasons(refused) == {"TOO_MANY_CALLS"}
            assert 1 <= len(results) - len(refused) <= 2
            for stream in grpc_streams:  # the watchers were never disturbed
                assert not stream.done()
                stream.cancel()
    finally:
        await application.stop(grace=None)


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x02\xff\xfe\x12\x08password",  # LoginRequest.email is not UTF-8
        b"\xff\xff\xff\xff",  # not protobuf at all
    ],
    ids=["invalid-utf8", "garbage"],
)
async def test_malformed_requests_are_invalid_argument(app: Application, body: bytes) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        login = channel.unary_unary("/taskservice.v1.AuthService/Login")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await login(body)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeError" not in (error.value.details() or "")


async def test_nul_characters_are_refused_in_stored_text(app: Application) -> None:
    async with stubs_for(app) as stubs:
        account = await register(stubs)
        for task, request_id, field in [
            (task_pb2.Task(title="a\x00b"), "", "task.title"),
            (task_pb2.Task(title="ok", description="a\x00b"), "", "task.description"),
            (task_pb2.Task(title="ok"), "r\x00", "request_id"),
        ]:
            failure = await fails(
                stubs.tasks.CreateTask(
                    pb.CreateTaskRequest(task=task, request_id=request_id),
                    metadata=account.metadata,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert set(failure.fields) == {field}
        listed = await stubs.tasks.ListTasks(pb.ListTasksRequest(), metadata=account.metadata)
        assert list(listed.tasks) == []

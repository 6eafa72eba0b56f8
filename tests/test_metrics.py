"""Prometheus metrics on METRICS_PORT: the gRPC server metrics, the pool and watch gauges."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest

from taskservice.server import Application, build_server
from taskservice.v1 import auth_service_pb2, user_service_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import make_settings, stubs_for
from tests.helpers import PASSWORD, register
from tests.watching import DEADLINE, ended_with, read_until


@pytest.fixture
async def metered_app(database_url: str) -> AsyncIterator[Application]:
    settings = make_settings(database_url, metrics_host="127.0.0.1", metrics_port=0)
    application = await build_server(settings)
    await application.start()
    yield application
    await application.stop(grace=None)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def test_metrics_count_calls_by_method_and_code(metered_app: Application) -> None:
    assert metered_app.metrics_port
    async with stubs_for(metered_app) as stubs:
        account = await register(stubs)
        for _ in range(3):
            await stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs.users.GetMe(user_service_pb2.GetMeRequest())
    text = await asyncio.to_thread(_scrape, metered_app.metrics_port)
    labels = (
        'grpc_method="GetMe",grpc_service="taskservice.v1.UserService",'
        'grpc_type="unary",protocol="grpc"'
    )
    assert f"grpc_server_started_total{{{labels}}} 4.0" in text
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}} 3.0' in text
    assert f'grpc_server_handled_total{{grpc_code="UNAUTHENTICATED",{labels}}} 1.0' in text
    assert f"grpc_server_handling_seconds_count{{{labels}}} 4.0" in text
    assert "taskservice_db_pool_checked_out 0.0" in text


async def test_metrics_are_off_without_a_port(app: Application) -> None:
    assert app.metrics_port is None


def _value(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} is not exported"
    return float(found.group(1))


async def _scrape_until(port: int, name: str, wanted: float) -> str:
    """The first scrape where `name` reads `wanted` (the credential checks run every 2 s)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            text = await asyncio.to_thread(_scrape, port)
            if _value(text, name) == wanted:
                return text
            await asyncio.sleep(0.1)


async def test_watch_streams_and_their_credential_checks_are_exported(
    metered_app: Application,
) -> None:
    port = metered_app.metrics_port
    assert port
    text = await asyncio.to_thread(_scrape, port)
    assert _value(text, "taskservice_watch_streams") == 0
    assert _value(text, "taskservice_watch_credentials") == 0
    ended_before = _value(text, "taskservice_watch_streams_ended_total")
    async with stubs_for(metered_app) as stubs:
        account = await register(stubs)
        streams = [
            stubs.tasks.WatchTasks(pb.WatchTasksRequest(), metadata=account.metadata)
            for _ in range(3)
        ]
        for stream in streams:
            await read_until(stream, lambda r: len(r) == 1)
        text = await asyncio.to_thread(_scrape, port)
        assert _value(text, "taskservice_watch_streams") == 3
        assert _value(text, "taskservice_watch_credentials") == 1  # one token, one check a pass
        checks = _value(text, "taskservice_watch_credential_checks_total")
        await _scrape_until(port, "taskservice_watch_credential_checks_total", checks + 1)
        # Changing the password revokes the token: the next pass ends its three streams.
        await stubs.auth.ChangePassword(
            auth_service_pb2.ChangePasswordRequest(
                current_password=PASSWORD, new_password="another good password"
            ),
            metadata=account.metadata,
        )
        for stream in streams:
            _, error = await ended_with(stream)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        text = await _scrape_until(port, "taskservice_watch_streams", 0)
    assert _value(text, "taskservice_watch_credentials") == 0
    assert _value(text, "taskservice_watch_streams_ended_total") == ended_before + 3

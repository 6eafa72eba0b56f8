"""Prometheus metrics on METRICS_PORT: the gRPC server metrics and the pool gauges."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest

from taskservice.server import Application, build_server
from taskservice.v1 import user_service_pb2
from tests.conftest import make_settings, stubs_for
from tests.helpers import register


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

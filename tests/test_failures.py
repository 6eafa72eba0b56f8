"""Failure behaviour: health follows the database both ways; calls fail fast while it is away.

The database is taken away for real: the server talks to PostgreSQL through a TCP proxy that
the test cuts (connections dropped, new ones refused) and restores, with no server restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from sqlalchemy.engine import make_url

from taskservice.server import Application, build_server
from taskservice.v1 import user_service_pb2
from tests.conftest import Stubs, make_settings, stubs_for
from tests.helpers import fails, register
from tests.proxy import TcpProxy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The issue's bound for health to follow the database, either way.
FLIP_SECONDS = 5.0


@pytest.fixture
async def proxied(pg_database_url: str) -> AsyncIterator[tuple[Application, TcpProxy]]:
    url = make_url(pg_database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied_url = url.set(port=proxy.port).render_as_string(hide_password=False)
    application = await build_server(make_settings(proxied_url))
    await application.start()
    yield application, proxy
    await application.stop(grace=None)
    await proxy.close()


async def _status(stubs: Stubs, service: str) -> int:
    response = await stubs.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return response.status


async def test_health_flips_both_ways_and_calls_fail_fast_during_the_outage(
    proxied: tuple[Application, TcpProxy],
) -> None:
    application, proxy = proxied
    async with stubs_for(application) as stubs:
        account = await register(stubs)
        watch = stubs.health.Watch(health_pb2.HealthCheckRequest(service="readiness"))
        assert (await watch.read()).status == SERVING

        await proxy.cut()
        cut_at = time.perf_counter()
        started = time.perf_counter()
        failure = await fails(
            stubs.users.GetMe(
                user_service_pb2.GetMeRequest(), metadata=account.metadata, timeout=10
            ),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert time.perf_counter() - started < 2.0, "calls must fail fast, not wait on the pool"
        assert failure.reason == "DATABASE_UNAVAILABLE"
        update = await _read_within(watch, FLIP_SECONDS - (time.perf_counter() - cut_at))
        assert update == NOT_SERVING
        for name in ("", "readiness", "taskservice.v1.TaskService"):
            assert await _status(stubs, name) == NOT_SERVING
        assert await _status(stubs, "liveness") == SERVING
        started = time.perf_counter()
        await fails(
            stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert time.perf_counter() - started < 0.5

        await proxy.restore()
        assert await _read_within(watch, FLIP_SECONDS) == SERVING
        watch.cancel()
        me = await stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)
        assert me.user.id == account.user.id


async def _read_within(watch: grpc.aio.UnaryStreamCall, seconds: float) -> int:
    response = await asyncio.wait_for(watch.read(), seconds)
    return response.status

"""Fixtures: real servers built exactly as `taskservice serve` builds them, over real databases.

Every test that asks for `app` (or anything built on it) runs twice: once on SQLite, once on the
machine's PostgreSQL. Each run gets a freshly migrated database of its own, cloned from a template
migrated once per session (a file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL),
so tests never see each other's rows and cost little to set up.

PostgreSQL is found through TEST_POSTGRES_DSN (default: postgres@127.0.0.1:5432). When it cannot be
reached, its runs are skipped locally and fail under CI=true: CI never skips it silently.

Async tests run on the event loop the server runs on (`taskservice.loop`: uvloop where it is
installed), so what the suite shows is what `taskservice serve` does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from taskservice.config import Settings
from taskservice.db.migrations import upgrade
from taskservice.loop import loop_factory
from taskservice.server import Application, build_server
from taskservice.v1 import (
    api_key_service_pb2_grpc,
    audit_service_pb2_grpc,
    auth_service_pb2_grpc,
    task_service_pb2_grpc,
    user_service_pb2_grpc,
)

PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_SIGNING_KEY = "test-signing-key-" + "k" * 48
BACKENDS = ("sqlite", "postgresql")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The server's own event loop for every async test (pytest-asyncio's hook)."""
    return {"server_loop": loop_factory()}


def _pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _pg_admin(*statements: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


class PostgresDatabases:
    """Creates a migrated template once, then a fresh clone of it per test; drops them all."""

    def __init__(self) -> None:
        self.prefix = f"taskservice_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template: str | None = None
        self.error: str | None = None

    def _ensure_template(self) -> str:
        if self.template is None and self.error is None:
            name = f"{self.prefix}_template"
            try:
                asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self.error = f"PostgreSQL at {PG_ADMIN_DSN} is not reachable: {exc}"
            else:
                self.template = name
                upgrade(_pg_url(name))
        if self.error is not None:
            if IN_CI:
                pytest.fail(f"{self.error} (PostgreSQL is mandatory when CI=true)")
            pytest.skip(self.error)
        assert self.template is not None
        return self.template

    def create(self) -> str:
        """A new migrated database; returns its name."""
        template = self._ensure_template()
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return name

    def drop(self, name: str) -> None:
        """Drop a database even if a leaked connection still points at it."""
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        """Drop the template."""
        if self.template is not None:
            self.drop(self.template)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def pg_database_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = postgres_databases.create()
    yield _pg_url(name)
    postgres_databases.drop(name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated database for one test, on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "taskservice.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    return request.getfixturevalue("pg_database_url")


def make_settings(database_url: str, **overrides: object) -> Settings:
    """Settings for a test server: loopback, an ephemeral port, no `.env`, a fixed signing key."""
    values: dict[str, object] = {
        "database_url": database_url,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "jwt_secret_key": TEST_SIGNING_KEY,
        "bcrypt_rounds": 4,  # the minimum: tests check behaviour, not bcrypt's cost
        # Every test client calls from 127.0.0.1: only the throttling tests want real limits.
        "register_max_per_address": 1_000_000,
        "login_max_failures_per_address": 1_000_000,
        "login_max_failures_per_account": 1_000_000,
        "http_port": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


class ManualClock:
    """A clock that stands still until the test moves it.

    It is the time credentials, throttling and the audit trail go by. It starts at the real
    present, so JWTs (which go by real time) agree with it.
    """

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        """The time the test has set."""
        return self.now

    def advance(self, **delta: float) -> None:
        """Move time forward by `timedelta(**delta)`."""
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def app(settings: Settings, clock: ManualClock) -> AsyncIterator[Application]:
    """A started server, stopped (calls cancelled, pool closed) after the test."""
    application = await build_server(settings, clock=clock)
    await application.start()
    yield application
    await application.stop(grace=None)


@pytest.fixture
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as open_channel:
        yield open_channel


@dataclass(frozen=True)
class Stubs:
    """Generated client stubs for every service, over one channel."""

    auth: auth_service_pb2_grpc.AuthServiceStub
    users: user_service_pb2_grpc.UserServiceStub
    tasks: task_service_pb2_grpc.TaskServiceStub
    health: health_pb2_grpc.HealthStub
    api_keys: api_key_service_pb2_grpc.ApiKeyServiceStub
    audit: audit_service_pb2_grpc.AuditServiceStub

    @classmethod
    def over(cls, channel: grpc.aio.Channel) -> Stubs:
        """Stubs for every service over `channel`."""
        return cls(
            auth=auth_service_pb2_grpc.AuthServiceStub(channel),
            users=user_service_pb2_grpc.UserServiceStub(channel),
            tasks=task_service_pb2_grpc.TaskServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            api_keys=api_key_service_pb2_grpc.ApiKeyServiceStub(channel),
            audit=audit_service_pb2_grpc.AuditServiceStub(channel),
        )


@asynccontextmanager
async def stubs_for(app: Application) -> AsyncIterator[Stubs]:
    """Stubs over a fresh channel to `app`, for tests that run a server of their own."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield Stubs.over(channel)


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs.over(channel)

"""The per-call authorisation state: cached on PostgreSQL, invalidated across processes.

On SQLite it is cached only by a server that owns the file alone (one worker).

Two servers on one PostgreSQL database stand in for two replicas (or workers): a change made
through one must reach the other's cache through NOTIFY, and a lost LISTEN connection must turn
the cache off rather than let it go stale.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest

from taskservice.server import Application, build_server
from taskservice.v1 import user_service_pb2 as pb
from tests.conftest import PG_ADMIN_DSN, Stubs, make_settings, stubs_for
from tests.helpers import Account, make_admin, register

#: Bound on how long a notification may take to reach another process on this machine.
PROPAGATION_SECONDS = 5.0


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float) -> float:
    """Poll `check` until it holds; return how long that took, or fail after `seconds`."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > seconds:
            pytest.fail(f"condition not met within {seconds}s")
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


@pytest.fixture
async def replicas(pg_database_url: str) -> AsyncIterator[tuple[Application, Application]]:
    """Two servers sharing one PostgreSQL database, as two replicas would."""
    apps = [await build_server(make_settings(pg_database_url)) for _ in range(2)]
    for application in apps:
        await application.start()
    yield apps[0], apps[1]
    for application in apps:
        await application.stop(grace=None)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database for one test."""
    path = tmp_path / "taskservice.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


async def _deactivate(stubs: Stubs, admin: Account, member: Account) -> None:
    await stubs.users.UpdateUser(
        pb.UpdateUserRequest(
            user={"id": member.user.id, "is_active": False},
            update_mask={"paths": ["is_active"]},
        ),
        metadata=admin.metadata,
    )


async def _refused(stubs: Stubs, metadata: tuple[tuple[str, str]]) -> bool:
    try:
        await stubs.users.GetMe(pb.GetMeRequest(), metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


async def test_a_deactivation_on_one_replica_reaches_the_others_cache(
    replicas: tuple[Application, Application],
) -> None:
    first, second = replicas
    assert first.auth_states.caching
    assert second.auth_states.caching
    async with stubs_for(first) as via_first, stubs_for(second) as via_second:
        admin = await make_admin(first, via_first)
        member = await register(via_first)
        await via_second.users.GetMe(pb.GetMeRequest(), metadata=member.metadata)  # now cached
        await _deactivate(via_first, admin, member)
        await _eventually(lambda: _refused(via_second, member.metadata), PROPAGATION_SECONDS)


async def test_a_promotion_on_one_replica_reaches_the_others_cache(
    replicas: tuple[Application, Application],
) -> None:
    first, second = replicas
    async with stubs_for(first) as via_first, stubs_for(second) as via_second:
        admin = await make_admin(first, via_first)
        member = await register(via_first)
        with pytest.raises(grpc.aio.AioRpcError):  # cached as a regular user on the second
            await via_second.users.ListUsers(pb.ListUsersRequest(), metadata=member.metadata)
        await via_first.users.UpdateUser(
            pb.UpdateUserRequest(
                user={"id": member.user.id, "is_admin": True}, update_mask={"paths": ["is_admin"]}
            ),
            metadata=admin.metadata,
        )

        async def lists() -> bool:
            try:
                await via_second.users.ListUsers(pb.ListUsersRequest(), metadata=member.metadata)
            except grpc.aio.AioRpcError:
                return False
            return True

        await _eventually(lists, PROPAGATION_SECONDS)


async def test_an_email_change_on_one_replica_reaches_the_others_cache(
    replicas: tuple[Application, Application],
) -> None:
    """The cached state carries the email (a REST task's owner is shown from it): it follows."""
    first, second = replicas
    async with stubs_for(first) as via_first:
        admin = await make_admin(first, via_first)
        member = await register(via_first)
        assert (await second.auth_states.get(member.user.id)).email == member.user.email
        await via_first.users.UpdateUser(
            pb.UpdateUserRequest(
                user={"id": member.user.id, "email": "renamed@example.com"},
                update_mask={"paths": ["email"]},
            ),
            metadata=admin.metadata,
        )

        async def renamed() -> bool:
            state = await second.auth_states.get(member.user.id)
            return state is not None and state.email == "renamed@example.com"

        await _eventually(renamed, PROPAGATION_SECONDS)


async def test_losing_the_listen_connection_turns_the_cache_off_until_it_is_back(
    pg_database_url: str,
) -> None:
    app = await build_server(make_settings(pg_database_url))
    await app.start()
    try:
        await _lose_and_regain_the_listen_connection(app)
    finally:
        await app.stop(grace=None)


async def _lose_and_regain_the_listen_connection(app: Application) -> None:
    assert app.auth_states.caching
    database = app.database.engine.url.database
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND query LIKE 'LISTEN%auth_state_changed%'",
            database,
        )
    finally:
        await admin.close()
    assert killed == 1

    async def cache_off() -> bool:
        return not app.auth_states.caching

    async def cache_on() -> bool:
        return app.auth_states.caching

    await _eventually(cache_off, PROPAGATION_SECONDS)
    await _eventually(cache_on, 15.0)


async def test_the_sole_sqlite_server_caches_and_still_refuses_a_deactivation_at_once(
    sqlite_url: str,
) -> None:
    application = await build_server(make_settings(sqlite_url))
    await application.start()
    try:
        assert application.auth_states.caching
        async with stubs_for(application) as stubs:
            admin = await make_admin(application, stubs)
            member = await register(stubs)
            await stubs.users.GetMe(pb.GetMeRequest(), metadata=member.metadata)  # now cached
            await _deactivate(stubs, admin, member)
            assert await _refused(stubs, member.metadata)  # the very next call
    finally:
        await application.stop(grace=None)


async def test_sqlite_workers_share_the_file_so_they_do_not_cache(sqlite_url: str) -> None:
    application = await build_server(make_settings(sqlite_url, workers=2))
    try:
        assert not application.auth_states.caching
    finally:
        await application.stop(grace=None)

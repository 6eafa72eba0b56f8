"""One async engine per process and the session factory every service uses."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from taskservice.config import Settings

#: How long SQLite waits for another writer's lock before giving up, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 5_000


def create_engine(settings: Settings) -> AsyncEngine:
    """Build the process's engine: a bounded, pre-pinged pool on PostgreSQL; WAL mode on SQLite."""
    url = settings.sqlalchemy_url
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, echo=settings.debug)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        echo=settings.debug,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    """Enforce foreign keys (off by default in SQLite) and let readers run beside one writer."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit, so services can return them."""
    return async_sessionmaker(engine, expire_on_commit=False)

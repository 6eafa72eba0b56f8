"""Apply Alembic migrations from code, for `taskservice migrate`, the container and the tests.

`wait_for_database` lets `taskservice migrate --wait-seconds N` start together with its database
(docker compose, a Kubernetes Job): PostgreSQL refuses connections for a while after its container
starts, and a migration that fails at once would leave the service exited.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import pool
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.db import outages

logger = logging.getLogger(__name__)

#: The repository's Alembic directory; the package is installed editable, next to it.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

#: Pause after the first refused attempt; it doubles after each one, up to the maximum.
FIRST_RETRY_DELAY_SECONDS = 0.1
MAX_RETRY_DELAY_SECONDS = 1.0


class DatabaseNotReady(Exception):
    """The database did not accept a connection in time, or refused it for a lasting reason.

    The message is one line, fit for an operator, with the URL's password hidden.
    """


def alembic_config(database_url: URL | str) -> Config:
    """An Alembic config aimed at `database_url`, independent of the working directory."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"Alembic migrations not found at {MIGRATIONS_DIR}")
    config = Config(MIGRATIONS_DIR.parent / "alembic.ini")
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: URL | str, revision: str = "head") -> None:
    """Bring the schema up to `revision`. Runs its own event loop: call it outside one."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: URL | str, revision: str) -> None:
    """Take the schema down to `revision` (`base` removes every table)."""
    command.downgrade(alembic_config(database_url), revision)


def wait_for_database(
    database_url: URL | str, wait_seconds: float, *, connect_timeout: float
) -> None:
    """Return once the database answers `SELECT 1`; retry refusals for up to `wait_seconds`.

    One attempt is always made (`wait_seconds` 0 waits for nothing). Refused connections, unknown
    hosts, timeouts and a server still starting up are retried with a short backoff until
    `wait_seconds` have passed; each attempt may take up to `connect_timeout`. Errors that waiting
    cannot fix (bad credentials, a missing database) end the wait at once. Either way the failure
    is a `DatabaseNotReady`. Runs its own event loop: call it outside one.
    """
    asyncio.run(_wait_for_database(make_url(database_url), wait_seconds, connect_timeout))


async def _wait_for_database(url: URL, wait_seconds: float, connect_timeout: float) -> None:
    shown_url = url.render_as_string(hide_password=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    delay = FIRST_RETRY_DELAY_SECONDS
    logged_reason: str | None = None
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        while True:
            try:
                async with asyncio.timeout(connect_timeout), engine.connect() as connection:
                    await connection.exec_driver_sql("SELECT 1")
            except Exception as exc:
                reason = _describe(exc)
                if not _is_transient(exc):
                    raise DatabaseNotReady(
                        f"cannot use the database at {shown_url}: {reason}"
                    ) from exc
                remaining = deadline - loop.time()
                if remaining <= 0:
                    waited = f" within {wait_seconds:g} s" if wait_seconds > 0 else ""
                    raise DatabaseNotReady(
                        f"the database at {shown_url} did not accept connections{waited}: {reason}"
                    ) from exc
                if reason != logged_reason:
                    logger.warning(
                        "database at %s not accepting connections yet, waiting up to %.1f s "
                        "more: %s",
                        shown_url,
                        remaining,
                        reason,
                    )
                    logged_reason = reason
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
            else:
                if logged_reason is not None:
                    logger.info("database at %s accepts connections", shown_url)
                return
    finally:
        await engine.dispose()


def _is_transient(exc: Exception) -> bool:
    """Whether waiting may cure `exc`: the server is not (yet) there, or not ready.

    Every error here comes from connecting, so any OSError (refused, unknown host, timed out)
    is the server not being there yet; the rest is the one classification of outages.
    """
    return isinstance(exc, OSError) or outages.is_outage(exc)


def _describe(exc: Exception) -> str:
    """One line naming the driver's error, without SQLAlchemy's statement and help link."""
    cause: BaseException = exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        cause = exc.orig.__cause__ or exc.orig
    text = " ".join(str(cause).split())
    if isinstance(cause, TimeoutError) and not text:
        text = "timed out"
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__

"""Alembic owns the schema: it goes up, down and up again, and matches the models exactly."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.db.migrations import alembic_config, downgrade, upgrade


def _table_names(database_url: str) -> set[str]:
    async def read() -> set[str]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as connection:
                return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_upgrade_downgrade_upgrade_round_trips(database_url: str) -> None:
    assert {"users", "tasks"} <= _table_names(database_url)
    downgrade(database_url, "base")
    assert _table_names(database_url) <= {"alembic_version"}
    upgrade(database_url)
    assert {"users", "tasks", "alembic_version"} <= _table_names(database_url)


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    command.check(alembic_config(database_url))


def test_emails_differing_only_in_case_cannot_both_be_stored(database_url: str) -> None:
    async def insert_twice() -> None:
        engine = create_async_engine(database_url)
        insert = text(
            "INSERT INTO users (email, password_hash, is_active, is_admin, create_time, "
            "update_time) VALUES (:email, 'x', true, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        )
        try:
            async with engine.begin() as connection:
                await connection.execute(insert, {"email": "ada@example.com"})
            for spelling in ("ada@example.com", "Ada@Example.com"):
                with pytest.raises(IntegrityError):
                    async with engine.begin() as connection:
                        await connection.execute(insert, {"email": spelling})
        finally:
            await engine.dispose()

    asyncio.run(insert_twice())

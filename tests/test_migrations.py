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


def _execute(database_url: str, sql: str, rows: list[dict[str, object]]) -> None:
    """Run one statement for each row, in one transaction: seeding a database mid-migration."""

    async def run() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                for row in rows:
                    await connection.execute(text(sql), row)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _fetch(database_url: str, sql: str) -> list[tuple[object, ...]]:
    async def run() -> list[tuple[object, ...]]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as connection:
                return [tuple(row) for row in await connection.execute(text(sql))]
        finally:
            await engine.dispose()

    return asyncio.run(run())


_USER = (
    "INSERT INTO users (id, email, password_hash, is_active, is_admin, token_version, "
    "create_time, update_time) VALUES (:id, :email, 'x', true, false, 0, "
    "'2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')"
)


def test_tasks_from_before_priorities_and_labels_survive_the_upgrade(database_url: str) -> None:
    """Revision 0005 on a database with data: nothing lost, done tasks get a completion time."""
    downgrade(database_url, "0004")
    _execute(database_url, _USER, [{"id": 1, "email": "a@example.com"}])
    _execute(
        database_url,
        "INSERT INTO tasks (id, owner_id, title, description, status, version, create_time, "
        "update_time) VALUES (:id, 1, 'kept', '', :status, 3, '2026-01-02 00:00:00+00', "
        "'2026-01-03 00:00:00+00')",
        [{"id": 1, "status": "todo"}, {"id": 2, "status": "done"}],
    )
    upgrade(database_url)
    (todo, done) = _fetch(
        database_url,
        "SELECT id, title, status, version, priority, labels, complete_time FROM tasks ORDER BY id",
    )
    assert todo[:6] == (1, "kept", "todo", 3, 0, "[]")
    assert todo[6] is None
    assert done[:6] == (2, "kept", "done", 3, 0, "[]")
    assert str(done[6]).startswith("2026-01-03 00:00:00")


def test_labels_from_before_their_owner_id_get_their_tasks_owner(database_url: str) -> None:
    """Revision 0011 on a database with labels: each key row gets the owner of its task."""
    downgrade(database_url, "0010")
    _execute(database_url, _USER, [{"id": n, "email": f"u{n}@example.com"} for n in (1, 2)])
    tasks = [{"id": 10, "owner": 1}, {"id": 11, "owner": 2}, {"id": 12, "owner": 2}]
    _execute(
        database_url,
        "INSERT INTO tasks (id, owner_id, title, description, status, version, priority, labels, "
        "create_time, update_time) VALUES (:id, :owner, 'kept', '', 'todo', 1, 0, '[\"home\"]', "
        "'2026-01-02 00:00:00+00', '2026-01-03 00:00:00+00')",
        tasks,
    )
    _execute(database_url, "INSERT INTO task_labels (task_id, key) VALUES (:id, 'home')", tasks)
    upgrade(database_url)
    assert _fetch(
        database_url, "SELECT task_id, key, owner_id FROM task_labels ORDER BY task_id"
    ) == [
        (10, "home", 1),
        (11, "home", 2),
        (12, "home", 2),
    ]


def test_list_order_indexes_build_again_over_what_a_failed_build_left(
    pg_database_url: str,
) -> None:
    """Revision 0016 builds its indexes CONCURRENTLY on PostgreSQL, so tasks stay writable.

    An invalid index left by a failed or cancelled build is replaced when it runs again.
    """
    database_url = pg_database_url
    downgrade(database_url, "0015")
    _execute(database_url, _USER, [{"id": 1, "email": "a@example.com"}])
    _execute(
        database_url,
        "INSERT INTO tasks (owner_id, title, description, status, version, priority, labels, "
        "create_time, update_time) VALUES (1, :title, '', 'todo', 1, 0, '[]', "
        "'2026-01-02 00:00:00+00', '2026-01-03 00:00:00+00')",
        [{"title": "one"}, {"title": "two"}],
    )

    async def fail_a_build() -> None:
        engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                # Both tasks are in their owner's personal list: a unique build fails, leaving
                # the index behind, invalid, under the name the migration uses.
                with pytest.raises(IntegrityError):
                    await connection.execute(
                        text(
                            "CREATE UNIQUE INDEX CONCURRENTLY ix_tasks_task_list_id_due_time_id "
                            "ON tasks (task_list_id)"
                        )
                    )
        finally:
            await engine.dispose()

    asyncio.run(fail_a_build())
    invalid = (
        "SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 'ix_tasks_task_list_id_%' "
        "AND c.relname NOT IN ('ix_tasks_task_list_id_id', "
        "'ix_tasks_task_list_id_parent_id_position') ORDER BY c.relname"
    )
    assert [(name, valid) for name, valid, _ in _fetch(database_url, invalid)] == [
        ("ix_tasks_task_list_id_due_time_id", False)
    ]
    upgrade(database_url)
    indexes = _fetch(database_url, invalid)
    assert [(name, valid) for name, valid, _ in indexes] == [
        ("ix_tasks_task_list_id_due_time_id", True),
        ("ix_tasks_task_list_id_priority_id", True),
        ("ix_tasks_task_list_id_update_time_id", True),
    ]
    assert all("(task_list_id, " in definition for _, _, definition in indexes)
    command.check(alembic_config(database_url))

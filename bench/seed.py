"""A fresh benchmark database with realistic data: users, and tasks spread evenly among them.

Rows are inserted in bulk (not through the API: 100,000 CreateTask calls would take minutes and
measure nothing); the schema comes from the real migrations, applied by `taskservice migrate`.
Every user shares one bcrypt hash at the server's cost, so Login does its real work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import bcrypt
from sqlalchemy import insert, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from taskservice.db.models import (
    Task,
    TaskLabel,
    TaskList,
    TaskListMember,
    TaskListRole,
    TaskStatus,
    User,
)
from taskservice.services.labels import label_key

PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway database's test accounts
ADMIN_EMAIL = "admin@bench.example"
#: Members of the shared list, its owner included: the issue's "a shared list with 10 members".
SHARED_MEMBERS = 10
#: Which of them the shared-list scenarios call as (an EDITOR; member 0 is the OWNER).
SHARED_CALLER = 1
_CHUNK = 5_000
#: The labels seeded tasks carry (zero to two each), so label filters have realistic selectivity.
LABELS = ["home", "work", "errand", "Q3 report", "urgent", "later"]
_WORDS = [
    "review",
    "quarterly",
    "report",
    "draft",
    "invoice",
    "customer",
    "migrate",
    "service",
    "update",
    "dashboard",
    "fix",
    "flaky",
    "test",
    "deploy",
    "staging",
    "schedule",
    "meeting",
    "prepare",
    "release",
    "notes",
    "refactor",
    "module",
    "audit",
    "access",
    "rotate",
    "keys",
    "backup",
    "database",
    "clean",
    "up",
    "tickets",
    "onboard",
    "new",
    "hire",
    "plan",
    "sprint",
    "write",
    "design",
    "doc",
]


@dataclass(frozen=True)
class Seeded:
    """What the harness needs to know about the data it seeded."""

    user_emails: list[str]
    user_ids: list[int]
    admin_id: int
    #: The shared list, its members (the first its OWNER) and how many tasks it holds.
    shared_list_id: int = 0
    shared_member_emails: list[str] = field(default_factory=list)
    shared_tasks: int = 0
    tasks_per_user: int = 0

    @property
    def tasks(self) -> int:
        """Every seeded task: the users' own and the shared list's."""
        return len(self.user_ids) * self.tasks_per_user + self.shared_tasks


def user_email(index: int) -> str:
    """The email of seeded user `index`."""
    return f"user{index:04d}@bench.example"


def shared_member_email(index: int) -> str:
    """The email of the shared list's member `index` (0 is its OWNER)."""
    return f"member{index:02d}@bench.example"


def _task_row(
    rng: random.Random, owner_id: int, list_id: int, created: datetime
) -> dict[str, object]:
    """One seeded task, its words, status, due time, priority and labels drawn from `rng`."""
    return {
        "owner_id": owner_id,
        "task_list_id": list_id,
        "creator_id": owner_id,
        "title": " ".join(rng.choices(_WORDS, k=rng.randint(2, 6))).capitalize(),
        "description": " ".join(rng.choices(_WORDS, k=rng.randint(0, 30))),
        "status": rng.choice(list(TaskStatus)),
        "due_time": created + timedelta(days=rng.randint(1, 60)) if rng.random() < 0.5 else None,
        "create_time": created,
        "update_time": created,
        "priority": rng.choice([0, 0, 1, 2, 3, 4]),
        "labels": sorted(rng.sample(LABELS, rng.randint(0, 2)), key=label_key),
        "position": -int(created.timestamp() * 1_000_000),
    }


async def _seed_shared_list(
    connection: AsyncConnection, password_hash: str
) -> tuple[int, int, list[str]]:
    """A shared list of SHARED_MEMBERS members of their own: its id, its owner's, the emails.

    Its members are users of their own (so every other user's lists, and the scenarios reading
    them, stay as they were): member 0 its OWNER, the others EDITORs and VIEWERs, SHARED_CALLER
    an EDITOR. Its tasks are seeded with the users' (see `seed`).
    """
    emails = [shared_member_email(i) for i in range(SHARED_MEMBERS)]
    member_ids = list(
        (
            await connection.execute(
                insert(User).returning(User.id, sort_by_parameter_order=True),
                [{"email": email, "password_hash": password_hash} for email in emails],
            )
        ).scalars()
    )
    owner_id = member_ids[0]
    list_id = (
        await connection.execute(
            insert(TaskList)
            .values(owner_id=owner_id, creator_id=owner_id, title="Team", description="")
            .returning(TaskList.id)
        )
    ).scalar_one()
    roles = [TaskListRole.OWNER] + [
        TaskListRole.EDITOR if index % 2 or index == SHARED_CALLER else TaskListRole.VIEWER
        for index in range(1, SHARED_MEMBERS)
    ]
    await connection.execute(
        insert(TaskListMember),
        [
            {"task_list_id": list_id, "user_id": user_id, "role": int(role)}
            for user_id, role in zip(member_ids, roles, strict=True)
        ],
    )
    return list_id, owner_id, emails


async def _insert_tasks(connection: AsyncConnection, rows: list[dict[str, object]]) -> None:
    """Insert tasks and their label keys (what `labels:"x"` filters seek on)."""
    ids = (
        await connection.execute(
            insert(Task).returning(Task.id, sort_by_parameter_order=True), rows
        )
    ).scalars()
    labels = [
        {"task_id": task_id, "key": label_key(label), "owner_id": row["owner_id"]}
        for task_id, row in zip(ids, rows, strict=True)
        for label in row["labels"]  # type: ignore[attr-defined]
    ]
    if labels:
        await connection.execute(insert(TaskLabel), labels)


async def _maintenance_connection(url: URL) -> asyncpg.Connection:
    """A connection to the server's `postgres` database, to drop and create others."""
    return await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database="postgres",
    )


async def recreate_postgres_database(url: URL) -> None:
    """Drop and create the benchmark's PostgreSQL database, so every run starts the same."""
    name = url.database
    if not name or "bench" not in name:
        raise SystemExit(
            f"refusing to recreate database {name!r}: its name must contain 'bench' "
            "(the benchmark drops it first)"
        )
    connection = await _maintenance_connection(url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def drop_postgres_database(url: URL) -> None:
    """Drop a benchmark database (a test's floor database, when it is done)."""
    connection = await _maintenance_connection(url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await connection.close()


async def seed(url: URL, users: int, tasks_per_user: int, bcrypt_rounds: int) -> Seeded:
    """Insert `users` users (plus one admin) owning `tasks_per_user` tasks each.

    Then a shared list (see `_seed_shared_list`) of as many tasks, with members of its own.
    """
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(bcrypt_rounds)).decode()
    rng = random.Random(8)  # noqa: S311 - reproducible fake data, not security
    now = datetime.now(UTC)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            admin_id = (
                await connection.execute(
                    insert(User)
                    .values(email=ADMIN_EMAIL, password_hash=password_hash, is_admin=True)
                    .returning(User.id)
                )
            ).scalar_one()
            emails = [user_email(i) for i in range(users)]
            user_ids = list(
                (
                    await connection.execute(
                        insert(User).returning(User.id, sort_by_parameter_order=True),
                        [{"email": email, "password_hash": password_hash} for email in emails],
                    )
                ).scalars()
            )
            # Each user's personal list (made with the user): where their tasks live.
            lists = await connection.execute(
                select(TaskList.owner_id, TaskList.id).where(TaskList.personal)
            )
            personal = {owner_id: list_id for owner_id, list_id in lists}
            shared_list_id, shared_owner, member_emails = await _seed_shared_list(
                connection, password_hash
            )
            # The shared list holds as many tasks as a user's personal list, made in the same
            # rounds as the users' (one more task per round, from an rng of its own so that the
            # users' tasks stay as they were): its pages and tasks lie among the others' as a
            # personal list's do, and the shared-list scenarios compare like with like.
            shared_rng = random.Random(9)  # noqa: S311 - reproducible fake data, not security
            rows = []
            for n in range(users * tasks_per_user):
                created = now - timedelta(minutes=users * tasks_per_user - n)
                owner_id = user_ids[n % users]
                rows.append(_task_row(rng, owner_id, personal[owner_id], created))
                if n % users == users - 1:
                    rows.append(_task_row(shared_rng, shared_owner, shared_list_id, created))
                if len(rows) >= _CHUNK:
                    await _insert_tasks(connection, rows)
                    rows = []
            if rows:
                await _insert_tasks(connection, rows)
        if engine.dialect.name == "postgresql":
            await _settle(engine)
    finally:
        await engine.dispose()
    return Seeded(
        emails,
        user_ids,
        admin_id,
        shared_list_id=shared_list_id,
        shared_member_emails=member_emails,
        shared_tasks=tasks_per_user,
        tasks_per_user=tasks_per_user,
    )


async def _settle(engine: AsyncEngine) -> None:
    """Leave PostgreSQL as a long-running store would be, before anything is measured.

    Seeding records a change per task (migration 0009). Unnumbered, they would be numbered by
    the server's change feed during the first measurements; and the fresh tables have neither
    statistics nor a visibility map until autovacuum gets to them, also mid-run.
    """
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        while (await autocommit.execute(text("SELECT task_changes_assign(10000)"))).scalar_one():
            pass
        await autocommit.execute(text("VACUUM ANALYZE"))

"""Never reuse ids on SQLite: users and tasks become AUTOINCREMENT tables.

SQLite's plain INTEGER PRIMARY KEY hands a deleted row's id to the next insert, so a deleted
user's unexpired token (which names its user by id) would authenticate as the next user created,
and a deleted task's etag could match its successor. PostgreSQL sequences never reuse ids, so
this migration does nothing there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 17:35:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in ("users", "tasks"):
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    _recreate(autoincrement=True)


def downgrade() -> None:
    _recreate(autoincrement=False)

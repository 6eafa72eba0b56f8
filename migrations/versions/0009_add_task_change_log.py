"""Add the task change log behind WatchTasks: a revision counter, the log, and triggers filling it.

Every committed change of a task (API writes, foreign-key cascades from a parent's purge or a
user's deletion, the trash sweep, `taskservice purge`) is recorded by AFTER ROW triggers on
`tasks`, in the changing transaction itself, so nothing that commits can go unrecorded and
nothing rolled back is recorded. The empty store is at revision 1 (0 means "from now" to
WatchTasks).

Revisions are dense and become visible in order, so a reader of `revision > last` never skips a
change whose transaction commits late. How each database gets there:

- SQLite has one writer at a time: the triggers take the next value of the one-row
  `task_revision` counter directly.
- PostgreSQL runs writers side by side, and an id handed out before commit does not follow
  commit order. Taking the counter in the trigger would hold its row lock until commit and
  serialise every task write in the store (and, holding other locks meanwhile, starve
  DeleteUser). So the triggers record changes with `revision` NULL, ordered only by `seq`, and
  `task_changes_assign()` numbers the committed, unnumbered ones in one short transaction of
  its own, one caller at a time: what one call numbers becomes visible at once, and a change
  that commits later gets a later revision. Task writers call it right after their commit (so
  their next read includes their change's revision) and the change feeds on every wake-up
  (for cascades and for writers that never got to call it); no writer holds the counter.

An UPDATE that changes nothing is not recorded. On PostgreSQL, `task_changes_assign()` sends
`NOTIFY task_changes` when it has numbered something, as a wake-up for the change feeds of every
server (the changes themselves are read from the table). The writers' triggers do not notify:
PostgreSQL serialises the commits of notifying transactions, which would serialise every task
write; a change nobody numbers at once is numbered by the next feed poll.

The SQLite triggers list the task columns: a migration that adds a column to `tasks` must
recreate them (as must one that rebuilds `tasks` with `batch_alter_table`, which drops them).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: Columns of `tasks` as of this revision, for SQLite's json_object().
_TASK_COLUMNS = (
    "id",
    "owner_id",
    "title",
    "description",
    "status",
    "due_time",
    "version",
    "create_time",
    "update_time",
    "priority",
    "labels",
    "complete_time",
    "delete_time",
    "purge_time",
    "trash_root_id",
    "parent_id",
    "position",
)

_POSTGRES_UP = (
    """
    CREATE FUNCTION task_changes_record() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      change_type SMALLINT;
    BEGIN
      IF TG_OP = 'INSERT' THEN
        change_type := 1;
      ELSIF TG_OP = 'DELETE' THEN
        change_type := 5;
      ELSIF OLD.delete_time IS NULL AND NEW.delete_time IS NOT NULL THEN
        change_type := 3;
      ELSIF OLD.delete_time IS NOT NULL AND NEW.delete_time IS NULL THEN
        change_type := 4;
      ELSE
        change_type := 2;
      END IF;
      IF TG_OP = 'DELETE' THEN
        INSERT INTO task_changes (task_id, owner_id, type, before, after, create_time)
        VALUES (OLD.id, OLD.owner_id, change_type, to_jsonb(OLD)::text, NULL, now());
        RETURN OLD;
      END IF;
      INSERT INTO task_changes (task_id, owner_id, type, before, after, create_time)
      VALUES (NEW.id, NEW.owner_id, change_type,
              CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD)::text END, to_jsonb(NEW)::text,
              now());
      RETURN NEW;
    END
    $$
    """,
    # Numbers at most `batch` committed, unnumbered changes in `seq` order and returns how many.
    # Callers queue on an advisory lock (a transaction lock: released at commit, after which the
    # numbers are visible), and each statement takes a fresh snapshot, so a caller that waited
    # sees what the one before it numbered. Nothing pending: no lock, no write. The NOTIFY wakes
    # every server's feed to read what was numbered.
    """
    CREATE FUNCTION task_changes_assign(batch INTEGER) RETURNS INTEGER LANGUAGE plpgsql AS $$
    DECLARE
      base BIGINT;
      numbered INTEGER;
    BEGIN
      IF NOT EXISTS (SELECT 1 FROM task_changes WHERE revision IS NULL) THEN
        RETURN 0;
      END IF;
      PERFORM pg_advisory_xact_lock(7243591);
      SELECT revision INTO base FROM task_revision WHERE id = 1;
      WITH pending AS (
        SELECT seq, row_number() OVER (ORDER BY seq) AS n
        FROM task_changes WHERE revision IS NULL ORDER BY seq LIMIT batch
      )
      UPDATE task_changes SET revision = base + pending.n
      FROM pending WHERE task_changes.seq = pending.seq;
      GET DIAGNOSTICS numbered = ROW_COUNT;
      IF numbered > 0 THEN
        UPDATE task_revision SET revision = base + numbered WHERE id = 1;
        PERFORM pg_notify('task_changes', '');
      END IF;
      RETURN numbered;
    END
    $$
    """,
    """
    CREATE TRIGGER tasks_record_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_changes_record()
    """,
    """
    CREATE TRIGGER tasks_record_update AFTER UPDATE ON tasks
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION task_changes_record()
    """,
    """
    CREATE TRIGGER tasks_record_delete AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_changes_record()
    """,
)

_POSTGRES_DOWN = (
    "DROP TRIGGER tasks_record_delete ON tasks",
    "DROP TRIGGER tasks_record_update ON tasks",
    "DROP TRIGGER tasks_record_insert ON tasks",
    "DROP FUNCTION task_changes_assign(INTEGER)",
    "DROP FUNCTION task_changes_record()",
)


def _json(row: str) -> str:
    pairs = ", ".join(f"'{column}', {row}.{column}" for column in _TASK_COLUMNS)
    return f"json_object({pairs})"


def _sqlite_trigger(name: str, event: str, when: str, row: str, kind: str, before: str) -> str:
    after = "NULL" if event == "DELETE" else _json("NEW")
    # Built from the constant column list above, never from input.
    return f"""
    CREATE TRIGGER {name} AFTER {event} ON tasks {when}
    BEGIN
      UPDATE task_revision SET revision = revision + 1 WHERE id = 1;
      INSERT INTO task_changes (revision, task_id, owner_id, type, before, after, create_time)
      SELECT revision, {row}.id, {row}.owner_id, {kind}, {before}, {after},
             strftime('%Y-%m-%d %H:%M:%f', 'now')
      FROM task_revision WHERE id = 1;
    END
    """  # noqa: S608


_SQLITE_CHANGED = " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in _TASK_COLUMNS)
_SQLITE_UPDATE_TYPE = (
    "CASE WHEN OLD.delete_time IS NULL AND NEW.delete_time IS NOT NULL THEN 3"
    " WHEN OLD.delete_time IS NOT NULL AND NEW.delete_time IS NULL THEN 4 ELSE 2 END"
)

_SQLITE_UP = (
    _sqlite_trigger("tasks_record_insert", "INSERT", "", "NEW", "1", "NULL"),
    _sqlite_trigger(
        "tasks_record_update",
        "UPDATE",
        f"WHEN {_SQLITE_CHANGED}",
        "NEW",
        _SQLITE_UPDATE_TYPE,
        _json("OLD"),
    ),
    _sqlite_trigger("tasks_record_delete", "DELETE", "", "OLD", "5", _json("OLD")),
)

_SQLITE_DOWN = (
    "DROP TRIGGER tasks_record_delete",
    "DROP TRIGGER tasks_record_update",
    "DROP TRIGGER tasks_record_insert",
)


def upgrade() -> None:
    op.create_table(
        "task_revision",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("compacted_revision", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_task_revision_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_revision")),
    )
    # The empty store is at revision 1, not 0: WatchTasks reads start_revision 0 as "from now",
    # so a client resuming from a revision it was given must never hold a 0.
    op.execute("INSERT INTO task_revision (id, revision, compacted_revision) VALUES (1, 1, 0)")
    op.create_table(
        "task_changes",
        sa.Column("seq", _ID, autoincrement=True, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("owner_id", _ID, nullable=False),
        sa.Column("type", sa.SmallInteger(), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_task_changes")),
    )
    op.create_index("ix_task_changes_create_time", "task_changes", ["create_time"], unique=False)
    op.create_index("ux_task_changes_revision", "task_changes", ["revision"], unique=True)
    op.create_index(
        "ix_task_changes_unnumbered",
        "task_changes",
        ["seq"],
        postgresql_where=sa.text("revision IS NULL"),
        sqlite_where=sa.text("revision IS NULL"),
    )
    statements = _POSTGRES_UP if op.get_bind().dialect.name == "postgresql" else _SQLITE_UP
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    statements = _POSTGRES_DOWN if op.get_bind().dialect.name == "postgresql" else _SQLITE_DOWN
    for statement in statements:
        op.execute(statement)
    op.drop_index("ix_task_changes_unnumbered", table_name="task_changes")
    op.drop_index("ux_task_changes_revision", table_name="task_changes")
    op.drop_index("ix_task_changes_create_time", table_name="task_changes")
    op.drop_table("task_changes")
    op.drop_table("task_revision")

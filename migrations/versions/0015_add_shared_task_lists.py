"""Shared task lists: lists, their members, and each task's list, creator and assignee.

Every existing user gets a personal list ("My Tasks") with themself as its only member, an
OWNER; every existing task goes to its owner's personal list, and its creator is its owner. The
backfill is not a change of any task (nothing a client sees changes), so it is not recorded in
the change log: the `tasks` triggers are off while it runs.

Memberships that give or take access (a row of `task_list_members` inserted or deleted, by the
services or by a cascade from a purged list or a deleted user) are recorded in `task_changes`
too, as access changes (types 6 and 7, `task_id` 0, `owner_id` the user, `task_list_id` the
list), with revisions like every change, so a watch knows at which revision a user gained or
lost a list. A user's own membership of their personal list is not: it begins with the user
and ends with them, so it never changes what their streams may see.

Every user has a personal list from the moment they exist, whoever inserts them: an AFTER INSERT
trigger on `users` makes it, with the user as its OWNER.

A writer that names no list for a new task (a tool that predates lists, or SQL typed by hand)
puts it in its owner's personal list, with its owner as its creator: a BEFORE INSERT trigger
fills them in (on SQLite by inserting the completed row in place of the incomplete one, which
that statement then skips: such a writer gets no RETURNING row or last row id).

The SQLite triggers of revision 0009 list the task columns: they are recreated with the new
ones (the table is rebuilt here anyway, which drops them).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: Columns of `tasks` before this revision, for SQLite's json_object() (as in 0009).
_OLD_TASK_COLUMNS = (
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
#: And as of this revision.
_TASK_COLUMNS = (*_OLD_TASK_COLUMNS, "task_list_id", "creator_id", "assignee_id")

_TASK_TRIGGERS = ("tasks_record_insert", "tasks_record_update", "tasks_record_delete")

_NOW_SQLITE = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _json(row: str, columns: Sequence[str]) -> str:
    pairs = ", ".join(f"'{column}', {row}.{column}" for column in columns)
    return f"json_object({pairs})"


def _sqlite_task_trigger(
    name: str, event: str, when: str, row: str, kind: str, before: str, columns: Sequence[str]
) -> str:
    after = "NULL" if event == "DELETE" else _json("NEW", columns)
    # Built from the constant column lists above, never from input.
    return f"""
    CREATE TRIGGER {name} AFTER {event} ON tasks {when}
    BEGIN
      UPDATE task_revision SET revision = revision + 1 WHERE id = 1;
      INSERT INTO task_changes (revision, task_id, owner_id, type, before, after, create_time)
      SELECT revision, {row}.id, {row}.owner_id, {kind}, {before}, {after}, {_NOW_SQLITE}
      FROM task_revision WHERE id = 1;
    END
    """  # noqa: S608


def _sqlite_task_triggers(columns: Sequence[str]) -> tuple[str, ...]:
    changed = " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in columns)
    update_type = (
        "CASE WHEN OLD.delete_time IS NULL AND NEW.delete_time IS NOT NULL THEN 3"
        " WHEN OLD.delete_time IS NOT NULL AND NEW.delete_time IS NULL THEN 4 ELSE 2 END"
    )
    return (
        _sqlite_task_trigger("tasks_record_insert", "INSERT", "", "NEW", "1", "NULL", columns),
        _sqlite_task_trigger(
            "tasks_record_update",
            "UPDATE",
            f"WHEN {changed}",
            "NEW",
            update_type,
            _json("OLD", columns),
            columns,
        ),
        _sqlite_task_trigger(
            "tasks_record_delete", "DELETE", "", "OLD", "5", _json("OLD", columns), columns
        ),
    )


#: Whether a membership row is a user's own membership of their personal list.
_OWN_PERSONAL = (
    "EXISTS (SELECT 1 FROM task_lists WHERE task_lists.id = {row}.task_list_id "
    "AND task_lists.personal AND task_lists.owner_id = {row}.user_id)"
)


def _sqlite_member_trigger(name: str, event: str, row: str, kind: int) -> str:
    return f"""
    CREATE TRIGGER {name} AFTER {event} ON task_list_members
    WHEN NOT {_OWN_PERSONAL.format(row=row)}
    BEGIN
      UPDATE task_revision SET revision = revision + 1 WHERE id = 1;
      INSERT INTO task_changes (revision, task_id, owner_id, type, before, after, create_time,
                                task_list_id)
      SELECT revision, 0, {row}.user_id, {kind}, NULL, NULL, {_NOW_SQLITE}, {row}.task_list_id
      FROM task_revision WHERE id = 1;
    END
    """  # noqa: S608


_SQLITE_MEMBER_UP = (
    _sqlite_member_trigger("task_list_members_record_insert", "INSERT", "NEW", 6),
    _sqlite_member_trigger("task_list_members_record_delete", "DELETE", "OLD", 7),
)
_SQLITE_MEMBER_DOWN = (
    "DROP TRIGGER task_list_members_record_delete",
    "DROP TRIGGER task_list_members_record_insert",
)

_SQLITE_DEFAULTS_UP = (
    f"""
    CREATE TRIGGER tasks_default_list BEFORE INSERT ON tasks
    WHEN NEW.task_list_id IS NULL OR NEW.creator_id IS NULL
    BEGIN
      INSERT INTO tasks ({", ".join(_TASK_COLUMNS)})
      VALUES ({
        ", ".join(
            "NULLIF(NEW.id, -1)"
            if column == "id"
            else "COALESCE(NEW.task_list_id, (SELECT id FROM task_lists "
            "WHERE owner_id = NEW.owner_id AND personal))"
            if column == "task_list_id"
            else "COALESCE(NEW.creator_id, NEW.owner_id)"
            if column == "creator_id"
            else f"NEW.{column}"
            for column in _TASK_COLUMNS
        )
    });
      SELECT RAISE(IGNORE);
    END
    """,  # noqa: S608
)
_SQLITE_DEFAULTS_UP += (
    """
    CREATE TRIGGER users_personal_list AFTER INSERT ON users
    BEGIN
      INSERT INTO task_lists (owner_id, creator_id, title, description, personal, version,
                              create_time, update_time)
      VALUES (NEW.id, NEW.id, 'My Tasks', '', 1, 1, NEW.create_time, NEW.create_time);
      INSERT INTO task_list_members (task_list_id, user_id, role, create_time)
      SELECT id, NEW.id, 3, NEW.create_time FROM task_lists
      WHERE owner_id = NEW.id AND personal;
    END
    """,
)
_SQLITE_DEFAULTS_DOWN = ("DROP TRIGGER users_personal_list", "DROP TRIGGER tasks_default_list")

_POSTGRES_DEFAULTS_UP = (
    """
    CREATE FUNCTION tasks_default_list() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.task_list_id IS NULL THEN
        NEW.task_list_id := (SELECT id FROM task_lists
                             WHERE owner_id = NEW.owner_id AND personal);
      END IF;
      IF NEW.creator_id IS NULL THEN
        NEW.creator_id := NEW.owner_id;
      END IF;
      RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER tasks_default_list BEFORE INSERT ON tasks
    FOR EACH ROW WHEN (NEW.task_list_id IS NULL OR NEW.creator_id IS NULL)
    EXECUTE FUNCTION tasks_default_list()
    """,
)
_POSTGRES_DEFAULTS_UP += (
    """
    CREATE FUNCTION users_personal_list() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      list_id BIGINT;
    BEGIN
      INSERT INTO task_lists (owner_id, creator_id, title, description, personal, version,
                              create_time, update_time)
      VALUES (NEW.id, NEW.id, 'My Tasks', '', true, 1, NEW.create_time, NEW.create_time)
      RETURNING id INTO list_id;
      INSERT INTO task_list_members (task_list_id, user_id, role, create_time)
      VALUES (list_id, NEW.id, 3, NEW.create_time);
      RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER users_personal_list AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_personal_list()
    """,
)
_POSTGRES_DEFAULTS_DOWN = (
    "DROP TRIGGER users_personal_list ON users",
    "DROP FUNCTION users_personal_list()",
    "DROP TRIGGER tasks_default_list ON tasks",
    "DROP FUNCTION tasks_default_list()",
)

_POSTGRES_MEMBER_UP = (
    # Recorded unnumbered, like task changes: task_changes_assign() (0009) numbers them in
    # commit order.
    f"""
    CREATE FUNCTION task_list_members_record() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' AND {_OWN_PERSONAL.format(row="NEW")} THEN
        RETURN NEW;
      ELSIF TG_OP = 'DELETE' AND {_OWN_PERSONAL.format(row="OLD")} THEN
        RETURN OLD;
      END IF;
      IF TG_OP = 'INSERT' THEN
        INSERT INTO task_changes (task_id, owner_id, type, before, after, create_time,
                                  task_list_id)
        VALUES (0, NEW.user_id, 6, NULL, NULL, now(), NEW.task_list_id);
        RETURN NEW;
      END IF;
      INSERT INTO task_changes (task_id, owner_id, type, before, after, create_time, task_list_id)
      VALUES (0, OLD.user_id, 7, NULL, NULL, now(), OLD.task_list_id);
      RETURN OLD;
    END
    $$
    """,  # noqa: S608 - built from constants, never from input
    """
    CREATE TRIGGER task_list_members_record_insert AFTER INSERT ON task_list_members
    FOR EACH ROW EXECUTE FUNCTION task_list_members_record()
    """,
    """
    CREATE TRIGGER task_list_members_record_delete AFTER DELETE ON task_list_members
    FOR EACH ROW EXECUTE FUNCTION task_list_members_record()
    """,
)
_POSTGRES_MEMBER_DOWN = (
    "DROP TRIGGER task_list_members_record_delete ON task_list_members",
    "DROP TRIGGER task_list_members_record_insert ON task_list_members",
    "DROP FUNCTION task_list_members_record()",
)


def _create_tables() -> None:
    op.create_table(
        "task_lists",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("owner_id", _ID, nullable=False),
        sa.Column("creator_id", _ID, nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("title", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("personal", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purge_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_task_lists_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_lists")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_task_lists_owner_id", "task_lists", ["owner_id"])
    op.create_index("ix_task_lists_purge_time", "task_lists", ["purge_time"])
    op.create_index(
        "ux_task_lists_personal_owner_id",
        "task_lists",
        ["owner_id"],
        unique=True,
        postgresql_where=sa.text("personal"),
        sqlite_where=sa.text("personal"),
    )
    op.create_index(
        "ux_task_lists_creator_id_request_id",
        "task_lists",
        ["creator_id", "request_id"],
        unique=True,
    )
    op.create_table(
        "task_list_members",
        sa.Column("task_list_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("role", sa.SmallInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_list_id"],
            ["task_lists.id"],
            name=op.f("fk_task_list_members_task_list_id_task_lists"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_task_list_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_list_id", "user_id", name=op.f("pk_task_list_members")),
    )
    op.create_index(
        "ix_task_list_members_user_id_task_list_id",
        "task_list_members",
        ["user_id", "task_list_id"],
    )
    op.add_column("task_changes", sa.Column("task_list_id", _ID, nullable=True))


def _backfill() -> None:
    """A personal list per user, its user its OWNER; each task to its owner's personal list."""
    op.execute(
        "INSERT INTO task_lists (owner_id, creator_id, title, description, personal, version, "
        "create_time, update_time) SELECT id, id, 'My Tasks', '', true, 1, create_time, "
        "create_time FROM users"
    )
    op.execute(
        "INSERT INTO task_list_members (task_list_id, user_id, role, create_time) "
        "SELECT id, owner_id, 3, create_time FROM task_lists"
    )
    op.execute(
        "UPDATE tasks SET creator_id = owner_id, task_list_id = (SELECT task_lists.id FROM "
        "task_lists WHERE task_lists.owner_id = tasks.owner_id AND task_lists.personal)"
    )


def _task_indexes() -> None:
    op.create_index("ix_tasks_task_list_id_id", "tasks", ["task_list_id", "id"])
    op.create_index(
        "ix_tasks_task_list_id_parent_id_position",
        "tasks",
        ["task_list_id", "parent_id", "position"],
    )
    op.create_index("ix_tasks_assignee_id", "tasks", ["assignee_id"])


def _upgrade_sqlite() -> None:
    for trigger in _TASK_TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger}")
    op.add_column("tasks", sa.Column("task_list_id", _ID, nullable=True))
    op.add_column("tasks", sa.Column("creator_id", _ID, nullable=True))
    op.add_column("tasks", sa.Column("assignee_id", _ID, nullable=True))
    _backfill()
    # One rebuild for the foreign keys and NOT NULL (keeping AUTOINCREMENT, revision 0004).
    with op.batch_alter_table("tasks", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("task_list_id", existing_type=_ID, nullable=False)
        batch.alter_column("creator_id", existing_type=_ID, nullable=False)
        batch.create_foreign_key(
            op.f("fk_tasks_task_list_id_task_lists"),
            "task_lists",
            ["task_list_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_foreign_key(
            op.f("fk_tasks_assignee_id_users"),
            "users",
            ["assignee_id"],
            ["id"],
            ondelete="SET NULL",
        )
    _task_indexes()
    for statement in (
        *_sqlite_task_triggers(_TASK_COLUMNS),
        *_SQLITE_MEMBER_UP,
        *_SQLITE_DEFAULTS_UP,
    ):
        op.execute(statement)


def _upgrade_postgresql() -> None:
    op.add_column("tasks", sa.Column("task_list_id", _ID, nullable=True))
    op.add_column("tasks", sa.Column("creator_id", _ID, nullable=True))
    op.add_column("tasks", sa.Column("assignee_id", _ID, nullable=True))
    op.execute("ALTER TABLE tasks DISABLE TRIGGER tasks_record_update")
    _backfill()
    op.execute("ALTER TABLE tasks ENABLE TRIGGER tasks_record_update")
    op.alter_column("tasks", "task_list_id", existing_type=_ID, nullable=False)
    op.alter_column("tasks", "creator_id", existing_type=_ID, nullable=False)
    op.create_foreign_key(
        op.f("fk_tasks_task_list_id_task_lists"),
        "tasks",
        "task_lists",
        ["task_list_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        op.f("fk_tasks_assignee_id_users"),
        "tasks",
        "users",
        ["assignee_id"],
        ["id"],
        ondelete="SET NULL",
    )
    _task_indexes()
    for statement in (*_POSTGRES_MEMBER_UP, *_POSTGRES_DEFAULTS_UP):
        op.execute(statement)


def upgrade() -> None:
    _create_tables()
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    down = (
        (*_SQLITE_DEFAULTS_DOWN, *_SQLITE_MEMBER_DOWN)
        if sqlite
        else (*_POSTGRES_DEFAULTS_DOWN, *_POSTGRES_MEMBER_DOWN)
    )
    for statement in down:
        op.execute(statement)
    if sqlite:
        for trigger in _TASK_TRIGGERS:
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_index("ix_tasks_assignee_id", table_name="tasks")
    op.drop_index("ix_tasks_task_list_id_parent_id_position", table_name="tasks")
    op.drop_index("ix_tasks_task_list_id_id", table_name="tasks")
    with op.batch_alter_table(
        "tasks", table_kwargs={"sqlite_autoincrement": True} if sqlite else {}
    ) as batch:
        batch.drop_constraint(op.f("fk_tasks_assignee_id_users"), type_="foreignkey")
        batch.drop_constraint(op.f("fk_tasks_task_list_id_task_lists"), type_="foreignkey")
        batch.drop_column("assignee_id")
        batch.drop_column("creator_id")
        batch.drop_column("task_list_id")
    # Before the SQLite triggers naming the table come back: dropping a column rebuilds it.
    with op.batch_alter_table("task_changes") as batch:
        batch.drop_column("task_list_id")
    if sqlite:
        for statement in _sqlite_task_triggers(_OLD_TASK_COLUMNS):
            op.execute(statement)
    op.drop_index("ix_task_list_members_user_id_task_list_id", table_name="task_list_members")
    op.drop_table("task_list_members")
    op.drop_index("ux_task_lists_creator_id_request_id", table_name="task_lists")
    op.drop_index("ux_task_lists_personal_owner_id", table_name="task_lists")
    op.drop_index("ix_task_lists_purge_time", table_name="task_lists")
    op.drop_index("ix_task_lists_owner_id", table_name="task_lists")
    op.drop_table("task_lists")

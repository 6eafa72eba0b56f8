"""Revision 0015 on a database with data: every user gets a personal list, every task lands in it.

The backfill changes nothing a client sees, so it records no change; and the change log's
triggers, rebuilt with the new columns, record the next change of a task with its list.
"""

from __future__ import annotations

import json

from taskservice.db.migrations import downgrade, upgrade
from tests.test_migrations import _USER, _execute, _fetch

_TASK = (
    "INSERT INTO tasks (id, owner_id, title, description, status, version, priority, labels, "
    "create_time, update_time, position, parent_id) VALUES (:id, :owner, 'kept', '', 'todo', 1, "
    "0, '[]', '2026-01-02 00:00:00+00', '2026-01-03 00:00:00+00', 0, :parent)"
)


def _seed(database_url: str) -> int:
    """Three users (the third without tasks) and four tasks, one a subtask; the revision."""
    downgrade(database_url, "0014")
    _execute(database_url, _USER, [{"id": n, "email": f"u{n}@example.com"} for n in (1, 2, 3)])
    _execute(
        database_url,
        _TASK,
        [
            {"id": 10, "owner": 1, "parent": None},
            {"id": 11, "owner": 2, "parent": None},
            {"id": 12, "owner": 2, "parent": 11},
            {"id": 13, "owner": 1, "parent": None},
        ],
    )
    ((revision,),) = _fetch(database_url, "SELECT revision FROM task_revision")
    return int(revision)  # type: ignore[call-overload]


def test_every_user_gets_a_personal_list_and_every_task_lands_in_its_owners(
    database_url: str,
) -> None:
    revision = _seed(database_url)
    upgrade(database_url)
    lists = _fetch(
        database_url,
        "SELECT id, owner_id, creator_id, title, description, personal, version, delete_time "
        "FROM task_lists ORDER BY owner_id",
    )
    assert [row[1:] for row in lists] == [
        (user, user, "My Tasks", "", True, 1, None) for user in (1, 2, 3)
    ]
    personal = {owner: list_id for list_id, owner, *_ in lists}
    assert _fetch(
        database_url, "SELECT task_list_id, user_id, role FROM task_list_members ORDER BY user_id"
    ) == [(personal[user], user, 3) for user in (1, 2, 3)]
    assert _fetch(
        database_url,
        "SELECT id, owner_id, task_list_id, creator_id, assignee_id, parent_id, version "
        "FROM tasks ORDER BY id",
    ) == [
        (10, 1, personal[1], 1, None, None, 1),
        (11, 2, personal[2], 2, None, None, 1),
        (12, 2, personal[2], 2, None, 11, 1),
        (13, 1, personal[1], 1, None, None, 1),
    ]
    # Nothing a client sees changed: no change recorded, the revision stands.
    assert _fetch(database_url, "SELECT revision FROM task_revision") == [(revision,)]


def test_after_the_upgrade_changes_are_recorded_with_the_tasks_list(database_url: str) -> None:
    _seed(database_url)
    upgrade(database_url)
    ((last,),) = _fetch(database_url, "SELECT max(seq) FROM task_changes")
    _execute(database_url, "UPDATE tasks SET title = 'changed' WHERE id = 12", [{}])
    _execute(database_url, "UPDATE tasks SET assignee_id = 2 WHERE id = 11", [{}])
    rows = _fetch(
        database_url,
        f"SELECT task_id, type, after FROM task_changes WHERE seq > {last} ORDER BY seq",  # noqa: S608
    )
    assert [(task_id, kind) for task_id, kind, _ in rows] == [(12, 2), (11, 2)]
    changed, assigned = (json.loads(str(after)) for *_, after in rows)
    (list_id,) = _fetch(database_url, "SELECT id FROM task_lists WHERE owner_id = 2")[0]
    assert (changed["task_list_id"], changed["creator_id"], changed["title"]) == (
        list_id,
        2,
        "changed",
    )
    assert assigned["assignee_id"] == 2


def test_membership_changes_are_recorded_as_access_changes(database_url: str) -> None:
    _seed(database_url)
    upgrade(database_url)
    (list_id,) = _fetch(database_url, "SELECT id FROM task_lists WHERE owner_id = 1")[0]
    member = {"list": list_id, "user": 3}
    _execute(
        database_url,
        "INSERT INTO task_list_members (task_list_id, user_id, role, create_time) "
        "VALUES (:list, :user, 1, '2026-01-04 00:00:00+00')",
        [member],
    )
    _execute(
        database_url,
        "DELETE FROM task_list_members WHERE task_list_id = :list AND user_id = :user",
        [member],
    )
    assert _fetch(
        database_url,
        "SELECT task_id, owner_id, type, task_list_id FROM task_changes WHERE task_id = 0 "
        "ORDER BY seq",
    ) == [(0, 3, 6, list_id), (0, 3, 7, list_id)]


def test_the_upgrade_goes_down_and_up_again_with_data(database_url: str) -> None:
    _seed(database_url)
    upgrade(database_url)
    downgrade(database_url, "0014")
    assert _fetch(database_url, "SELECT id, owner_id FROM tasks ORDER BY id") == [
        (10, 1),
        (11, 2),
        (12, 2),
        (13, 1),
    ]
    upgrade(database_url)
    assert len(_fetch(database_url, "SELECT id FROM task_lists")) == 3


def test_a_task_inserted_without_a_list_goes_to_its_owners_personal_list(
    database_url: str,
) -> None:
    """Tools that predate lists keep working: the database fills in the list and creator."""
    _seed(database_url)
    upgrade(database_url)
    ((last,),) = _fetch(database_url, "SELECT max(seq) FROM task_changes")
    _execute(database_url, _TASK, [{"id": 20, "owner": 2, "parent": None}])
    _execute(
        database_url,
        "INSERT INTO tasks (owner_id, title, description, status, version, create_time, "
        "update_time) VALUES (3, 'no id', '', 'todo', 1, '2026-01-02 00:00:00+00', "
        "'2026-01-02 00:00:00+00')",
        [{}],
    )
    personal = dict(_fetch(database_url, "SELECT owner_id, id FROM task_lists"))
    assert _fetch(
        database_url,
        "SELECT owner_id, task_list_id, creator_id FROM tasks WHERE id = 20 OR title = 'no id' "
        "ORDER BY owner_id",
    ) == [(2, personal[2], 2), (3, personal[3], 3)]
    # Each recorded once, as created.
    assert _fetch(
        database_url,
        f"SELECT type FROM task_changes WHERE seq > {last} ORDER BY seq",  # noqa: S608
    ) == [(1,), (1,)]

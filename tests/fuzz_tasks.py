"""TaskService's oracles: what each task RPC must answer, restated from the proto comments.

Covered: access through lists (a task of a list the caller is not a member of reads like a
missing one; a VIEWER reads, an EDITOR or OWNER also writes; an admin reaches every task),
validation of every writable field, etags, idempotent creation, tasks created in a named list or
under a parent (in the parent's list), assignees (members of the task's list only), moves to
another list (the live subtree goes, takes the list's owner, and loses assignees who are not
members there), subtasks (a parent visible and writable, in the same list, live, no cycle, at
most 5 levels), manual order (a new or re-parented task goes first among its siblings, a moved
one right after `previous_id`), the trash (DeleteTask takes the live subtree, UndeleteTask
brings back what its DeleteTask took), complete_time following the DONE status, and lists.

Side effects that no answer shows (the subtree's new etags, siblings renumbered by a move) are
declared as a `Resync`: the harness reads those rows back and checks that nothing else changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tests.fuzz_lists import _filter, check_page, issued_page, list_tasks_conditions
from tests.fuzz_rules import (
    ABORTED,
    BATCH_MAX,
    DENIED,
    DESCRIPTION_MAX,
    DONE,
    INVALID,
    MAX_DEPTH,
    NOT_FOUND,
    OUT_OF_RANGE,
    PATCH_FIELDS,
    PRECONDITION,
    PRIORITIES,
    REQUEST_ID_MAX,
    STATUSES,
    TASK_FIELDS,
    TASK_WIRE_FIELDS,
    TITLE_MAX,
    TODO,
    Conditions,
    Credential,
    Expect,
    IssuedPage,
    Resync,
    TaskRow,
    UserRow,
    check,
    label_problems,
    pair,
    stored_time,
    timestamp_problem,
    wire_task,
)
from tests.fuzz_shared import EDITOR, ListRow

#: What a write may change besides the fields it names.
_WRITE_LEARNS = ("etag", "update_time")


class TaskOracles:
    """The TaskService half of the model; `Model` supplies the state and authentication."""

    tasks: dict[int, TaskRow]
    users: dict[int, UserRow]
    keys: dict[tuple[int, str], int]
    pages: list[IssuedPage]
    request_ids: list[str]
    gone_task_ids: list[int]
    trash_retention_seconds: float
    title_order_exact: bool
    #: The store's revision, read by the harness right before each WatchTasks call.
    current_revision: int
    #: Each user's personal list, learned from the first answer that shows it; every list.
    personal_lists: dict[int, int]
    lists: dict[int, ListRow]

    def role(self, caller: UserRow, list_id: int) -> int | None:
        """The caller's role on a list (see `ListOracles.role`)."""
        raise NotImplementedError

    def member_lists(self, user_id: int) -> set[int]:
        """The lists a user is a member of (see `ListOracles`)."""
        raise NotImplementedError

    def learn_personal_list(self, user_id: int, list_id: int, etag: str = "") -> ListRow:
        """Record a user's personal list (see `ListOracles`)."""
        raise NotImplementedError

    def role_conditions(
        self, caller: UserRow, list_id: int, needed: int, conditions: Conditions, what: str
    ) -> ListRow | None:
        """The caller's access to a list (see `ListOracles`)."""
        raise NotImplementedError

    def _authenticated(self, credential: Credential) -> tuple[UserRow | None, Expect | None]:
        raise NotImplementedError

    def task_oracles(self) -> Mapping[str, Callable[[Credential, Any], Expect]]:
        """The oracle of each TaskService method, by full method name."""
        service = "/taskservice.v1.TaskService/"
        return {
            service + "ListTasks": self._list_tasks,
            service + "CreateTask": self._create_task,
            service + "GetTask": self._get_task,
            service + "BatchGetTasks": self._batch_get_tasks,
            service + "UpdateTask": self._update_task,
            service + "PatchTask": self._patch_task,
            service + "DeleteTask": self._delete_task,
            service + "UndeleteTask": self._undelete_task,
            service + "MoveTask": self._move_task,
            service + "WatchTasks": self._watch_tasks,
        }

    # --- the tree ------------------------------------------------------------------------------

    def visible(self, caller: UserRow, task_id: int) -> TaskRow | None:
        """The task if the caller may see it (in the trash or not): members, and admins."""
        task = self.tasks.get(task_id)
        if task is None or self.role(caller, task.task_list_id) is None:
            return None
        return task

    def _writable(
        self, caller: UserRow, task: TaskRow, conditions: Conditions, what: str = "task"
    ) -> None:
        """PERMISSION_DENIED (TASK_LIST_ROLE_REQUIRED) for a VIEWER of a visible task's list."""
        role = self.role(caller, task.task_list_id)
        if role is not None and role < EDITOR:
            conditions.add(DENIED, f"TASK_LIST_ROLE_REQUIRED: a VIEWER writing {what} {task.id}")

    def _ancestors(self, task: TaskRow) -> list[int]:
        """The ids above `task`, nearest first (trashed ones too)."""
        found: list[int] = []
        parent = task.parent_id
        while parent and parent in self.tasks and len(found) <= MAX_DEPTH:
            found.append(parent)
            parent = self.tasks[parent].parent_id
        return found

    def _height(self, task: TaskRow) -> int:
        """Levels in the subtree of `task`, itself included (trashed subtasks too)."""
        children = [t for t in self.tasks.values() if t.parent_id == task.id]
        return 1 + max((self._height(child) for child in children), default=0)

    def _live_subtree(self, task: TaskRow) -> list[TaskRow]:
        """`task` and every live task below it, as DeleteTask takes them."""
        found, level = [task], [task.id]
        while level:
            below = [t for t in self.tasks.values() if t.parent_id in level and not t.deleted]
            found.extend(below)
            level = [t.id for t in below]
        return found

    def siblings(self, list_id: int, parent_id: int, but: int) -> list[TaskRow]:
        """The live tasks of one sibling list (a list's top level, or a parent's subtasks)."""
        return [
            t
            for t in self.tasks.values()
            if t.task_list_id == list_id
            and t.parent_id == parent_id
            and not t.deleted
            and t.id != but
        ]

    def _parent_conditions(
        self,
        caller: UserRow,
        task: TaskRow | None,
        list_id: int | None,
        parent_id: int,
        field: str,
        conditions: Conditions,
    ) -> None:
        """The documented rules for a parent (TaskService's comment, "Parents:").

        `list_id` is the list the task is (or goes) in; None: wherever the parent is.
        """
        if parent_id <= 0:
            return
        parent = self.visible(caller, parent_id)
        if parent is None:
            conditions.task_not_found("parent task")
            return
        self._writable(caller, parent, conditions, "under parent")
        if list_id is not None and parent.task_list_id != list_id:
            conditions.add(INVALID, "the parent is in another list", field, late=True)
        if parent.deleted:
            conditions.add(PRECONDITION, "the parent is in the trash")
        ancestors = self._ancestors(parent)
        if task is not None and (task.id == parent.id or task.id in ancestors):
            conditions.add(PRECONDITION, "the parent is the task or below it")
        elif len(ancestors) + 1 + (self._height(task) if task else 1) > MAX_DEPTH:
            conditions.add(PRECONDITION, "deeper than 5 levels")

    def _first_among_siblings(self, row: TaskRow) -> None:
        """A new or re-parented task goes first among its siblings (Task.parent_id, .position)."""
        others = self.siblings(row.task_list_id, row.parent_id, row.id)
        check(
            all(row.position <= other.position for other in others),
            f"task {row.id} at {row.position} is not first among "
            f"{[(t.id, t.position) for t in others]}",
        )

    # --- values --------------------------------------------------------------------------------

    @staticmethod
    def _value_conditions(
        task: Any, fields: frozenset[str], conditions: Conditions, *, patch: bool = False
    ) -> list[str]:
        """The limits of the writable fields named in `fields`; returns the labels as stored."""
        if "title" in fields:
            title = task.title.strip()
            if not 1 <= len(title) <= TITLE_MAX:
                conditions.add(INVALID, f"title of {len(title)} characters", "task.title")
            if "\x00" in title:
                conditions.add(INVALID, "title contains NUL", "task.title")
        if "description" in fields:
            if len(task.description) > DESCRIPTION_MAX:
                conditions.add(INVALID, "description too long", "task.description")
            if "\x00" in task.description:
                conditions.add(INVALID, "description contains NUL", "task.description")
        if "status" in fields:
            if task.status not in STATUSES and task.status != 0:
                conditions.add(INVALID, f"unknown status {task.status}", "task.status")
            elif patch and task.status == 0:
                conditions.add(INVALID, "status in the mask is unspecified", "task.status")
        if "priority" in fields and task.priority not in PRIORITIES:
            conditions.add(INVALID, f"unknown priority {task.priority}", "task.priority")
        problem = timestamp_problem(task.due_time) if task.HasField("due_time") else None
        if "due_time" in fields and problem is not None:
            conditions.add(INVALID, f"due_time {problem}", "task.due_time")
        labels: list[str] = []
        if "labels" in fields:
            labels, problems = label_problems(task.labels, "task.labels")
            for name, why in problems:
                conditions.add(INVALID, f"label {why}", name)
        if "parent_id" in fields and task.parent_id < 0:
            conditions.add(INVALID, "negative parent_id", "task.parent_id")
        return labels

    @staticmethod
    def _apply_values(
        row: TaskRow, task: Any, fields: frozenset[str], labels: list[str]
    ) -> set[str]:
        """Write the named fields into the model; returns what the answer alone can tell."""
        learn = set(_WRITE_LEARNS)
        if "title" in fields:
            row.title = task.title.strip()
        if "description" in fields:
            row.description = task.description
        if "status" in fields:
            status = task.status or TODO
            if status != DONE:
                row.complete_time = None
            elif row.status != DONE:
                learn.add("complete_time")  # set now; the answer says when
            row.status = status
        if "due_time" in fields:
            row.due_time = stored_time(task.due_time) if task.HasField("due_time") else None
        if "priority" in fields:
            row.priority = task.priority
        if "labels" in fields:
            row.labels = labels
        if "parent_id" in fields and task.parent_id != row.parent_id:
            row.parent_id = task.parent_id
            learn.add("position")
        return learn

    def _learn(self, row: TaskRow, message: Any, learn: set[str]) -> None:
        """Take the server-chosen fields from an OK write, then hold the rest to the model."""
        check(
            message.etag and message.etag not in row.etags,
            f"task {row.id}'s etag {message.etag!r} did not change on a write",
        )
        got = dict(zip(TASK_WIRE_FIELDS, wire_task(message), strict=True))
        for name in learn:
            setattr(row, name, got[name])
        row.etags.append(row.etag)
        if "complete_time" in learn:
            check(row.complete_time is not None, f"task {row.id} became DONE without complete_time")
        self._check_task(message, row)

    def _check_task(self, message: Any, row: TaskRow) -> None:
        got, want = wire_task(message), row.wire()
        differing = [
            f"{name}: answered {_clip(g)}, model {_clip(w)}"
            for name, g, w in zip(TASK_WIRE_FIELDS, got, want, strict=True)
            if g != w
        ]
        check(not differing, f"task {row.id} disagrees with the last OK answers: {differing}")

    def _write_conditions(
        self, caller: UserRow, task_id: int, etag: str, conditions: Conditions, field_name: str
    ) -> TaskRow | None:
        """NOT_FOUND for a task the caller may not see, ABORTED for a stale etag."""
        if task_id <= 0:
            conditions.add(INVALID, f"{field_name} not positive", field_name)
            return None
        row = self.visible(caller, task_id)
        if row is None:
            conditions.task_not_found()
            return None
        self._writable(caller, row, conditions)
        if etag and etag != row.etag:
            conditions.add(ABORTED, "stale etag")
        return row

    # --- oracles -------------------------------------------------------------------------------

    def _list_tasks(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        listing = list_tasks_conditions(
            request, caller, self.pages, conditions, title_order_exact=self.title_order_exact
        )

        def on_ok(response: Any) -> None:
            check(listing is not None, "OK for a list the model could not read")
            assert listing is not None
            scope = None if caller.is_admin else self.member_lists(caller.id)
            candidates = [
                task for task in self.tasks.values() if scope is None or task.task_list_id in scope
            ]
            ids = check_page(listing, candidates, response, request.page_size)
            for message in response.tasks:
                self._check_task(message, self.tasks[message.id])
            if response.next_page_token:
                last = self.tasks[ids[-1]] if ids else None
                issued = issued_page(listing, response.next_page_token, last)
                check(issued is not None, "an empty first page with a next_page_token")
                self.pages.append(issued)  # type: ignore[arg-type]

        return conditions.expect(on_ok)

    def _create_task(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        task = request.task
        owner = task.owner_id or caller.id
        # With a list named, the owner is that list's (owner_id may only repeat it).
        if owner != caller.id and not caller.is_admin and not task.task_list_id:
            conditions.add(DENIED, "a regular user creating for another owner")
        labels = self._value_conditions(task, TASK_FIELDS | {"parent_id"}, conditions)
        if task.task_list_id < 0:
            conditions.add(INVALID, "negative task_list_id", "task.task_list_id")
        if task.assignee_id < 0:
            conditions.add(INVALID, "negative assignee_id", "task.assignee_id")
        if len(request.request_id) > REQUEST_ID_MAX:
            conditions.add(INVALID, "request_id too long", "request_id")
        if "\x00" in request.request_id:
            conditions.add(INVALID, "request_id contains NUL", "request_id")
        key = (caller.id, request.request_id)
        earlier = self.tasks.get(self.keys.get(key, 0)) if request.request_id else None
        destination: ListRow | None = None
        if earlier is None and (task.task_list_id > 0 or task.parent_id > 0):
            destination = self._named_destination(caller, task, conditions)
        elif earlier is None and owner not in self.users:
            conditions.add(NOT_FOUND, f"owner {owner} does not exist")
        elif earlier is None and task.task_list_id == 0 and task.parent_id == 0:
            known = self.personal_lists.get(owner)
            destination = self.lists.get(known) if known is not None else None
            # A personal list the model has not met yet has its user as its only member.
            members = destination.members if destination is not None else {owner: 3}
            if task.assignee_id > 0 and task.assignee_id not in members:
                conditions.add(PRECONDITION, "ASSIGNEE_NOT_MEMBER of the personal list")
        if (
            destination is not None
            and min(task.task_list_id, task.parent_id) >= 0
            and task.assignee_id > 0
            and task.assignee_id not in destination.members
        ):
            conditions.add(PRECONDITION, "ASSIGNEE_NOT_MEMBER of the list")

        def on_ok(response: Any) -> None:
            message = response.task
            if earlier is not None:  # an idempotent retry: the first task, as it is now
                self._check_task(message, earlier)
                return
            check(message.id > 0 and message.id not in self.tasks, f"new task id {message.id}")
            named = task.task_list_id > 0 or task.parent_id > 0
            if not named:
                self.learn_personal_list(owner, message.task_list_id)
            where = destination if named else self.lists[self.personal_lists[owner]]
            assert where is not None
            check(
                message.task_list_id == where.id,
                f"task {message.id} in list {message.task_list_id}, not {where.id}",
            )
            row = TaskRow(
                id=message.id,
                owner_id=where.owner_id,
                title="",
                description="",
                status=TODO,
                due_time=None,
                priority=0,
                labels=[],
                parent_id=task.parent_id,
                etag="",
                position="",
                create_time=pair(message.create_time),
                update_time=pair(message.update_time),
                complete_time=None,
                task_list_id=where.id,
                creator_id=caller.id,
                assignee_id=task.assignee_id,
            )
            row.past_lists.add(where.id)
            row.past_owners.add(where.owner_id)
            learn = self._apply_values(row, task, TASK_FIELDS, labels) | {"position"}
            if row.status == DONE:
                learn.add("complete_time")
            self.tasks[row.id] = row
            self._learn(row, message, learn)
            self._first_among_siblings(row)
            if request.request_id:
                self.keys[key] = row.id
                self.request_ids.append(request.request_id)

        return conditions.expect(on_ok)

    def _named_destination(
        self, caller: UserRow, task: Any, conditions: Conditions
    ) -> ListRow | None:
        """CreateTask's list when the request names one (or a parent, whose list it is).

        The server checks the owner against the list before the parent's list: when both are
        wrong, INVALID_ARGUMENT names `owner_id`'s field, and may name the parent too.
        """
        parent = self.visible(caller, task.parent_id) if task.parent_id > 0 else None
        destination: ListRow | None = None
        if task.task_list_id > 0:
            destination = self.role_conditions(
                caller, task.task_list_id, EDITOR, conditions, "task list"
            )
            field_name = "task.owner_id"
        elif parent is not None:
            destination = self.lists[parent.task_list_id]
            field_name = "task.parent_id"
        if destination is not None:
            if destination.deleted:
                conditions.add(PRECONDITION, "TASK_LIST_DELETED: the list is in the trash")
            if task.owner_id and task.owner_id != destination.owner_id:
                conditions.add(INVALID, "owner_id is not the list's owner", field_name, late=True)
        if task.parent_id > 0:
            self._parent_conditions(
                caller,
                None,
                task.task_list_id if task.task_list_id > 0 else None,
                task.parent_id,
                "task.parent_id",
                conditions,
            )
        return destination

    def _get_task(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.id <= 0:
            conditions.add(INVALID, "id not positive", "id")
        elif self.visible(caller, request.id) is None:
            conditions.task_not_found()
        return conditions.expect(
            lambda response: self._check_task(response.task, self.tasks[request.id])
        )

    def _watch_tasks(self, credential: Credential, request: Any) -> Expect:
        """WatchTasks, by its first response (the fuzz reads one, then cancels the stream)."""
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        owner = request.owner_id if request.HasField("owner_id") else None
        if owner is not None and owner != caller.id and not caller.is_admin:
            conditions.add(DENIED, "a regular user watching another owner")
        if request.start_revision < 0:
            conditions.add(INVALID, "start_revision negative", "start_revision")
        if request.max_changes_per_response < 0:
            conditions.add(INVALID, "negative", "max_changes_per_response")
        _filter(request.filter, conditions)
        current = self.current_revision
        if request.start_revision > current and INVALID not in conditions.codes:
            conditions.add(OUT_OF_RANGE, f"start_revision beyond the current {current}")
        start = request.start_revision or current

        batching = request.max_changes_per_response > 1

        def on_ok(response: Any) -> None:
            check(
                batching or not response.events,
                "events in a response to a client that does not batch",
            )
            check(
                not batching
                or not (response.HasField("change") or response.HasField("access_change")),
                "a change outside `events` for a client that batches",
            )
            if batching and response.events:
                check(
                    len(response.events) <= min(request.max_changes_per_response, 1000),
                    f"{len(response.events)} events in one response",
                )
                revisions = [event.revision for event in response.events]
                check(
                    revisions == sorted(set(revisions)) and revisions[-1] == response.revision,
                    f"events at {revisions} in a response at {response.revision}",
                )
                for event in response.events:
                    one_change(event)
                return
            if not (response.HasField("change") or response.HasField("access_change")):
                # The bookmark that follows any history.
                check(start <= response.revision <= current, f"bookmark {response.revision}")
                check(
                    request.start_revision or response.revision == current,
                    "a watch from now opens with a bookmark at the current revision",
                )
                return
            one_change(response)

        def one_change(response: Any) -> None:
            """A change (a response's, or a batch's event): revision, list and owner bounds."""
            check(start < response.revision <= current, f"a change at {response.revision}")
            if response.HasField("access_change"):  # the caller gained or lost a list
                listed = response.access_change.task_list_id
                row = self.lists.get(listed)
                check(
                    row is None or caller.id in row.ever,
                    f"an access change of list {listed} to a user never its member",
                )
                return
            task = response.change.task
            known = self.tasks.get(task.id)
            if response.change.type != 5 and owner is not None:  # PURGED carries the id only
                owners = known.past_owners if known is not None else set()
                check(
                    task.owner_id == owner or owner in owners or task.id in self.gone_task_ids,
                    f"a change of user {task.owner_id}'s task",
                )
            elif response.change.type != 5 and not caller.is_admin:
                # The lists the caller was ever a member of (the model knows no history).
                ever = {row.id for row in self.lists.values() if caller.id in row.ever}
                past = known.past_lists if known is not None else set()
                check(
                    task.task_list_id in ever or past & ever or task.id in self.gone_task_ids,
                    f"a change of task {task.id} in list {task.task_list_id}, never the caller's",
                )

        return conditions.expect(on_ok)

    def _batch_get_tasks(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        ids = list(request.ids)
        if len(ids) > BATCH_MAX:
            conditions.add(INVALID, f"{len(ids)} ids", "ids")
        for index, task_id in enumerate(ids):
            if task_id <= 0:
                conditions.add(INVALID, f"ids[{index}] not positive", f"ids[{index}]")
        missing = [task_id for task_id in ids if self.visible(caller, task_id) is None]
        if missing and INVALID not in conditions.codes:
            conditions.add(NOT_FOUND, f"task {missing[0]} is missing or another user's")
            conditions.not_found_names = str(missing[0])

        def on_ok(response: Any) -> None:
            got = [message.id for message in response.tasks]
            check(got == ids, f"tasks {got} for ids {ids}")
            for message in response.tasks:
                self._check_task(message, self.tasks[message.id])

        return conditions.expect(on_ok)

    def _update_task(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        return self._replace(caller, request.task, TASK_FIELDS | {"parent_id"}, None)

    def _patch_task(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        return self._replace(caller, request.task, None, frozenset(request.update_mask.paths))

    def _replace(
        self,
        caller: UserRow,
        task: Any,
        fields: frozenset[str] | None,
        mask: frozenset[str] | None,
    ) -> Expect:
        """UpdateTask (every writable field) and PatchTask (the fields in the mask)."""
        conditions = Conditions()
        if mask is not None:
            if not mask:
                conditions.add(INVALID, "empty update_mask", "update_mask")
            if mask - PATCH_FIELDS:
                conditions.add(INVALID, f"mask paths {sorted(mask - PATCH_FIELDS)}", "update_mask")
            fields = mask & PATCH_FIELDS
        assert fields is not None
        labels = self._value_conditions(task, fields, conditions, patch=mask is not None)
        row = self._write_conditions(caller, task.id, task.etag, conditions, "task.id")
        if row is not None and row.deleted:
            conditions.add(PRECONDITION, "the task is in the trash")
        reparents = row is not None and "parent_id" in fields and task.parent_id != row.parent_id
        if row is not None and reparents:
            self._parent_conditions(
                caller, row, row.task_list_id, task.parent_id, "task.parent_id", conditions
            )
        if "assignee_id" in fields and task.assignee_id < 0:
            conditions.add(INVALID, "negative assignee_id", "task.assignee_id")
        elif (
            row is not None
            and "assignee_id" in fields
            and task.assignee_id
            and task.assignee_id not in self.lists[row.task_list_id].members
        ):
            conditions.add(PRECONDITION, "ASSIGNEE_NOT_MEMBER of the task's list")

        def on_ok(response: Any) -> None:
            assert row is not None
            if "assignee_id" in fields:
                row.assignee_id = task.assignee_id
            learn = self._apply_values(row, task, fields, labels)
            self._learn(row, response.task, learn)
            if reparents:
                self._first_among_siblings(row)

        return conditions.expect(on_ok)

    def _delete_task(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        row = self._write_conditions(caller, request.id, request.etag, conditions, "id")
        if row is not None and row.deleted:
            conditions.add(PRECONDITION, "already in the trash")

        def on_ok(response: Any) -> Resync:
            assert row is not None
            taken = self._live_subtree(row)
            self._learn(row, response.task, {*_WRITE_LEARNS, "delete_time", "purge_time"})
            check(row.delete_time is not None, f"task {row.id} deleted without delete_time")
            assert row.delete_time is not None
            retention = round(self.trash_retention_seconds)
            purge = (row.delete_time[0] + retention, row.delete_time[1])
            check(
                row.purge_time == purge, f"purge_time {row.purge_time}, not delete_time + retention"
            )
            row.trash_root = row.id
            for other in taken[1:]:
                other.delete_time, other.purge_time = row.delete_time, row.purge_time
                other.trash_root = row.id
            return Resync(tuple(t.id for t in taken[1:]), frozenset(_WRITE_LEARNS))

        return conditions.expect(on_ok)

    def _undelete_task(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        row = self._write_conditions(caller, request.id, request.etag, conditions, "id")
        if row is not None and not row.deleted:
            conditions.add(PRECONDITION, "not in the trash")
        elif row is not None:
            parent = self.tasks.get(row.parent_id)
            if row.trash_root != row.id or (parent is not None and parent.deleted):
                conditions.add(PRECONDITION, "trashed with its parent or list, still there")
            if self.lists[row.task_list_id].deleted:
                conditions.add(PRECONDITION, "TASK_LIST_DELETED: its list is in the trash")

        def on_ok(response: Any) -> Resync:
            assert row is not None
            restored = [t for t in self.tasks.values() if t.trash_root == row.id and t is not row]
            for task in [row, *restored]:
                task.delete_time = task.purge_time = task.trash_root = None
            self._learn(row, response.task, set(_WRITE_LEARNS))
            return Resync(tuple(t.id for t in restored), frozenset(_WRITE_LEARNS))

        return conditions.expect(on_ok)

    def _move_task(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.parent_id < 0:
            conditions.add(INVALID, "negative parent_id", "parent_id")
        if request.previous_id < 0:
            conditions.add(INVALID, "negative previous_id", "previous_id")
        if request.HasField("task_list_id") and request.task_list_id <= 0:
            conditions.add(INVALID, "task_list_id not positive", "task_list_id")
        row = self._write_conditions(caller, request.id, request.etag, conditions, "id")
        if row is not None and row.deleted:
            conditions.add(PRECONDITION, "the task is in the trash")
        destination = None if row is None else self.lists[row.task_list_id]
        moving = (
            row is not None
            and request.HasField("task_list_id")
            and request.task_list_id > 0
            and request.task_list_id != row.task_list_id
        )
        if moving:
            destination = self.role_conditions(
                caller, request.task_list_id, EDITOR, conditions, "task list"
            )
            if destination is not None and destination.deleted:
                conditions.add(PRECONDITION, "TASK_LIST_DELETED: the destination is in the trash")
        if row is not None and destination is not None and request.parent_id >= 0:
            self._parent_conditions(
                caller, row, destination.id, request.parent_id, "parent_id", conditions
            )
            previous = self.tasks.get(request.previous_id)
            if request.previous_id > 0 and (
                previous is None
                or previous is row
                or previous.task_list_id != destination.id
                or previous.parent_id != request.parent_id
                or previous.deleted
            ):
                conditions.add(INVALID, "previous is no live sibling", "previous_id", late=True)

        def on_ok(response: Any) -> Resync:
            assert row is not None
            assert destination is not None
            taken = self._live_subtree(row)[1:] if moving else []
            for task in [row, *taken]:
                task.task_list_id = destination.id
                task.owner_id = destination.owner_id
                task.past_lists.add(destination.id)
                task.past_owners.add(destination.owner_id)
                if task.assignee_id not in destination.members:
                    task.assignee_id = 0
            row.parent_id = request.parent_id
            self._learn(row, response.task, {*_WRITE_LEARNS, "position"})
            others = self.siblings(row.task_list_id, row.parent_id, row.id)
            before = [t.id for t in sorted(others, key=lambda t: (t.position, t.id))]

            def placed() -> None:
                now = sorted(self.siblings(row.task_list_id, row.parent_id, row.id), key=_place)
                check(
                    [t.id for t in now] == before,
                    f"a move reordered the siblings: {before} became {[t.id for t in now]}",
                )
                order = [t.id for t in sorted([row, *now], key=_place)]
                spot = order.index(request.previous_id) + 1 if request.previous_id else 0
                check(
                    order[spot] == row.id,
                    f"task {row.id} is not right after {request.previous_id} in {order}",
                )

            return Resync(
                tuple(t.id for t in [*others, *taken]),
                frozenset({*_WRITE_LEARNS, "position"}),
                placed,
            )

        return conditions.expect(on_ok)


def _place(task: TaskRow) -> tuple[str, int]:
    """Where a task sorts among its siblings: by position, then id."""
    return (task.position, task.id)


def names_id(message: str, task_id: str) -> bool:
    """Whether a message names `task_id` as a whole number."""
    return re.search(rf"(?<!\d){re.escape(task_id)}(?!\d)", message) is not None


def _clip(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"

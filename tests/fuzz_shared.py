"""The fuzz's rules for TaskListService: lists, their members and roles, and their trash.

The strategies name the lists the example has met (mostly the caller's own), and now and then
ids of no list (0, negative, or far beyond any id a server hands out). The model knows every
list's members and roles, so it predicts each call for each caller: a list the caller is not a
member of is NOT_FOUND exactly as a list that never existed (an admin reaches every list as an
OWNER would); a member whose role is too low gets PERMISSION_DENIED (reason
TASK_LIST_ROLE_REQUIRED); the last OWNER, and a personal list's user, cannot be demoted or
removed (FAILED_PRECONDITION); a trashed list refuses renames, new members and role changes.

Side effects no answer shows are read back: a removed member's tasks in the list are unassigned,
a list handed to its next OWNER hands its tasks' `owner_id` on with it, and trashing or
restoring a list takes its tasks along. Each user's personal list is learned from the first
answer that shows it (a task created there, or ListTaskLists).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fuzz_rules import (
    ABORTED,
    DENIED,
    EXISTS,
    INVALID,
    LIST_DESCRIPTION_MAX,
    LIST_TITLE_MAX,
    NOT_FOUND,
    PERSONAL_LIST_TITLE,
    PRECONDITION,
    REQUEST_ID_MAX,
    Conditions,
    Credential,
    Expect,
    Resync,
    TaskRow,
    UserRow,
    check,
    effective_page_size,
    email_or_none,
)

LIST_FIELDS = frozenset({"title", "description"})
VIEWER, EDITOR, OWNER = 1, 2, 3
#: No role on a list the caller sees all the same (a key reading every list, writing).
SEEN = 0
ROLES = frozenset({VIEWER, EDITOR, OWNER})
#: What a write of a list's tasks as a side effect may change (the answer does not show it).
_SIDE_LEARNS = frozenset({"etag", "update_time"})


@dataclass
class ListRow:
    """A list as the last OK answer about it left it, with its members."""

    id: int
    owner_id: int
    title: str
    description: str
    personal: bool
    etag: str
    #: user id -> role, and the order each joined in (the earliest OWNER is the list's owner).
    members: dict[int, int] = field(default_factory=dict)
    joined: dict[int, int] = field(default_factory=dict)
    deleted: bool = False
    #: Everyone who was ever a member (WatchTasks may still deliver what they saw then).
    ever: set[int] = field(default_factory=set)


class ListOracles:
    """TaskListService's oracles, mixed into the model."""

    users: dict[int, UserRow]
    tasks: dict[int, TaskRow]
    lists: dict[int, ListRow]
    list_keys: dict[tuple[int, str], int]
    personal_lists: dict[int, int]
    request_ids: list[str]
    trash_retention_seconds: float
    #: ListTaskLists' tokens: (caller, member, show_deleted, last list id on the page).
    list_pages: dict[str, tuple[int, int, bool, int]]
    #: ListTaskListMembers' tokens: (caller, list, last user id on the page).
    member_pages: dict[str, tuple[int, int, int]]
    #: Memberships made so far: the order members joined in.
    joins: int

    def _authenticated(self, credential: Credential) -> tuple[UserRow | None, Expect | None]:
        raise NotImplementedError

    def list_oracles(self) -> Mapping[str, Callable[[Credential, Any], Expect]]:
        """The oracle of each TaskListService method, by full method name."""
        service = "/taskservice.v1.TaskListService/"
        return {
            service + "ListTaskLists": self._list_task_lists,
            service + "CreateTaskList": self._create_task_list,
            service + "GetTaskList": self._get_task_list,
            service + "UpdateTaskList": self._update_task_list,
            service + "DeleteTaskList": self._delete_task_list,
            service + "UndeleteTaskList": self._undelete_task_list,
            service + "ListTaskListMembers": self._list_members,
            service + "AddTaskListMember": self._add_member,
            service + "UpdateTaskListMember": self._update_member,
            service + "RemoveTaskListMember": self._remove_member,
            service + "LeaveTaskList": self._leave,
        }

    # --- membership ----------------------------------------------------------------------------

    def learn_personal_list(self, user_id: int, list_id: int, etag: str = "") -> ListRow:
        """A user's personal list, met for the first time: its user is its only member."""
        known = self.personal_lists.setdefault(user_id, list_id)
        check(known == list_id, f"list {list_id} is not user {user_id}'s personal list {known}")
        row = self.lists.get(list_id)
        if row is None:
            row = ListRow(list_id, user_id, PERSONAL_LIST_TITLE, "", True, etag)
            self.lists[list_id] = row
            self.join(row, user_id, OWNER)
        return row

    def join(self, row: ListRow, user_id: int, role: int) -> None:
        """A user becomes a member (the order matters: see `settle_owner`)."""
        self.joins += 1
        row.members[user_id] = role
        row.joined[user_id] = self.joins
        row.ever.add(user_id)

    def role(self, caller: UserRow, list_id: int) -> int | None:
        """The caller's role on a list, as its access checks see it: an admin acts as an OWNER.

        None: the list is unknown, or the caller may not see it (NOT_FOUND, like a missing id);
        SEEN: it may see the list but has no role there (PERMISSION_DENIED for what needs one).
        """
        row = self.lists.get(list_id)
        if row is None:
            return None
        if caller.is_admin:
            return OWNER
        role = row.members.get(caller.id)
        if role is None and caller.sees_every_list:
            return SEEN
        return role

    def member_lists(self, user_id: int) -> set[int]:
        """The lists a user is a member of now."""
        return {row.id for row in self.lists.values() if user_id in row.members}

    def role_conditions(
        self, caller: UserRow, list_id: int, needed: int, conditions: Conditions, what: str
    ) -> ListRow | None:
        """NOT_FOUND for a list the caller may not see, PERMISSION_DENIED for too low a role."""
        role = self.role(caller, list_id)
        if role is None:
            if what == "task":
                conditions.task_not_found()
            else:
                conditions.list_not_found(list_id)
            return None
        if role < needed:
            conditions.add(DENIED, f"TASK_LIST_ROLE_REQUIRED: role {role} on list {list_id}")
        return self.lists[list_id]

    def settle_owner(self, row: ListRow) -> list[int]:
        """The earliest remaining OWNER becomes the list's owner, and its tasks'; their ids.

        Handing a list on changes each of its tasks' etag (read back by the harness).
        """
        owners = [user for user, role in row.members.items() if role == OWNER]
        if not owners:
            return []
        first = min(owners, key=lambda user: (row.joined[user], user))
        if first == row.owner_id:
            return []
        row.owner_id = first
        moved = [task for task in self.tasks.values() if task.task_list_id == row.id]
        for task in moved:
            task.owner_id = first
            task.past_owners.add(first)
        return [task.id for task in moved]

    def leave(self, row: ListRow, user_id: int) -> Resync:
        """A member leaves or is removed: their tasks there are unassigned, the owner settled."""
        del row.members[user_id]
        del row.joined[user_id]
        unassigned = [
            t for t in self.tasks.values() if t.task_list_id == row.id and t.assignee_id == user_id
        ]
        for task in unassigned:
            task.assignee_id = 0
        handed = self.settle_owner(row)
        ids = tuple(sorted({t.id for t in unassigned} | set(handed)))
        return Resync(ids, _SIDE_LEARNS if unassigned else frozenset({"etag"}))

    def forget_lists_of(self, user_id: int) -> tuple[list[int], tuple[int, ...]]:
        """A deleted user leaves every list; those they owned alone go with them.

        Returns the ids of the lists gone (their tasks go too), and of the tasks whose owner or
        assignee changed (the owner handed on, the assignee cleared).
        """
        gone, changed = [], set()
        for row in list(self.lists.values()):
            if user_id not in row.members:
                continue
            owns = row.owner_id == user_id
            others = [u for u, role in row.members.items() if role == OWNER and u != user_id]
            if owns and (row.personal or not others):
                gone.append(row.id)
                del self.lists[row.id]
                continue
            del row.members[user_id]
            del row.joined[user_id]
            changed |= set(self.settle_owner(row))
        for task in self.tasks.values():
            if task.assignee_id == user_id and task.task_list_id not in gone:
                task.assignee_id = 0
                changed.add(task.id)
        self.personal_lists.pop(user_id, None)
        return gone, tuple(sorted(changed))

    # --- the oracles ---------------------------------------------------------------------------

    def _create_task_list(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        title = request.task_list.title.strip()
        _title_conditions(title, "task_list.title", conditions)
        _description_conditions(request.task_list.description, conditions)
        if len(request.request_id) > REQUEST_ID_MAX:
            conditions.add(INVALID, "request_id too long", "request_id")
        elif "\x00" in request.request_id:
            conditions.add(INVALID, "request_id contains NUL", "request_id")
        key = (caller.id, request.request_id)
        earlier_id = self.list_keys.get(key, 0) if request.request_id else 0
        earlier = self.lists.get(earlier_id)
        if earlier_id and earlier is None:
            # Its list went with its owner; whether the key went too the contract does not say.
            conditions.perhaps(NOT_FOUND, "the list this request_id made is gone")

        def on_ok(response: Any) -> None:
            got = response.task_list
            if earlier is not None:  # an idempotent retry: the first list, as it is now
                _check_list(got, earlier)
                earlier.etag = got.etag
                return
            check(got.id > 0 and got.id not in self.lists, f"new list id {got.id}")
            row = ListRow(got.id, caller.id, title, request.task_list.description, False, got.etag)
            check(got.etag, "a new list without an etag")
            _check_list(got, row)
            self.lists[row.id] = row
            self.join(row, caller.id, OWNER)
            if request.request_id:
                self.list_keys[key] = row.id
                self.request_ids.append(request.request_id)

        return conditions.expect(on_ok)

    def _list_task_lists(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.page_size < 0:
            conditions.add(INVALID, "negative page_size", "page_size")
        named = request.HasField("member_id")
        if named and request.member_id <= 0:
            conditions.add(INVALID, "member_id not positive", "member_id")
        member = request.member_id if named and request.member_id > 0 else caller.id
        if member != caller.id and not caller.is_admin:
            conditions.add(DENIED, "a regular user listing another user's lists")
        after = 0
        if request.page_token:
            issued = self.list_pages.get(request.page_token)
            if issued is None or issued[:3] != (caller.id, member, request.show_deleted):
                conditions.add(INVALID, "not a ListTaskLists page token", "page_token")
            else:
                after = issued[3]

        def on_ok(response: Any) -> None:
            known = sorted(
                row.id
                for row in self.lists.values()
                if member in row.members
                and row.id > after
                and (request.show_deleted or not row.deleted)
            )
            # The member's personal list, while the model has not met it: anywhere in the walk
            # (lists made before the member registered, that they joined later, come first).
            unknown = member in self.users and member not in self.personal_lists
            size = effective_page_size(request.page_size)
            got = list(response.task_lists)
            ids = [item.id for item in got]
            check(ids == sorted(ids) and len(set(ids)) == len(ids), f"lists out of order: {ids}")
            check(0 < len(got) <= size or not known, f"{len(got)} lists for a page of {size}")
            new = [item for item in got if item.id not in self.lists]
            check(len(new) <= (1 if unknown else 0), f"lists {[i.id for i in new]} unknown")
            seen = [list_id for list_id in ids if list_id in self.lists]
            check(seen == known[: len(seen)], f"page {seen} is not the start of {known}")
            if not response.next_page_token:
                check(seen == known, f"no next_page_token after {ids} while {known} remain")
            for item in new:
                check(item.personal, f"list {item.id} unknown to the model")
                self.learn_personal_list(member, item.id, item.etag)
            for item in got:
                row = self.lists[item.id]
                _check_list(item, row)
                row.etag = item.etag
            if response.next_page_token and got:
                self.list_pages[response.next_page_token] = (
                    caller.id,
                    member,
                    request.show_deleted,
                    got[-1].id,
                )

        return conditions.expect(on_ok)

    def _get_task_list(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        row = self._list_conditions(caller, request.id, "id", VIEWER, conditions)

        def on_ok(response: Any) -> None:
            assert row is not None
            _check_list(response.task_list, row)
            row.etag = response.task_list.etag

        return conditions.expect(on_ok)

    def _list_conditions(
        self, caller: UserRow, list_id: int, name: str, needed: int, conditions: Conditions
    ) -> ListRow | None:
        """A list id: not positive is INVALID_ARGUMENT, then the caller's access to it."""
        if list_id <= 0:
            conditions.add(INVALID, f"{name} not positive", name)
            return None
        return self.role_conditions(caller, list_id, needed, conditions, "task list")

    def _update_task_list(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        paths = frozenset(request.update_mask.paths)
        if not paths or paths - LIST_FIELDS:
            conditions.add(INVALID, f"mask paths {sorted(paths)}", "update_mask")
        title = request.task_list.title.strip()
        if "title" in paths:
            _title_conditions(title, "task_list.title", conditions)
        if "description" in paths:
            _description_conditions(request.task_list.description, conditions)
        row = self._list_conditions(caller, request.task_list.id, "task_list.id", OWNER, conditions)
        if row is not None:
            self._etag_conditions(row, request.task_list.etag, conditions)
            if row.deleted:
                conditions.add(PRECONDITION, "TASK_LIST_DELETED: the list is in the trash")

        def on_ok(response: Any) -> None:
            assert row is not None
            if "title" in paths:
                row.title = title
            if "description" in paths:
                row.description = request.task_list.description
            self._learn_list_etag(row, response.task_list)

        return conditions.expect(on_ok)

    @staticmethod
    def _etag_conditions(row: ListRow, etag: str, conditions: Conditions) -> None:
        if etag and etag != row.etag:
            conditions.add(ABORTED, "stale list etag")

    @staticmethod
    def _learn_list_etag(row: ListRow, message: Any) -> None:
        check(message.etag and message.etag != row.etag, f"list {row.id}'s etag did not change")
        row.etag = message.etag
        _check_list(message, row)

    def _delete_task_list(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        row = self._list_conditions(caller, request.id, "id", OWNER, conditions)
        if row is not None:
            self._etag_conditions(row, request.etag, conditions)
            if row.deleted:
                conditions.add(PRECONDITION, "TASK_LIST_DELETED: already in the trash")
            if row.personal:
                conditions.add(PRECONDITION, "PERSONAL_LIST: a personal list stays")

        def on_ok(response: Any) -> Resync:
            assert row is not None
            row.deleted = True
            self._learn_list_etag(row, response.task_list)
            got = response.task_list
            retention = round(self.trash_retention_seconds)
            check(
                got.purge_time.seconds == got.delete_time.seconds + retention,
                "a list's purge_time is not delete_time + retention",
            )
            taken = [t for t in self.tasks.values() if t.task_list_id == row.id and not t.deleted]
            when = (got.delete_time.seconds, got.delete_time.nanos)
            purge = (got.purge_time.seconds, got.purge_time.nanos)
            for task in taken:
                task.delete_time, task.purge_time, task.trash_root = when, purge, None
            return Resync(tuple(t.id for t in taken), _SIDE_LEARNS)

        return conditions.expect(on_ok)

    def _undelete_task_list(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        row = self._list_conditions(caller, request.id, "id", OWNER, conditions)
        if row is not None:
            self._etag_conditions(row, request.etag, conditions)
            if not row.deleted:
                conditions.add(PRECONDITION, "TASK_LIST_NOT_DELETED")

        def on_ok(response: Any) -> Resync:
            assert row is not None
            row.deleted = False
            self._learn_list_etag(row, response.task_list)
            # Tasks that went with the list carry no trash root; those trashed alone stay.
            back = [
                t
                for t in self.tasks.values()
                if t.task_list_id == row.id and t.deleted and t.trash_root is None
            ]
            for task in back:
                task.delete_time = task.purge_time = None
            return Resync(tuple(t.id for t in back), _SIDE_LEARNS)

        return conditions.expect(on_ok)

    def _list_members(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.page_size < 0:
            conditions.add(INVALID, "negative page_size", "page_size")
        after = 0
        if request.page_token:
            issued = self.member_pages.get(request.page_token)
            if issued is None or issued[:2] != (caller.id, request.task_list_id):
                conditions.add(INVALID, "not a ListTaskListMembers page token", "page_token")
            else:
                after = issued[2]
        row = self._list_conditions(
            caller, request.task_list_id, "task_list_id", VIEWER, conditions
        )

        def on_ok(response: Any) -> None:
            assert row is not None
            remaining = sorted(user for user in row.members if user > after)
            size = effective_page_size(request.page_size)
            got = [member.user_id for member in response.members]
            check(got == remaining[:size], f"members {got}, expected {remaining[:size]}")
            check(bool(response.next_page_token) == (len(remaining) > size), "next_page_token")
            for member in response.members:
                _check_member(member, row, self.users)
            if response.next_page_token and got:
                self.member_pages[response.next_page_token] = (caller.id, row.id, got[-1])

        return conditions.expect(on_ok)

    def _add_member(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        role = request.member.role
        if role not in ROLES:
            conditions.add(INVALID, f"role {role}", "member.role")
        email = None
        if bool(request.member.user_id) == bool(request.email):
            conditions.add(INVALID, "neither or both of user_id and email", "member.user_id")
        elif request.member.user_id < 0:
            conditions.add(INVALID, "negative user_id", "member.user_id")
        elif request.email:
            email = email_or_none(request.email)
            if email is None:
                conditions.add(INVALID, "not an email", "email")
        row = self._list_conditions(caller, request.task_list_id, "task_list_id", OWNER, conditions)
        if request.member.user_id > 0:
            target = self.users.get(request.member.user_id)
        else:
            target = next((u for u in self.users.values() if u.email == email), None)
        # Told to an owner only, once the list is known to be theirs (no oracle of emails).
        if row is not None and DENIED not in conditions.codes:
            if row.deleted:
                conditions.add(PRECONDITION, "TASK_LIST_DELETED: the list is in the trash")
            if target is None or not target.is_active:
                conditions.add(NOT_FOUND, "USER_NOT_FOUND: no active user has this id or email")
            elif target.id in row.members:
                conditions.add(EXISTS, "already a member")

        def on_ok(response: Any) -> None:
            assert row is not None
            assert target is not None
            self.join(row, target.id, role)
            _check_member(response.member, row, self.users)

        return conditions.expect(on_ok)

    def _update_member(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.user_id <= 0:
            conditions.add(INVALID, "user_id not positive", "user_id")
        if request.role not in ROLES:
            conditions.add(INVALID, f"role {request.role}", "role")
        row = self._list_conditions(caller, request.task_list_id, "task_list_id", OWNER, conditions)
        if row is not None and DENIED not in conditions.codes and request.user_id > 0:
            if row.deleted:
                conditions.add(PRECONDITION, "TASK_LIST_DELETED: the list is in the trash")
            current = row.members.get(request.user_id)
            if current is None:
                conditions.add(NOT_FOUND, "MEMBER_NOT_FOUND")
            elif current == OWNER and request.role != OWNER and request.role in ROLES:
                self._owner_may_go(row, request.user_id, conditions)

        def on_ok(response: Any) -> Resync:
            assert row is not None
            row.members[request.user_id] = request.role
            _check_member(response.member, row, self.users)
            return Resync(tuple(self.settle_owner(row)), frozenset({"etag"}))

        return conditions.expect(on_ok)

    @staticmethod
    def _owner_may_go(row: ListRow, user_id: int, conditions: Conditions) -> None:
        if row.personal and user_id == row.owner_id:
            conditions.add(PRECONDITION, "PERSONAL_LIST: its user stays its owner")
        elif sum(1 for role in row.members.values() if role == OWNER) <= 1:
            conditions.add(PRECONDITION, "LAST_OWNER: the list's only owner")

    def _remove_member(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.user_id <= 0:
            conditions.add(INVALID, "user_id not positive", "user_id")
        row = self._list_conditions(caller, request.task_list_id, "task_list_id", OWNER, conditions)
        if row is not None and DENIED not in conditions.codes and request.user_id > 0:
            current = row.members.get(request.user_id)
            if current is None:
                conditions.add(NOT_FOUND, "MEMBER_NOT_FOUND")
            elif current == OWNER:
                self._owner_may_go(row, request.user_id, conditions)

        def on_ok(response: Any) -> Resync:
            assert row is not None
            return self.leave(row, request.user_id)

        return conditions.expect(on_ok)

    def _leave(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        row = self._list_conditions(
            caller, request.task_list_id, "task_list_id", VIEWER, conditions
        )
        if row is not None:
            current = row.members.get(caller.id)
            if current is None:  # an admin who sees the list without being a member
                conditions.add(NOT_FOUND, "MEMBER_NOT_FOUND: not a member")
            elif current == OWNER:
                self._owner_may_go(row, caller.id, conditions)

        def on_ok(response: Any) -> Resync:
            assert row is not None
            return self.leave(row, caller.id)

        return conditions.expect(on_ok)


def _title_conditions(title: str, field_name: str, conditions: Conditions) -> None:
    if not 0 < len(title) <= LIST_TITLE_MAX:
        conditions.add(INVALID, f"title of {len(title)} characters", field_name)
    elif any(unicodedata.category(character) == "Cc" for character in title):
        conditions.add(INVALID, "title with a control character", field_name)


def _description_conditions(description: str, conditions: Conditions) -> None:
    field_name = "task_list.description"
    if len(description) > LIST_DESCRIPTION_MAX:
        conditions.add(INVALID, "description too long", field_name)
    elif "\x00" in description:
        conditions.add(INVALID, "description contains NUL", field_name)


def _check_list(message: Any, row: ListRow) -> None:
    got = (message.id, message.owner_id, message.title, message.description, message.personal)
    want = (row.id, row.owner_id, row.title, row.description, row.personal)
    check(got == want, f"list {row.id}: answered {got}, model {want}")
    check(
        message.HasField("delete_time") == row.deleted,
        f"list {row.id}: delete_time {message.HasField('delete_time')}, model {row.deleted}",
    )


def _check_member(message: Any, row: ListRow, users: Mapping[int, UserRow]) -> None:
    got = (message.task_list_id, message.user_id, message.role)
    want = (row.id, message.user_id, row.members.get(message.user_id))
    check(got == want, f"membership {got}, model {want}")
    user = users.get(message.user_id)
    check(user is not None and message.email == user.email, f"member email {message.email!r}")

"""The fuzz's rules for TaskListService: lists the callers create and list, and refusals.

The strategies name only list ids that do not exist (0, negative, or far beyond any id a
server hands out), so every call about one list is refused exactly as documented (INVALID_ARGUMENT
for a bad field, else NOT_FOUND), and tasks stay in their owners' personal lists. What a list
call may change (members, roles, the trash) is checked by tests/test_shared_lists*.py; here the
model holds CreateTaskList and ListTaskLists to their contract, and learns each user's personal
list from the first answer that shows it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.fuzz_rules import (
    DENIED,
    INVALID,
    LIST_DESCRIPTION_MAX,
    LIST_TITLE_MAX,
    NOT_FOUND,
    PERSONAL_LIST_TITLE,
    REQUEST_ID_MAX,
    Conditions,
    Credential,
    Expect,
    UserRow,
    check,
    effective_page_size,
    email_or_none,
)

LIST_FIELDS = frozenset({"title", "description"})
ROLES = frozenset({1, 2, 3})


@dataclass
class ListRow:
    """A list as the last OK answer about it left it."""

    id: int
    owner_id: int
    title: str
    description: str
    personal: bool
    etag: str


class ListOracles:
    """TaskListService's oracles, mixed into the model."""

    users: dict[int, UserRow]
    lists: dict[int, ListRow]
    list_keys: dict[tuple[int, str], int]
    personal_lists: dict[int, int]
    request_ids: list[str]
    #: ListTaskLists' tokens: (caller, member, show_deleted, last list id on the page).
    list_pages: dict[str, tuple[int, int, bool, int]]

    def _authenticated(self, credential: Credential) -> tuple[UserRow | None, Expect | None]:
        raise NotImplementedError

    def list_oracles(self) -> Mapping[str, Callable[[Credential, Any], Expect]]:
        """The oracle of each TaskListService method, by full method name."""
        service = "/taskservice.v1.TaskListService/"
        return {
            service + "ListTaskLists": self._list_task_lists,
            service + "CreateTaskList": self._create_task_list,
            service + "GetTaskList": self._one_list("id"),
            service + "UpdateTaskList": self._update_task_list,
            service + "DeleteTaskList": self._one_list("id"),
            service + "UndeleteTaskList": self._one_list("id"),
            service + "ListTaskListMembers": self._list_members,
            service + "AddTaskListMember": self._add_member,
            service + "UpdateTaskListMember": self._update_member,
            service + "RemoveTaskListMember": self._remove_member,
            service + "LeaveTaskList": self._one_list("task_list_id"),
        }

    def forget_lists_of(self, user_id: int) -> None:
        """A deleted user's lists go with them (the only owner of each)."""
        self.lists = {i: row for i, row in self.lists.items() if row.owner_id != user_id}
        self.personal_lists.pop(user_id, None)

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
        earlier = self.lists.get(self.list_keys.get(key, 0)) if request.request_id else None

        def on_ok(response: Any) -> None:
            got = response.task_list
            if earlier is not None:  # an idempotent retry: the first list, as it is now
                _check_list(got, earlier)
                return
            check(got.id > 0 and got.id not in self.lists, f"new list id {got.id}")
            row = ListRow(got.id, caller.id, title, request.task_list.description, False, got.etag)
            check(got.etag, "a new list without an etag")
            _check_list(got, row)
            self.lists[row.id] = row
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
                if row.owner_id == member and not row.personal and row.id > after
            )
            exists = member in self.users and self.personal_lists.get(member, after + 1) > after
            total = len(known) + (1 if exists else 0)
            size = effective_page_size(request.page_size)
            got = list(response.task_lists)
            check(len(got) == min(size, total), f"{len(got)} lists of {total}, page of {size}")
            check(bool(response.next_page_token) == (total > size), "next_page_token")
            ids = [item.id for item in got]
            check(ids == sorted(ids), f"lists out of order: {ids}")
            for item in got:
                if item.id in self.lists:
                    _check_list(item, self.lists[item.id])
                    continue
                # The member's personal list, met for the first time (or as tasks told it).
                personal = self.personal_lists.setdefault(member, item.id)
                check(item.id == personal, f"list {item.id} is not {member}'s personal list")
                row = ListRow(item.id, member, PERSONAL_LIST_TITLE, "", True, item.etag)
                _check_list(item, row)
                self.lists[item.id] = row
            if response.next_page_token and got:
                self.list_pages[response.next_page_token] = (
                    caller.id,
                    member,
                    request.show_deleted,
                    got[-1].id,
                )

        return conditions.expect(on_ok)

    def _one_list(self, field: str) -> Callable[[Credential, Any], Expect]:
        """A call about one list named by `field`, with nothing else to check."""

        def oracle(credential: Credential, request: Any) -> Expect:
            caller, refused = self._authenticated(credential)
            if caller is None:
                return refused  # type: ignore[return-value]
            conditions = Conditions()
            _list_id_conditions(getattr(request, field), field, conditions)
            return conditions.expect(_no_list)

        return oracle

    def _update_task_list(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        paths = frozenset(request.update_mask.paths)
        if not paths or paths - LIST_FIELDS:
            conditions.add(INVALID, f"mask paths {sorted(paths)}", "update_mask")
        if "title" in paths:
            _title_conditions(request.task_list.title.strip(), "task_list.title", conditions)
        if "description" in paths:
            _description_conditions(request.task_list.description, conditions)
        _list_id_conditions(request.task_list.id, "task_list.id", conditions)
        return conditions.expect(_no_list)

    def _list_members(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.page_size < 0:
            conditions.add(INVALID, "negative page_size", "page_size")
        if request.page_token:
            conditions.add(INVALID, "not a ListTaskListMembers page token", "page_token")
        _list_id_conditions(request.task_list_id, "task_list_id", conditions)
        return conditions.expect(_no_list)

    def _add_member(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.member.role not in ROLES:
            conditions.add(INVALID, f"role {request.member.role}", "member.role")
        if bool(request.member.user_id) == bool(request.email):
            conditions.add(INVALID, "neither or both of user_id and email", "member.user_id")
        elif request.member.user_id < 0:
            conditions.add(INVALID, "negative user_id", "member.user_id")
        elif request.email and email_or_none(request.email) is None:
            conditions.add(INVALID, "not an email", "email")
        _list_id_conditions(request.task_list_id, "task_list_id", conditions)
        return conditions.expect(_no_list)

    def _update_member(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.user_id <= 0:
            conditions.add(INVALID, "user_id not positive", "user_id")
        if request.role not in ROLES:
            conditions.add(INVALID, f"role {request.role}", "role")
        _list_id_conditions(request.task_list_id, "task_list_id", conditions)
        return conditions.expect(_no_list)

    def _remove_member(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if request.user_id <= 0:
            conditions.add(INVALID, "user_id not positive", "user_id")
        _list_id_conditions(request.task_list_id, "task_list_id", conditions)
        return conditions.expect(_no_list)


def _no_list(response: Any) -> None:
    check(False, "OK about a list that does not exist")


def _list_id_conditions(list_id: int, field: str, conditions: Conditions) -> None:
    """A list id: not positive is INVALID_ARGUMENT; any other names no list (see the module)."""
    if list_id <= 0:
        conditions.add(INVALID, f"{field} not positive", field)
    else:
        conditions.add(NOT_FOUND, f"no task list {list_id}")


def _title_conditions(title: str, field: str, conditions: Conditions) -> None:
    if not 0 < len(title) <= LIST_TITLE_MAX:
        conditions.add(INVALID, f"title of {len(title)} characters", field)
    elif any(unicodedata.category(character) == "Cc" for character in title):
        conditions.add(INVALID, "title with a control character", field)


def _description_conditions(description: str, conditions: Conditions) -> None:
    field = "task_list.description"
    if len(description) > LIST_DESCRIPTION_MAX:
        conditions.add(INVALID, "description too long", field)
    elif "\x00" in description:
        conditions.add(INVALID, "description contains NUL", field)


def _check_list(message: Any, row: ListRow) -> None:
    got = (message.id, message.owner_id, message.title, message.description, message.personal)
    want = (row.id, row.owner_id, row.title, row.description, row.personal)
    check(got == want, f"list {row.id}: answered {got}, model {want}")
    check(not message.HasField("delete_time"), f"list {row.id} in the trash")

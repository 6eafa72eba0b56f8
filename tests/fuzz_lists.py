"""ListTasks as its proto comments describe it: who sees what, filters, orderings, keyset pages.

What a filter *means* is taken from the server's parser and its in-memory evaluator (which its
own tests hold equal to the SQL it runs); everything else (scopes, orderings, where a page token
continues, what a page may hold) is restated here. Filters the strategies build from the
documented grammar are registered in `DOCUMENTED_FILTERS`: the server must accept every one.

Membership is uncertain in one documented corner only: `title:"x"` folds case as each database
does (SQLite folds ASCII letters only), so with a non-ASCII needle or title the task may or may
not match; such tasks may appear or not, every other one must.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskservice.db.models import TaskStatus
from taskservice.errors import InvalidArgument
from taskservice.services.filtering import (
    And,
    Comparison,
    Expression,
    Filter,
    Not,
    Op,
    Or,
    canonical,
    matches,
    parse,
)
from taskservice.services.task_lists import TASK_FILTER_SCHEMA, parse_order_by
from tests.fuzz_rules import (
    DENIED,
    INVALID,
    MAX_PAGE_BYTES,
    ORDER_FIELDS,
    STATUSES,
    Conditions,
    IssuedPage,
    TaskRow,
    UserRow,
    check,
    effective_page_size,
    to_datetime,
)

#: Filters built from the documented grammar (by the strategies): each must be accepted.
DOCUMENTED_FILTERS: set[str] = set()

_STATUS = {1: TaskStatus.TODO, 2: TaskStatus.IN_PROGRESS, 3: TaskStatus.DONE}


@dataclass(frozen=True)
class Ordering:
    """One documented order: a field and a direction; `create_time` orders by id."""

    name: str
    descending: bool
    #: False when the model cannot tell the database's order of the key (a title collation).
    exact: bool = True

    def key(self, task: TaskRow) -> tuple[bool, object, int]:
        """(missing?, value, id): tasks missing the value come last in either direction."""
        value: object
        if self.name == "create_time":
            return (False, 0, task.id)
        if self.name == "update_time":
            value = task.update_time
        elif self.name == "due_time":
            value = task.due_time
        elif self.name == "priority":
            value = task.priority or None
        elif self.name == "title":
            value = task.title
        else:
            value = task.position
        return (value is None, value, task.id)

    def compare(self, a: tuple[bool, object, int], b: tuple[bool, object, int]) -> int:
        """Negative when a sorts before b in this order."""
        if a[0] != b[0]:
            return 1 if a[0] else -1
        sign = -1 if self.descending else 1
        if not a[0] and a[1] != b[1]:
            return sign * (1 if a[1] > b[1] else -1)  # type: ignore[operator]
        return sign * ((a[2] > b[2]) - (a[2] < b[2]))

    def sort(self, tasks: Sequence[TaskRow]) -> list[TaskRow]:
        """The tasks in this order."""
        return sorted(
            tasks,
            key=functools.cmp_to_key(lambda a, b: self.compare(self.key(a), self.key(b))),
        )


def record(task: TaskRow) -> dict[str, object]:
    """A task as the filter evaluator reads it (unset values as None; the top level as 0)."""
    return {
        "status": _STATUS[task.status],
        "priority": task.priority or None,
        "labels": task.labels,
        "owner_id": task.owner_id,
        "parent_id": task.parent_id,
        "task_list_id": task.task_list_id,
        "assignee_id": task.assignee_id or None,
        "creator_id": task.creator_id,
        "title": task.title,
        "due_time": to_datetime(task.due_time) if task.due_time else None,
        "create_time": to_datetime(task.create_time),
        "update_time": to_datetime(task.update_time),
        "complete_time": to_datetime(task.complete_time) if task.complete_time else None,
    }


def _title_needles(expression: Expression | None) -> list[str]:
    """The values of every `title:` substring test in the filter."""
    if expression is None:
        return []
    if isinstance(expression, Comparison):
        is_needle = expression.field == "title" and expression.op is Op.HAS
        return [str(expression.value)] if is_needle else []
    if isinstance(expression, Not):
        return _title_needles(expression.operand)
    if isinstance(expression, And | Or):
        return [n for operand in expression.operands for n in _title_needles(operand)]
    return []


def membership(parsed: Filter, task: TaskRow) -> bool | None:
    """Whether the filter selects the task; None where the databases may differ."""
    needles = _title_needles(parsed.expression)
    if needles and not (task.title.isascii() and all(n.isascii() for n in needles)):
        return None
    return matches(parsed, record(task))


@dataclass
class ListRequest:
    """What the model made of one ListTasks request before the answer."""

    scope: tuple[object, ...]
    ordering: Ordering
    parsed: Filter
    after: tuple[bool, object, int] | None
    owner: int | None
    status: int
    show_deleted: bool


def list_tasks_conditions(
    request: Any,
    caller: UserRow,
    pages: Sequence[IssuedPage],
    conditions: Conditions,
    *,
    title_order_exact: bool,
) -> ListRequest | None:
    """ListTasks' documented errors; what the request means when it is valid."""
    # A regular user lists the tasks of their lists (the caller's scope), of one owner's lists
    # with `owner_id` (themself only); tokens name the scope's owner either way.
    owner = request.owner_id if request.HasField("owner_id") else None
    if owner is not None and owner != caller.id and not caller.is_admin:
        conditions.add(DENIED, "a regular user naming another owner_id")
    scope_owner = owner if owner is not None else (None if caller.is_admin else caller.id)
    if request.page_size < 0:
        conditions.add(INVALID, "negative page_size", "page_size")
    if request.status not in STATUSES and request.status != 0:
        conditions.add(INVALID, f"unknown status {request.status}", "status")
    parsed = _filter(request.filter, conditions)
    ordering = _ordering(request.order_by, conditions, title_order_exact=title_order_exact)
    if parsed is None or ordering is None:
        if request.page_token:
            conditions.may_name("page_token", "its list is unknown while filter or order_by is bad")
        return None
    scope = (
        "tasks",
        caller.id,
        request.status,
        scope_owner,
        canonical(parsed) if parsed.expression is not None else None,
        ordering.name,
        ordering.descending,
        request.show_deleted,
    )
    after = None
    if request.page_token:
        issued = next((page for page in pages if page.token == request.page_token), None)
        if issued is None:
            conditions.add(INVALID, "page_token was never issued", "page_token")
        elif issued.scope != scope:
            conditions.add(INVALID, "page_token issued for another list", "page_token")
        else:
            after = issued.after
    return ListRequest(
        scope,
        ordering,
        parsed,
        after,
        owner,
        request.status,
        request.show_deleted,  # type: ignore[arg-type]
    )


def _filter(text: str, conditions: Conditions) -> Filter | None:
    try:
        return parse(text, TASK_FILTER_SCHEMA, "filter")
    except InvalidArgument as error:
        if text in DOCUMENTED_FILTERS:
            # The documented grammar allows it: the server must accept it. Expect OK; the
            # server's refusal then fails the run, naming this filter.
            conditions.reasons.append(f"(documented filter refused by the parser: {error})")
            return None
        conditions.add(INVALID, f"filter does not parse: {error.message}", "filter")
        return None


def _ordering(text: str, conditions: Conditions, *, title_order_exact: bool) -> Ordering | None:
    words = text.split()
    documented = {"": ("create_time", True)} | {
        form: (name, form.endswith(" desc"))
        for name in ORDER_FIELDS
        for form in (name, f"{name} desc")
    }
    if text in documented:
        name, descending = documented[text]
    elif not words or (words[0] in ORDER_FIELDS and words[1:] in ([], ["desc"])):
        # White space only, or other white space around documented words: the comment does not
        # say. Either answer.
        conditions.perhaps(INVALID, f"order_by {text!r} is spaced unusually", "order_by")
        meaning = parse_order_by(text)
        name, descending = meaning.name.split()[0], meaning.descending
    else:
        conditions.add(INVALID, f"order_by {text!r} is not a documented ordering", "order_by")
        return None
    return Ordering(name, descending, exact=name != "title" or title_order_exact)


def check_page(
    listing: ListRequest, tasks: Sequence[TaskRow], response: Any, requested_size: int
) -> list[int]:
    """The page continues exactly where the token pointed, in order, within size, to the end.

    `tasks` are the candidates the model knows (everything the caller's scope holds). Returns
    the ids on the page.
    """
    ordering = listing.ordering
    selected: list[tuple[TaskRow, bool]] = []
    for task in tasks:
        if listing.owner is not None and task.owner_id != listing.owner:
            continue
        if task.deleted and not listing.show_deleted:
            continue
        if listing.status and task.status != listing.status:
            continue
        member = membership(listing.parsed, task)
        if member is not False:
            selected.append((task, member is True))
    ids = [task.id for task in response.tasks]
    if not ordering.exact:  # the order of the key is the database's: membership only
        everything = {task.id for task, _ in selected}
        check(set(ids) <= everything, f"page {ids} holds tasks outside {sorted(everything)}")
        check(len(set(ids)) == len(ids), f"a page repeats a task: {ids}")
        return ids
    ordered = ordering.sort([task for task, _ in selected])
    certain = {task.id for task, sure in selected if sure}
    if listing.after is not None:
        start = listing.after
        ordered = [t for t in ordered if ordering.compare(ordering.key(t), start) > 0]
    size = effective_page_size(requested_size)
    check(len(ids) <= size, f"a page of {len(ids)} for page_size {requested_size}")
    check(len(set(ids)) == len(ids), f"a page repeats a task: {ids}")
    check(
        len(ids) <= 1 or response.ByteSize() <= MAX_PAGE_BYTES + 64 * 1024,
        f"a page of {response.ByteSize()} bytes",
    )
    remaining = [t.id for t in ordered]
    position = 0
    for task_id in ids:
        while position < len(remaining) and remaining[position] != task_id:
            check(
                remaining[position] not in certain,
                f"page {ids} skips task {remaining[position]} (expected {remaining})",
            )
            position += 1
        check(position < len(remaining), f"page {ids} is not the start of {remaining}")
        position += 1
    rest = [task_id for task_id in remaining[position:] if task_id in certain]
    check(bool(ids) or not rest, f"an empty page while {rest} remain")
    check(
        bool(response.next_page_token) or not rest,
        f"no next_page_token after {ids} while {rest} remain",
    )
    return ids


def issued_page(listing: ListRequest, token: str, last: TaskRow | None) -> IssuedPage | None:
    """What a next_page_token continues from: the last task's sort key, as it was.

    None for a token after an empty page that the model cannot place (checked elsewhere).
    """
    if last is None:
        return None if listing.after is None else IssuedPage(token, listing.scope, listing.after)
    return IssuedPage(token, listing.scope, listing.ordering.key(last))

"""ListTasks' `filter` and `order_by`: the filterable fields and the keyset orderings of tasks.

Kept apart from the CRUD rules in `tasks.py`: this module only turns request text into SQL.

Filters name API fields, never columns; `TASK_FILTER_SCHEMA` is the whitelist and `_COLUMNS` says
where each field lives. Priority 0 means "no priority", so the priority field is a clause factory
that treats 0 as unset (a comparison never matches an unset value, as for NULL columns).

Orderings are keyset-paginated whatever the key. Each ordering splits the tasks into at most two
segments, each read in index order:

- the *present* segment: tasks with a value, ordered by (value, id) in the asked direction;
- the *missing* segment: tasks without one (no due time, no priority), ordered by id in the asked
  direction, always after the present segment.

A page reads the present segment past the token's key and, when that runs out, the missing one.
Both queries are plain `col > v OR (col = v AND id > i)` seeks with a redundant `col >= v` bound
and ORDER BY (col, id), which an index on (owner_id, col, id) serves from the seek position on
both databases, so a deep page costs what the first does. (One query ordered by `col IS NULL,
coalesce(col, ...)` would be simpler but can use no plain index for its order.)

`create_time` is ordered by id: ids are assigned from one sequence as tasks are created, so both
orders agree except for tasks created concurrently within microseconds of each other, and the id
keeps the default list on the indexes and prebuilt statements it has always used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, exists, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from taskservice.db.models import Task, TaskLabel, TaskPriority, TaskStatus
from taskservice.db.records import TaskRecord
from taskservice.errors import InvalidArgument
from taskservice.services.filtering import (
    ANY,
    And,
    ColumnTarget,
    Comparison,
    EnumValue,
    Field,
    Filter,
    Kind,
    Op,
    Schema,
    Value,
    conjunction,
    to_sql,
)

#: What ListTasks' `filter` may name; documented on ListTasksRequest.filter.
TASK_FILTER_SCHEMA = Schema(
    Field(
        "status",
        Kind.ENUM,
        enum_values={f"TASK_STATUS_{status.name}": status for status in TaskStatus},
    ),
    Field(
        "priority",
        Kind.ENUM,
        presence=True,
        enum_values={
            f"TASK_PRIORITY_{priority.name}": int(priority)
            for priority in TaskPriority
            if priority is not TaskPriority.UNSPECIFIED
        },
    ),
    Field("labels", Kind.LABELS, presence=True),
    Field("owner_id", Kind.INT),
    Field("parent_id", Kind.INT),
    Field("task_list_id", Kind.INT),
    Field("assignee_id", Kind.INT, presence=True),
    Field("creator_id", Kind.INT),
    Field("title", Kind.STRING),
    Field("due_time", Kind.TIMESTAMP, presence=True),
    Field("create_time", Kind.TIMESTAMP),
    Field("update_time", Kind.TIMESTAMP),
    Field("complete_time", Kind.TIMESTAMP, presence=True),
)


def _priority_clause(op: Op, value: Value) -> ColumnElement[bool]:
    """Priority with 0 as unset: `=` and `!=` never match 0, `priority:*` means not 0.

    Written on the bare column (never NULL) so that the (owner_id, priority, id) index serves it.
    """
    if value is ANY:
        return Task.priority != 0
    if not isinstance(value, EnumValue):
        raise TypeError("priority compares with TASK_PRIORITY_* names only")
    if op is Op.EQ:
        return Task.priority == value.value
    return and_(Task.priority != 0, Task.priority != value.value)


def _parent_clause(op: Op, value: Value) -> ColumnElement[bool]:
    """`parent_id = 0` is the top level (NULL in the table); other comparisons are plain."""
    column = func.coalesce(Task.parent_id, 0)
    if op is Op.EQ:
        return Task.parent_id.is_(None) if value == 0 else Task.parent_id == value
    comparisons = {
        Op.NE: column != value,
        Op.LT: column < value,
        Op.LE: column <= value,
        Op.GT: column > value,
        Op.GE: column >= value,
    }
    return comparisons[op]


def _labels_clause(op: Op, value: Value) -> ColumnElement[bool]:
    """`labels:"x"` (the parser has case-folded x, as task_labels keys are) and `labels:*`."""
    query = select(TaskLabel.task_id).where(TaskLabel.task_id == Task.id)
    if value is not ANY:
        query = query.where(TaskLabel.key == value)
    return exists(query)


_COLUMNS: Mapping[str, ColumnTarget] = {
    "status": Task.status,
    "priority": _priority_clause,
    "labels": _labels_clause,
    "owner_id": Task.owner_id,
    "parent_id": _parent_clause,
    "task_list_id": Task.task_list_id,
    "assignee_id": Task.assignee_id,
    "creator_id": Task.creator_id,
    "title": Task.title,
    "due_time": Task.due_time,
    "create_time": Task.create_time,
    "update_time": Task.update_time,
    "complete_time": Task.complete_time,
}


def filter_clause(parsed: Filter) -> ColumnElement[bool]:
    """The WHERE clause of a parsed task filter."""
    return to_sql(parsed, _COLUMNS)


def split_required_label(parsed: Filter) -> tuple[str | None, Filter]:
    """A label key the whole filter requires (`labels:"x"` ANDed at its top), and the rest of it.

    A user's list needing a label reads it from `with_owner_label`: the page then seeks in the
    owner's keys of that label instead of testing each of the owner's tasks for it.
    """
    expression = parsed.expression
    if expression is None:
        return None, parsed
    operands = expression.operands if isinstance(expression, And) else (expression,)
    for index, operand in enumerate(operands):
        if (
            isinstance(operand, Comparison)
            and operand.field == "labels"
            and isinstance(operand.value, str)
        ):
            rest = [*operands[:index], *operands[index + 1 :]]
            return operand.value, Filter(conjunction(rest) if rest else None)
    return None, parsed


def with_owner_label(base: Select[tuple[Task]], key: str) -> Select[tuple[Task]]:
    """`base` joined to the `owner_id` parameter's rows of label `key`, one per task at most.

    Order and seek such a list on `TaskLabel.task_id` (equal to the task's id): the index on
    (owner_id, key, task_id) then serves the page from its position, reading only its tasks.
    """
    return base.join(
        TaskLabel,
        and_(
            TaskLabel.task_id == Task.id,
            TaskLabel.owner_id == bindparam("owner_id"),
            TaskLabel.key == key,
        ),
    )


def has_label(key: str) -> ColumnElement[bool]:
    """Whether a task has label `key`, tested task by task (one probe of task_labels' key).

    For a page read from one list's index in its order: the label is then a test on each task
    read. Spelled as a scalar subquery, not EXISTS, because PostgreSQL turns an EXISTS into a
    join, and its generic plan for a prepared page merged the list's tasks with every user's
    keys of the label in id order, reading everyone's keys newer than the page.
    """
    probe = select(literal(1)).where(TaskLabel.task_id == Task.id, TaskLabel.key == key)
    return probe.scalar_subquery().is_not(None)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    """A datetime as integer microseconds since the epoch: exact, and a JSON scalar."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int | str | None) -> datetime:
    if type(value) is not int:
        raise TypeError("not a timestamp")
    return _EPOCH + timedelta(microseconds=value)


def _text(value: int | str | None) -> str:
    if type(value) is not str:
        raise TypeError("not a string")
    return value


def _integer(value: int | str | None) -> int:
    if type(value) is not int:
        raise TypeError("not an integer")
    return value


@dataclass(frozen=True)
class _Key:
    """A sort column besides the id: how to read it from a row and back from a token."""

    column: Any
    #: Tasks with no value here, which come after all others; None when every task has one.
    missing: ColumnElement[bool] | None
    is_missing: Callable[[TaskRecord], bool]
    to_token: Callable[[TaskRecord], int | str]
    from_token: Callable[[int | str | None], object]


_KEYS: Mapping[str, _Key | None] = {
    "create_time": None,  # by id: see the module docstring
    "update_time": _Key(
        Task.update_time,
        None,
        lambda task: False,
        lambda task: _micros(task.update_time),
        _from_micros,
    ),
    "due_time": _Key(
        Task.due_time,
        Task.due_time.is_(None),
        lambda task: task.due_time is None,
        lambda task: _micros(task.due_time) if task.due_time else 0,
        _from_micros,
    ),
    "priority": _Key(
        Task.priority,
        Task.priority == 0,
        lambda task: task.priority == 0,
        lambda task: int(task.priority),
        _integer,
    ),
    "title": _Key(Task.title, None, lambda task: False, lambda task: task.title, _text),
    # Manual order, meaningful within one sibling list (filter on parent_id).
    "position": _Key(
        Task.position, None, lambda task: False, lambda task: int(task.position), _integer
    ),
}

DEFAULT_ORDER = "create_time desc"
_ORDER_EXPECTED = (
    "one of create_time, update_time, due_time, priority, title, position, optionally followed "
    "by ' desc'"
)


@dataclass(frozen=True)
class Ordering:
    """One parsed `order_by`: a key (None: the id alone) and a direction."""

    name: str
    key: _Key | None
    descending: bool

    @property
    def is_default(self) -> bool:
        """Whether this is newest first, which the prebuilt statements serve."""
        return self.name == DEFAULT_ORDER

    def page_key(self, task: TaskRecord) -> list[int | str | None]:
        """The token value for the page after `task`: [missing?, value, id] or [id]."""
        if self.key is None:
            return [task.id]
        if self.key.is_missing(task):
            return [1, None, task.id]
        return [0, self.key.to_token(task), task.id]

    def seek(self, after: Sequence[int | str | None] | None) -> Seek:
        """Where the page past `after` (a token's key, None for the first page) starts.

        Raises InvalidArgument on `page_token` when `after` has not this ordering's shape.
        """
        try:
            return self._seek(after)
        except (TypeError, ValueError, OverflowError):
            raise InvalidArgument.field(
                "page_token", "not a page token this server issued for this request"
            ) from None

    def _seek(self, after: Sequence[int | str | None] | None) -> Seek:
        key = self.key
        if after is None:
            return Seek(found=False, in_missing=False, value=None, task_id=None)
        if key is None:
            if len(after) != 1:
                raise ValueError("wrong length")
            return Seek(found=True, in_missing=False, value=None, task_id=_integer(after[0]))
        if len(after) != 3 or after[0] not in (0, 1):
            raise ValueError("wrong shape")
        if after[0] == 1:
            if key.missing is None:
                raise ValueError("this ordering has no missing segment")
            return Seek(found=True, in_missing=True, value=None, task_id=_integer(after[2]))
        value = key.from_token(after[1])
        return Seek(found=True, in_missing=False, value=value, task_id=_integer(after[2]))

    def statements(
        self,
        base: Select[tuple[Task]],
        found: bool,
        in_missing: bool,
        id_column: Any = Task.id,
    ) -> list[Select[tuple[Task]]]:
        """The queries that read one page from a `Seek` of this shape, to run in order.

        The seek's values and the page's size are bound parameters (`after_value`, `after_id`,
        `limit`), so the statements depend on the shape alone and can be built once and reused.
        `id_column` is what an id ordering seeks and sorts on: the task's id, or a column equal
        to it whose index serves the page better (see `with_owner_label`).
        """
        return [segment.statement for segment in self.segments(base, found, in_missing, id_column)]

    def segments(
        self,
        base: Select[tuple[Task]],
        found: bool,
        in_missing: bool,
        id_column: Any = Task.id,
    ) -> list[Segment]:
        """`statements`, each with the columns it sorts on, so a caller can merge its rows."""
        key = self.key
        if key is None:
            return [self._by_id(base, seek=found, id_column=id_column)]
        segments = []
        if not in_missing:
            present = base if key.missing is None else base.where(~key.missing)
            segments.append(self._by_key(present, key.column, seek=found))
        if key.missing is not None:
            segments.append(self._by_id(base.where(key.missing), seek=in_missing))
        return segments

    def _by_id(
        self, query: Select[tuple[Task]], *, seek: bool, id_column: Any = Task.id
    ) -> Segment:
        if seek:
            after = bindparam("after_id", type_=Task.id.type)
            query = query.where(id_column < after if self.descending else id_column > after)
        return self._segment(query, (id_column,))

    def _by_key(self, query: Select[tuple[Task]], column: Any, *, seek: bool) -> Segment:
        if seek:
            value = bindparam("after_value", type_=column.type)
            task_id = bindparam("after_id", type_=Task.id.type)
            if self.descending:
                bound = column <= value
                past = or_(column < value, and_(column == value, Task.id < task_id))
            else:
                bound = column >= value
                past = or_(column > value, and_(column == value, Task.id > task_id))
            # The bound repeats what `past` implies, as a range the index can seek to.
            query = query.where(bound, past)
        return self._segment(query, (column, Task.id))

    def _segment(self, query: Select[tuple[Task]], sort: tuple[Any, ...]) -> Segment:
        """`query` ordered on `sort` in this ordering's direction, a page long."""
        ordered = query.order_by(*sort_order(sort, descending=self.descending))
        return Segment(ordered.limit(bindparam("limit")), sort, self.descending)


def sort_order(columns: Sequence[Any], *, descending: bool) -> list[Any]:
    """ORDER BY clauses for `columns`, every one in the same direction."""
    return [column.desc() if descending else column.asc() for column in columns]


@dataclass(frozen=True)
class Segment:
    """One query of an ordering: its statement, and the columns it sorts on in `descending`."""

    statement: Select[Any]
    sort: tuple[Any, ...]
    descending: bool


@dataclass(frozen=True)
class Seek:
    """Where a page starts, from its token's key.

    Past (value, task_id) in the present segment, or past task_id in the missing one
    (`in_missing`); `found` is False on a first page.
    """

    found: bool
    in_missing: bool
    value: object
    task_id: int | None

    def parameters(self) -> dict[str, object]:
        """The statements' seek parameters."""
        return {"after_value": self.value, "after_id": self.task_id}


def parse_order_by(text: str) -> Ordering:
    """`field` or `field desc` (AIP-132, one key); empty means newest first."""
    words = text.split()
    if not words:
        words = DEFAULT_ORDER.split()
    name = words[0].rstrip(",")
    if (
        name not in _KEYS
        or len(words) > 2
        or "," in text
        or (len(words) == 2 and words[1] != "desc")
    ):
        raise InvalidArgument.field("order_by", f"expected {_ORDER_EXPECTED}, got {text!r}")
    descending = len(words) == 2
    return Ordering(f"{name} desc" if descending else name, _KEYS[name], descending)

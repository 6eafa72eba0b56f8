"""A parsed filter as a SQLAlchemy WHERE clause, portable between PostgreSQL and SQLite.

The caller maps each field to where it lives: a column expression, or for what a single column
cannot express (labels in a table of their own) a factory that builds the clause from the
operator and value. The compiler never sees table names, so the same filter module serves tasks,
audit events and whatever lists come next.

Unset values: every comparison on a column is compiled as `col IS NOT NULL AND col <op> value`,
which is TRUE or FALSE, never SQL's NULL. NOT then means "the comparison is not true", exactly as
`matches()` evaluates it: `due_time < X` never matches a task without a due time, and so
`NOT due_time < X` always does (and so does `NOT due_time = X`, while `due_time != X` does not).
A factory must keep the same promise: its clause is never NULL (EXISTS is a good shape).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import and_, func, not_, or_, true
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement

from taskservice.services.filtering.nodes import (
    ANY,
    And,
    Comparison,
    EnumValue,
    Expression,
    Filter,
    Not,
    Value,
)
from taskservice.services.filtering.schema import Kind, Op

#: Builds the clause for one comparison on a field that is not a plain column: it receives the
#: operator and the parsed value (ANY for a presence test) and returns a clause that is never NULL.
ClauseFactory = Callable[[Op, Value], ColumnElement[bool]]
#: Where a field lives: a column (`Task.title`, `table.c.title`) or a ClauseFactory.
ColumnTarget = ColumnElement[Any] | QueryableAttribute[Any] | ClauseFactory

_COMPARE: Mapping[Op, Callable[[Any, Any], ColumnElement[bool]]] = {
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.GT: operator.gt,
    Op.GE: operator.ge,
}


def to_sql(filter_: Filter, columns: Mapping[str, ColumnTarget]) -> ColumnElement[bool]:
    """The WHERE clause selecting exactly the rows `matches()` accepts; TRUE for no filter.

    Raises LookupError when a field in the filter has no entry in `columns`, and TypeError
    when a LABELS field is mapped to a column: both are wiring mistakes, not the caller's.
    """
    if filter_.expression is None:
        return true()
    return _compile(filter_.expression, columns)


def like_pattern(needle: str) -> str:
    """A LIKE pattern (escape character backslash) for "contains `needle`" taken literally."""
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _compile(expression: Expression, columns: Mapping[str, ColumnTarget]) -> ColumnElement[bool]:
    if isinstance(expression, Comparison):
        return _comparison(expression, columns)
    if isinstance(expression, Not):
        return not_(_compile(expression.operand, columns))
    operands = [_compile(operand, columns) for operand in expression.operands]
    return and_(*operands) if isinstance(expression, And) else or_(*operands)


def _comparison(comparison: Comparison, columns: Mapping[str, ColumnTarget]) -> ColumnElement[bool]:
    target = columns.get(comparison.field)
    if target is None:
        raise LookupError(f"no column is mapped for filter field {comparison.field!r}")
    if not hasattr(target, "__clause_element__") and callable(target):
        return target(comparison.op, comparison.value)
    column: Any = target
    if comparison.value is ANY:
        return column.is_not(None)
    if comparison.kind is Kind.LABELS:
        raise TypeError(f"LABELS field {comparison.field!r} needs a ClauseFactory, not a column")
    if comparison.op is Op.HAS:
        needle = str(comparison.value)
        clause = func.lower(column).like(like_pattern(needle), escape="\\")
    else:
        value = comparison.value
        clause = _COMPARE[comparison.op](
            column, value.value if isinstance(value, EnumValue) else value
        )
    return and_(column.is_not(None), clause)

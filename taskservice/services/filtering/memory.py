"""A parsed filter evaluated against one in-memory record, with the SQL compiler's semantics.

WatchTasks decides from a changed task, before and after the change, whether a watcher sees it;
ListTasks decides in SQL. Both must agree or a watcher would miss or gain tasks a list shows
differently, so this module follows `to_sql()` rule for rule (and a test checks the two
against SQLite on random filters and records):

- a record is a mapping from field name to value; a missing key or None is unset;
- a comparison on an unset value is false, and NOT is "not true" (see `sql`);
- ENUM values compare with the stored value the schema maps the name to;
- TIMESTAMP values must be aware datetimes;
- STRING `:` is a substring test on `str.lower()` of both sides, as SQL's `lower()` on
  PostgreSQL; SQLite's `lower()` folds ASCII only, so there a non-ASCII letter matches only in
  the same case (map the field to a column stored pre-folded where that matters);
- LABELS is a collection of strings; `:` is true when one of them, casefolded, equals the
  value, and `labels:*` when there is at least one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any

from taskservice.services.filtering.nodes import (
    ANY,
    And,
    Comparison,
    EnumValue,
    Expression,
    Filter,
    Not,
)
from taskservice.services.filtering.schema import Kind, Op

_COMPARE: Mapping[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.GT: operator.gt,
    Op.GE: operator.ge,
}


def matches(filter_: Filter, record: Mapping[str, object]) -> bool:
    """Whether `record` is selected by the filter, exactly as `to_sql()` would select its row."""
    return filter_.expression is None or _evaluate(filter_.expression, record)


def _evaluate(expression: Expression, record: Mapping[str, object]) -> bool:
    if isinstance(expression, Comparison):
        return _comparison(expression, record.get(expression.field))
    if isinstance(expression, Not):
        return not _evaluate(expression.operand, record)
    if isinstance(expression, And):
        return all(_evaluate(operand, record) for operand in expression.operands)
    return any(_evaluate(operand, record) for operand in expression.operands)


def _comparison(comparison: Comparison, actual: object) -> bool:
    if comparison.kind is Kind.LABELS:
        labels: Collection[str] = actual if isinstance(actual, Collection) else ()
        if comparison.value is ANY:
            return len(labels) > 0
        return any(label.casefold() == comparison.value for label in labels)
    if actual is None:
        return False
    if comparison.value is ANY:
        return True
    if comparison.op is Op.HAS:
        return isinstance(actual, str) and str(comparison.value) in actual.lower()
    value = comparison.value
    expected = value.value if isinstance(value, EnumValue) else value
    return bool(_COMPARE[comparison.op](actual, expected))

"""The parsed filter: an immutable tree of typed comparisons joined by AND, OR and NOT.

Values are already in the form they are compared in (ints, enum values, aware UTC datetimes,
folded strings where the comparison ignores case), so the SQL compiler and the in-memory
evaluator never read filter text again. `canonical()` writes a tree back as text in one spelling
per meaning, for binding page tokens to what a filter means rather than how it was typed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from taskservice.services.filtering.schema import Kind, Op


class Wildcard(enum.Enum):
    """The `*` of a presence test (`due_time:*`)."""

    ANY = "*"


#: The value of a presence test: `Comparison(field, kind, Op.HAS, ANY)`.
ANY = Wildcard.ANY


@dataclass(frozen=True)
class EnumValue:
    """An enum value as named in the filter and as stored (the schema's mapping)."""

    name: str
    value: int | str


Value = int | bool | str | datetime | EnumValue | Wildcard


@dataclass(frozen=True)
class Comparison:
    """`field op value`: one restriction, never true when the field's value is unset."""

    field: str
    kind: Kind
    op: Op
    value: Value


@dataclass(frozen=True)
class And:
    """True when every operand is; operands are never themselves And (they are flattened)."""

    operands: tuple[Expression, ...]


@dataclass(frozen=True)
class Or:
    """True when any operand is; operands are never themselves Or (they are flattened)."""

    operands: tuple[Expression, ...]


@dataclass(frozen=True)
class Not:
    """True exactly when the operand is not true (so also when it compares an unset value)."""

    operand: Expression


Expression = Comparison | And | Or | Not


@dataclass(frozen=True)
class Filter:
    """A whole filter; an empty filter (`expression is None`) matches everything."""

    expression: Expression | None

    def __str__(self) -> str:
        return canonical(self)


def conjunction(operands: list[Expression]) -> Expression:
    """AND of the operands, flattening nested ANDs so equal meanings get equal trees."""
    flat: list[Expression] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, And) else (operand,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def disjunction(operands: list[Expression]) -> Expression:
    """OR of the operands, flattening nested ORs so equal meanings get equal trees."""
    flat: list[Expression] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, Or) else (operand,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def canonical(filter_: Filter) -> str:
    """One spelling per tree: single spaces, explicit AND, NOT for `-`, folded and quoted strings.

    Parentheses appear only where AIP-160's precedence needs them (an AND inside OR, a compound
    under NOT), so `a AND b OR c` stays as it is and means `a AND (b OR c)`. The result is never
    nested deeper than the text it came from, so it always parses back to an equal tree.
    """
    return "" if filter_.expression is None else _render(filter_.expression)


def _render(expression: Expression) -> str:
    if isinstance(expression, Comparison):
        value = render_value(expression.value)
        if expression.op is Op.HAS:
            return f"{expression.field}:{value}"
        return f"{expression.field} {expression.op.value} {value}"
    if isinstance(expression, Not):
        inner = _render(expression.operand)
        bare = isinstance(expression.operand, Comparison | Not)
        return f"NOT {inner}" if bare else f"NOT ({inner})"
    if isinstance(expression, And):
        return " AND ".join(_render(operand) for operand in expression.operands)
    return " OR ".join(
        f"({_render(operand)})" if isinstance(operand, And) else _render(operand)
        for operand in expression.operands
    )


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def render_value(value: Value) -> str:
    """A value as filter text that reads back as the same value."""
    if isinstance(value, Wildcard):
        return value.value
    if isinstance(value, EnumValue):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f'"{format_timestamp(value)}"'
    return '"' + "".join(_ESCAPES.get(char, char) for char in value) + '"'


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, and a fraction only when there is one (trailing zeros cut)."""
    value = value.astimezone(UTC)
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"

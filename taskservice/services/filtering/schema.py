"""The whitelist a filter is checked against: which fields exist, their kinds, their operators.

A list's filter never names a column: it names a field of the API, declared here once by the
service that offers the list. Each kind allows only the operators whose meaning is the same in
SQL (PostgreSQL and SQLite) and in Python, so a filter means one thing wherever it is evaluated.
That is why strings have no ordering (`<` would follow each database's collation) and enums
have none either (their declaration order is not part of the API).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Kind(enum.Enum):
    """What a field holds, which decides how its values are read and compared."""

    #: A signed 64-bit integer.
    INT = "integer"
    #: An instant; filter values are RFC 3339 timestamps with an offset.
    TIMESTAMP = "timestamp"
    #: One of a closed set of names (`TASK_STATUS_DONE`), each standing for a stored value.
    ENUM = "enum value"
    #: Text: `=` and `!=` compare exactly, `:` is a case-insensitive substring search.
    STRING = "string"
    #: A repeated string: `:` tests, case-insensitively, whether one element equals the value.
    LABELS = "label"
    #: true or false.
    BOOL = "boolean"


class Op(enum.Enum):
    """A comparison operator, spelled as in the filter text."""

    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    HAS = ":"


_ORDERED = frozenset({Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE})
_EQUALITY = frozenset({Op.EQ, Op.NE})

#: The operators each kind may ever allow; a field may narrow them, never widen them.
PERMITTED_OPERATORS: Mapping[Kind, frozenset[Op]] = MappingProxyType(
    {
        Kind.INT: _ORDERED,
        Kind.TIMESTAMP: _ORDERED,
        Kind.ENUM: _EQUALITY,
        Kind.BOOL: _EQUALITY,
        Kind.STRING: _EQUALITY | {Op.HAS},
        Kind.LABELS: frozenset({Op.HAS}),
    }
)

#: The order operators are listed in error messages.
OPERATOR_ORDER = (Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE, Op.HAS)

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENUM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = frozenset({"AND", "OR", "NOT"})


@dataclass(frozen=True, eq=False)
class Field:
    """One filterable field of a list.

    `operators` defaults to everything the kind permits. `presence` allows `name:*`, which is
    true when the value is set (not NULL; for LABELS: at least one label). `enum_values` maps
    each accepted name to the value stored in the column and found in in-memory records.
    Mistakes here are programming errors, so they raise ValueError at import time.
    """

    name: str
    kind: Kind
    operators: frozenset[Op] = frozenset()
    presence: bool = False
    enum_values: Mapping[str, int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _FIELD_NAME.fullmatch(self.name) or self.name in KEYWORDS:
            raise ValueError(f"field name {self.name!r} is not an identifier")
        permitted = PERMITTED_OPERATORS[self.kind]
        operators = frozenset(self.operators) or permitted
        if not operators <= permitted:
            extra = ", ".join(op.value for op in OPERATOR_ORDER if op in operators - permitted)
            raise ValueError(f"{self.name}: {self.kind.name} fields cannot allow {extra}")
        object.__setattr__(self, "operators", operators)
        values = MappingProxyType(dict(self.enum_values))
        object.__setattr__(self, "enum_values", values)
        if (self.kind is Kind.ENUM) != bool(values):
            raise ValueError(
                f"{self.name}: enum_values are required for ENUM fields, and only there"
            )
        for name in values:
            if not _ENUM_NAME.fullmatch(name) or name in KEYWORDS:
                raise ValueError(f"{self.name}: enum value name {name!r} is not an identifier")

    def allows(self, op: Op) -> bool:
        """Whether `op` may follow this field in a filter (`:` also for a presence test)."""
        return op in self.operators or (op is Op.HAS and self.presence)


class Schema:
    """The filterable fields of one list, in the order its documentation and errors list them."""

    def __init__(self, *fields: Field) -> None:
        if not fields:
            raise ValueError("a schema needs at least one field")
        by_name: dict[str, Field] = {}
        for item in fields:
            if item.name in by_name:
                raise ValueError(f"field {item.name!r} is declared twice")
            by_name[item.name] = item
        self._fields = MappingProxyType(by_name)

    @property
    def fields(self) -> Mapping[str, Field]:
        """Every field by name, in declaration order."""
        return self._fields

    def get(self, name: str) -> Field | None:
        """The field called `name`, or None when it is not filterable."""
        return self._fields.get(name)

    def __iter__(self) -> Iterator[Field]:
        return iter(self._fields.values())

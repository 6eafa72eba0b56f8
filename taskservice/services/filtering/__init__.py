"""AIP-160 list filters: parse once against a whitelist, then run in SQL or in memory alike.

    schema = Schema(Field("status", Kind.ENUM, enum_values={...}), Field("due_time", ...))
    parsed = parse(request.filter, schema)          # InvalidArgument on any mistake
    query = query.where(to_sql(parsed, {"status": Task.status, ...}))
    matches(parsed, {"status": ..., "due_time": ...})   # the same answer, without a database
    canonical(parsed)                                # bind page tokens to the meaning

Transport- and table-agnostic: no gRPC, no table names; the caller maps fields to columns.
"""

from taskservice.services.filtering.memory import matches
from taskservice.services.filtering.nodes import (
    ANY,
    And,
    Comparison,
    EnumValue,
    Expression,
    Filter,
    Not,
    Or,
    Value,
    Wildcard,
    canonical,
    conjunction,
)
from taskservice.services.filtering.parser import (
    MAX_COMPARISONS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    REASON,
    parse,
)
from taskservice.services.filtering.schema import Field, Kind, Op, Schema
from taskservice.services.filtering.sql import ClauseFactory, ColumnTarget, like_pattern, to_sql

__all__ = [
    "ANY",
    "MAX_COMPARISONS",
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "REASON",
    "And",
    "ClauseFactory",
    "ColumnTarget",
    "Comparison",
    "EnumValue",
    "Expression",
    "Field",
    "Filter",
    "Kind",
    "Not",
    "Op",
    "Or",
    "Schema",
    "Value",
    "Wildcard",
    "canonical",
    "conjunction",
    "like_pattern",
    "matches",
    "parse",
    "to_sql",
]

"""A span per database round trip, as the OpenTelemetry database conventions describe it.

Statements run on three paths: SQLAlchemy's (writes, and reads on SQLite), the raw asyncpg read
path (`taskservice.db.reads`) and SQLite's read thread (`taskservice.db.sqlite_reads`). Each
path opens a `StatementSpan` where its statement runs (SQLAlchemy's through the engine events
`instrument_engine` adds), so the spans are the same whichever path ran the statement: named
`{operation} {table}` (`SELECT tasks`), with `db.system.name` (and the older `db.system`)
`postgresql` or `sqlite`, `db.operation.name` and `db.collection.name`. The statement's text
and its parameters are never recorded (a title, an email or a password hash would be), only
its verb and first table, read from the SQL text once per distinct statement.

A span is made only during a traced call (or traced background work) whose span records:
otherwise opening one costs a context-variable read.
"""

from __future__ import annotations

import functools
import re
from types import TracebackType
from typing import Any

from opentelemetry.trace import Span, SpanKind
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from taskservice.tracing.spans import current_tracer, finish, start_child

#: `db.system.name` by SQLAlchemy dialect name.
SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite"}
POSTGRESQL = "postgresql"
SQLITE = "sqlite"

_OPERATION = re.compile(r"\s*(?:/\*.*?\*/\s*)?([A-Za-z]+)", re.DOTALL)
_TABLE_AFTER = {
    "SELECT": re.compile(r"\bFROM\s+([\"\w.]+)", re.IGNORECASE),
    "DELETE": re.compile(r"\bFROM\s+([\"\w.]+)", re.IGNORECASE),
    "INSERT": re.compile(r"\bINTO\s+([\"\w.]+)", re.IGNORECASE),
    "UPDATE": re.compile(r"^\s*UPDATE\s+([\"\w.]+)", re.IGNORECASE),
}
#: Statements that start with WITH: the table of the main statement after the CTEs is not
#: worth a parser; the first table any clause names is recorded.
_ANY_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+([\"\w.]+)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def describe(system: str, sql: str) -> tuple[str, dict[str, str]]:
    """The span name and attributes of a statement: its verb and first table, nothing else."""
    match = _OPERATION.match(sql)
    operation = match.group(1).upper() if match else "QUERY"
    pattern = _TABLE_AFTER.get(operation, _ANY_TABLE if operation == "WITH" else None)
    found = pattern.search(sql) if pattern is not None else None
    attributes = {"db.system.name": system, "db.system": system, "db.operation.name": operation}
    if found is None:
        return operation, attributes
    table = found.group(1).replace('"', "")
    attributes["db.collection.name"] = table
    return f"{operation} {table}", attributes


class StatementSpan:
    """A client span around one statement's round trip (a context manager; cheap when off)."""

    __slots__ = ("_span",)

    def __init__(self, system: str, sql: str) -> None:
        self._span: Span | None = None
        if current_tracer() is not None:
            self._span = start_child(*describe(system, sql), kind=SpanKind.CLIENT)

    def __enter__(self) -> StatementSpan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        finish(self._span, error)


#: Where a SQLAlchemy execution context keeps its statement's span between the events.
_SPAN_ATTRIBUTE = "_taskservice_span"


def instrument_engine(engine: AsyncEngine) -> None:
    """Give every statement `engine` runs a span (SQLAlchemy's cursor execution events).

    The events run in the greenlet SQLAlchemy runs the statement in, which shares the calling
    task's context, so the span is a child of the call's current span.
    """
    system = SYSTEMS.get(engine.dialect.name, engine.dialect.name)

    def before(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if context is not None and current_tracer() is not None:
            setattr(context, _SPAN_ATTRIBUTE, StatementSpan(system, statement))

    def after(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        span = getattr(context, _SPAN_ATTRIBUTE, None)
        if span is not None:
            setattr(context, _SPAN_ATTRIBUTE, None)
            span.__exit__(None, None, None)

    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        span = getattr(context, _SPAN_ATTRIBUTE, None)
        if span is not None:
            setattr(context, _SPAN_ATTRIBUTE, None)
            error = exception_context.original_exception
            span.__exit__(type(error), error, None)

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)

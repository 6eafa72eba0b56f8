"""Child spans for the call in progress, made by any layer without a tracer being passed down.

The edge that starts a call's server span (`taskservice.calls.observe`) also notes, in this
module's context variable, the tracer of the server it belongs to; code further in (the
database, bcrypt, transaction retries, a watch stream's events) asks for a child span here. A
child is made only under a span that is recording, so with tracing off, or for a call whose trace
is not sampled, asking costs a context-variable read and nothing is made. No provider is installed
globally: tests run many servers in one process, each traced (or not) on its own.

Span attributes never hold request content, statement parameters or credentials: callers pass
names, operations, tables, counts and codes only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

#: The tracer of the server whose call is running, if it traces.
_tracer: ContextVar[Tracer | None] = ContextVar("taskservice_tracer", default=None)

Attributes = Mapping[str, AttributeValue]


def use_tracer(tracer: Tracer | None) -> Token[Tracer | None]:
    """Make `tracer` the one child spans are made with in this context (and tasks it starts)."""
    return _tracer.set(tracer)


def current_tracer() -> Tracer | None:
    """The tracer child spans are made with here, if any."""
    return _tracer.get()


def start_child(
    name: str, attributes: Attributes | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> Span | None:
    """A child of the current span, started (not made current), or None when not tracing.

    For hot paths that cannot wrap their work in `child_span`; end it with `finish`.
    """
    tracer = _tracer.get()
    if tracer is None or not get_current_span().is_recording():
        return None
    return tracer.start_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def finish(span: Span | None, error: BaseException | None = None) -> None:
    """End a span from `start_child`, marked failed when `error` is a failure (not a cancel)."""
    if span is None:
        return
    if error is not None:
        fail(span, error)
    span.end()


def fail(span: Span, error: BaseException) -> None:
    """Mark `span` failed by `error`'s type only: an exception's text may hold parameters."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        span.set_attribute("error.type", "cancelled")
        return
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))


def child_span(
    name: str, attributes: Attributes | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> AbstractContextManager[Span]:
    """Run the block in a child span of the current one (made current), if tracing.

    Enters as the span, or as the invalid (non-recording) span when not tracing, so the block
    may set attributes and add events either way.
    """
    span = start_child(name, attributes, kind)
    return _NOT_TRACED if span is None else _Current(span)


class _Current(AbstractContextManager[Span]):
    """Makes a span current for a block, then ends it (failed if the block raised).

    A plain class rather than the API's `use_span` inside a generator: this runs for every
    transaction and bcrypt call, and those generators cost about 10 µs of CPU per span on a
    2-vCPU machine, a third of what the SDK's span itself costs. Unlike `use_span`, it never
    records an exception's text (which may hold parameters): `fail` notes its type only.
    """

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        if error is not None:
            fail(self._span, error)
        self._span.end()


#: What `child_span` gives when not tracing: a block under the invalid span.
_NOT_TRACED: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


def add_event(name: str, attributes: Attributes | None = None) -> None:
    """Add an event to the current span, if it records (a watch stream's bookmark)."""
    span = get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


def current_ids() -> tuple[str, str] | None:
    """The current recording span's trace and span ids as lowercase hex, for log lines."""
    span = get_current_span()
    if not span.is_recording():
        return None
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")

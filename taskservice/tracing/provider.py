"""A server's tracer provider, configured by the standard `OTEL_*` variables, or none at all.

Tracing is on when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true and `OTEL_TRACES_EXPORTER`
is not `none`. Otherwise no provider is built and no span is ever made: a service nobody
collects traces from pays nothing for them (unlike the SDK's own default, which would export to
localhost:4317). The SDK reads everything else itself: the sampler (`OTEL_TRACES_SAMPLER`,
parent-based by default), the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`; the
service is `taskservice` unless they name it), the exporter's headers, timeout, certificates
and compression, and the batch sizes (`OTEL_BSP_*`). `OTEL_EXPORTER_OTLP_PROTOCOL` (or its
`_TRACES_` form) picks `grpc` (the default) or `http/protobuf`.

Spans are queued when they end and exported in batches by the SDK's BatchSpanProcessor on its
own thread, never on the event loop, so a collector that is slow or down never slows a call.
What cannot be exported is dropped and counted (`taskservice_trace_spans_dropped_total`, by
reason): spans refused because `OTEL_BSP_MAX_QUEUE_SIZE` are already waiting (`queue_full`),
batches the exporter failed to deliver (`export_failed`), and spans still waiting when the
shutdown's flush ran out of time (`shutdown`). The queue bound is kept here, in front of the
SDK's (which drops silently), so every drop is seen.

Each server builds its own provider and passes its tracer down explicitly: nothing is set
globally, so servers in one process (tests) are traced independently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from taskservice.config import ConfigError

logger = logging.getLogger(__name__)

#: The service name when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES gives one.
DEFAULT_SERVICE_NAME = "taskservice"
#: Protocols OTEL_EXPORTER_OTLP_PROTOCOL may name.
PROTOCOLS = ("grpc", "http/protobuf")
#: The SDK's default for OTEL_BSP_MAX_QUEUE_SIZE.
DEFAULT_MAX_QUEUE_SIZE = 2048
#: Longest the shutdown waits for pending spans to be exported, in seconds: well within the
#: margin a worker is given beyond the drain (`taskservice.workers.EXIT_MARGIN_SECONDS`).
FLUSH_SECONDS = 3.0

#: Called with a reason and a count for spans that will never reach the collector.
OnDropped = Callable[[str, int], None]


class _HeaderGetter(Getter[Any]):
    """Reads W3C headers from any mapping with `.get` (HTTP headers, gRPC metadata as a dict)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Any) -> list[str]:
        return list(carrier.keys())


HEADER_GETTER = _HeaderGetter()
#: W3C Trace Context and Baggage: what callers send, whatever OTEL_PROPAGATORS says elsewhere.
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
#: The headers (metadata keys) PROPAGATOR reads.
PROPAGATION_KEYS = frozenset(PROPAGATOR.fields)


def extract(carrier: Mapping[str, str]) -> Context:
    """The caller's trace context (and baggage) from its headers or metadata."""
    return PROPAGATOR.extract(carrier, getter=HEADER_GETTER)


class Tracing:
    """A server's tracing: its tracer (None when off) and the flush at shutdown."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self.tracer: Tracer | None = (
            None if provider is None else provider.get_tracer("taskservice")
        )

    @classmethod
    def from_environment(
        cls, on_dropped: OnDropped, environ: Mapping[str, str] = os.environ
    ) -> Tracing:
        """Tracing as the `OTEL_*` variables in `environ` configure it (see the module doc).

        Raises ConfigError for a protocol other than `grpc` or `http/protobuf`.
        """
        if not wanted(environ):
            return cls()
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        ).strip()
        if protocol not in PROTOCOLS:
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        exporter: SpanExporter
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as OTLPHttpSpanExporter,
            )

            exporter = OTLPHttpSpanExporter()
        queue = int(environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or DEFAULT_MAX_QUEUE_SIZE)
        provider = TracerProvider(resource=_resource())
        provider.add_span_processor(CountingBatchProcessor(exporter, queue, on_dropped))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        """Whether spans are made at all."""
        return self.tracer is not None

    async def shutdown(self, seconds: float = FLUSH_SECONDS) -> None:
        """Export what is pending, then stop; give up after `seconds`.

        The export runs on a thread of its own (a hung collector must not hold the event loop,
        nor the loop's default executor, which closing the loop waits for).
        """
        if self._provider is None:
            return
        provider, self._provider = self._provider, None
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def flush_and_stop() -> None:
            try:
                provider.force_flush(int(seconds * 1000))
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=flush_and_stop, name="trace-flush", daemon=True).start()
        try:
            async with asyncio.timeout(seconds):
                await done
        except TimeoutError:
            logger.warning("tracing: pending spans not exported within %.1f s", seconds)


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether `environ` asks for spans to be exported at all."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return any(environ.get(name) for name in endpoints)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resource() -> Resource:
    """The SDK's resource from the environment, named `taskservice` if it names no service."""
    try:
        version = metadata.version("taskservice")
    except metadata.PackageNotFoundError:  # run from a source tree
        version = "unknown"
    detected = Resource.create({SERVICE_VERSION: version})
    name = str(detected.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return HashedResource(detected.attributes, detected.schema_url)


class HashedResource(Resource):
    """The SDK's Resource, hashed once instead of once per exported span.

    The OTLP encoder groups each batch's spans by resource, hashing every span's resource, and
    the SDK's `Resource.__hash__` JSON-encodes all its attributes each time: about a fifth of
    the encoder's CPU per span. A server's resource never changes after it is built, so its
    hash (the SDK's own, hence consistent with `Resource.__eq__`) is computed once.
    """

    def __init__(self, attributes: Attributes, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class CountingBatchProcessor(SpanProcessor):
    """The SDK's BatchSpanProcessor behind a queue bound of its own, counting every drop.

    `pending` counts spans handed to the batch processor and not yet taken by its exporter; it
    never exceeds `max_queue_size`, so the SDK's queue (as large) never overflows unseen.
    """

    def __init__(self, exporter: SpanExporter, max_queue_size: int, on_dropped: OnDropped) -> None:
        self._max = max_queue_size
        self._on_dropped = on_dropped
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._batch = BatchSpanProcessor(
            _CountingExporter(exporter, self._taken, on_dropped), max_queue_size=max_queue_size
        )

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a sampled span for export, or count it dropped."""
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        with self._lock:
            admitted = not self._closed and self._pending < self._max
            if admitted:
                self._pending += 1
        if not admitted:
            self._on_dropped("shutdown" if self._closed else "queue_full", 1)
            return
        self._batch.on_end(span)

    def _taken(self, count: int) -> None:
        with self._lock:
            self._pending -= count

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now (blocking: call it off the event loop)."""
        return self._batch.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Stop; spans still queued are counted dropped."""
        with self._lock:
            self._closed = True
        self._batch.shutdown()
        with self._lock:
            left, self._pending = self._pending, 0
        if left > 0:
            self._on_dropped("shutdown", left)


class _CountingExporter(SpanExporter):
    """An exporter that reports batches taken from the queue, and counts failed ones."""

    def __init__(
        self, inner: SpanExporter, taken: Callable[[int], None], on_dropped: OnDropped
    ) -> None:
        self._inner = inner
        self._taken = taken
        self._on_dropped = on_dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export a batch; count it dropped unless the collector took it."""
        self._taken(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the export thread
            logger.exception("tracing: the span exporter failed")
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._on_dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        """Close the exporter's connection."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held here: the batch processor holds the queue."""
        return self._inner.force_flush(timeout_millis)

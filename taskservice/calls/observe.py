"""One access-log line and one set of metrics per call, whatever the protocol.

Each edge starts an observation when a call begins (which gives the call its request id: the
caller's `x-request-id` when sane, else a new one) and ends it with the call's status code name.
The line carries method, status code, duration, peer, user id, request id and the protocol
(`grpc`, `connect`, `grpc-web`); the metrics are the conventional gRPC server metrics with a
`protocol` label, so one dashboard shows every edge. No request or response content is logged,
so no password, token or hash can reach the log through it.

When the server traces (`taskservice.tracing`), each call also gets its server span
(`taskservice.calls.spans`), continuing the caller's trace from the W3C headers the edge hands
over; the access line then carries `trace_id` and `span_id`, and the latency observation an
exemplar with the trace id, so a slow bucket on a dashboard leads to a trace. A server that
does not trace pays one test per call for all this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.trace import Tracer

from taskservice.calls.context import CallInfo, begin_call
from taskservice.calls.spans import CallSpan, MethodSpans
from taskservice.log import info_fields

access_logger = logging.getLogger("taskservice.access")


class CallMetrics(Protocol):
    """The per-call metrics a server keeps (`taskservice.api.metrics.ServerMetrics`)."""

    started: Any
    handled: Any
    handling_seconds: Any
    permission_denied: Any


@dataclass
class Observation:
    """A call being observed: its context and when it started."""

    info: CallInfo
    started: float
    span: CallSpan | None = None


class MethodObserver:
    """Observes the calls of one method over one protocol; its metric children are made once."""

    def __init__(
        self,
        metrics: CallMetrics,
        method: str,
        call_type: str,
        protocol: str,
        tracer: Tracer | None = None,
        server_address: str | None = None,
    ) -> None:
        service, _, name = method.rpartition("/")
        self._method = method
        self._service = service.lstrip("/")
        self._name = name
        self._protocol = protocol
        self._labels = (call_type, self._service, name, protocol)
        self._handled = metrics.handled
        self._started_total = metrics.started.labels(*self._labels)
        self._handling_seconds = metrics.handling_seconds.labels(*self._labels)
        self._permission_denied = metrics.permission_denied
        self._spans = (
            None
            if tracer is None
            else MethodSpans(tracer, self._service, name, protocol, server_address)
        )

    @property
    def traced(self) -> bool:
        """Whether calls get spans (so the edge need only gather trace headers if so)."""
        return self._spans is not None

    def begin(
        self, caller_request_id: str | None, trace_headers: Mapping[str, str] | None = None
    ) -> Observation:
        """Start observing a call; this also starts its context, request id and span.

        `trace_headers` are the call's headers or metadata (any mapping with `.get` by
        lowercase name), read for W3C `traceparent`, `tracestate` and `baggage`.
        """
        info = begin_call(caller_request_id)
        self._started_total.inc()
        span = None if self._spans is None else self._spans.start(trace_headers, info.request_id)
        return Observation(info, time.perf_counter(), span)

    def end(self, observation: Observation, code: str, peer: str | None) -> None:
        """Record the call's end with its status code name (`OK`, `NOT_FOUND`, ...)."""
        seconds = time.perf_counter() - observation.started
        self._handled.labels(*self._labels, code).inc()
        if (permission := observation.info.denied_permission) is not None:
            self._permission_denied.labels(self._service, self._name, permission).inc()
        fields: dict[str, object] = {
            "protocol": self._protocol,
            "grpc_service": self._service,
            "grpc_method": self._name,
            "grpc_code": code,
            "duration_ms": round(seconds * 1000, 3),
            "peer": peer,
            "user_id": observation.info.user_id,
            "request_id": observation.info.request_id,
        }
        if (span := observation.span) is None or self._spans is None:
            self._handling_seconds.observe(seconds)
            info_fields(access_logger, f"{self._method} {code}", fields)
            return
        trace_id, span_id = span.ids()
        fields["trace_id"], fields["span_id"] = trace_id, span_id
        self._handling_seconds.observe(seconds, {"trace_id": trace_id})
        info_fields(access_logger, f"{self._method} {code}", fields)
        self._spans.end(span, code)

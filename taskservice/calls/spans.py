"""The server span of a call, whatever the protocol, as the OpenTelemetry RPC conventions say.

One span per call (a server stream included: one span for the whole stream), a child of the
caller's span when its W3C `traceparent` came with the call. It is named
`{rpc.service}/{rpc.method}` and carries `rpc.system` (`grpc` for native gRPC and gRPC-Web,
`connect_rpc` for Connect; REST routes name the RPC they stand for and carry no `rpc.system`),
`rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.address` and the request id
(`taskservice.request_id`). Only the codes the conventions name for servers (UNKNOWN,
DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) mark it an error: a
NOT_FOUND or a PERMISSION_DENIED is a normal answer. Nothing from the request's content goes
on it.

While the call runs, its span is the current one and its server's tracer is the one further
layers make child spans with (`taskservice.tracing.spans`); both are put back when it ends.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context

from taskservice.tracing.provider import extract
from taskservice.tracing.spans import current_tracer, use_tracer

#: Codes that make a server span an error (OpenTelemetry semantic conventions for gRPC).
ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
#: `rpc.system` by the protocol names access logs use.
RPC_SYSTEMS = {"grpc": "grpc", "grpc-web": "grpc", "connect": "connect_rpc"}
#: Numeric gRPC status codes by name, for `rpc.grpc.status_code`.
CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
#: The span attribute holding the call's request id.
REQUEST_ID_ATTRIBUTE = "taskservice.request_id"


def server_address(host: str) -> str:
    """The `server.address` of a server listening on `host`: the machine's name if wildcard."""
    return socket.gethostname() if host in ("", "0.0.0.0", "::", "[::]") else host  # noqa: S104


@dataclass(slots=True)
class CallSpan:
    """A call's server span, and the trace context and tracer it replaced as current."""

    span: Span
    previous: otel_context.Context
    previous_tracer: Tracer | None

    def ids(self) -> tuple[str, str]:
        """The span's trace and span ids as lowercase hex."""
        context = self.span.get_span_context()
        return format(context.trace_id, "032x"), format(context.span_id, "016x")


class MethodSpans:
    """Server spans for one method over one protocol; its fixed attributes are built once."""

    def __init__(
        self, tracer: Tracer, service: str, method: str, protocol: str, address: str | None
    ) -> None:
        self._tracer = tracer
        self._name = f"{service}/{method}"
        self._protocol = protocol
        attributes: dict[str, str] = {"rpc.service": service, "rpc.method": method}
        if (system := RPC_SYSTEMS.get(protocol)) is not None:
            attributes["rpc.system"] = system
        if address:
            attributes["server.address"] = address
        self._attributes = attributes

    def start(self, carrier: Mapping[str, str] | None, request_id: str) -> CallSpan | None:
        """Start the call's span and make it current; None when it is not sampled."""
        parent = extract(carrier) if carrier else None
        span = self._tracer.start_span(
            self._name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**self._attributes, REQUEST_ID_ATTRIBUTE: request_id},
            record_exception=False,
            set_status_on_exception=False,
        )
        if not span.is_recording():
            return None
        call = CallSpan(span, otel_context.get_current(), current_tracer())
        otel_context.attach(set_span_in_context(span, parent))
        use_tracer(self._tracer)
        return call

    def end(self, call: CallSpan, code: str) -> None:
        """Record the status code name (`OK`, `NOT_FOUND`, ...), end the span, restore context."""
        span = call.span
        span.set_attribute("rpc.grpc.status_code", CODE_NUMBERS.get(code, 2))
        if code != "OK" and self._protocol == "connect":
            span.set_attribute("rpc.connect_rpc.error_code", code.lower())
        if code in ERROR_CODES:
            span.set_attribute("error.type", code)
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()
        otel_context.attach(call.previous)
        use_tracer(call.previous_tracer)

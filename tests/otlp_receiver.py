"""A real OTLP trace receiver for tests: the collector's TraceService over gRPC, and over HTTP.

It decodes what exporters send with the `opentelemetry-proto` messages, exactly as a collector
would, and keeps every span with its resource. It can also hang (hold every export until told
to let go), to play a collector that accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

#: Generous bound for spans to arrive on a loaded 2-core machine.
ARRIVAL_TIMEOUT = 20.0


def value_of(value: AnyValue) -> object:
    """An attribute's value as Python sees it."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    return None if kind is None else getattr(value, kind)


def attributes(pairs: list[KeyValue] | object) -> dict[str, object]:
    """Attributes as a dict."""
    return {pair.key: value_of(pair.value) for pair in pairs}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Received:
    """One exported span, decoded, with its resource's attributes."""

    span: Span
    resource: dict[str, object]

    @property
    def name(self) -> str:
        """The span's name."""
        return self.span.name

    @property
    def trace_id(self) -> str:
        """The trace id, hex."""
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        """The span id, hex."""
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        """The parent's span id, hex (empty for a root)."""
        return self.span.parent_span_id.hex()

    @property
    def attributes(self) -> dict[str, object]:
        """The span's attributes."""
        return attributes(self.span.attributes)


class Receiver:
    """Every span exported to it; tests wait for the spans they expect."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._released = threading.Event()
        self.hanging = False

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        """Keep a request's spans (called on the loop)."""
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(Received(span, resource) for span in scope_spans.spans)
        self._changed.set()

    def take_threadsafe(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        """Keep a request's spans (called from another thread)."""
        self._loop.call_soon_threadsafe(self.take, request)

    def release(self) -> None:
        """Let go of held exports, and answer the next ones at once."""
        self.hanging = False
        self._released.set()

    async def until(
        self, found: Callable[[list[Received]], bool], seconds: float = ARRIVAL_TIMEOUT
    ) -> list[Received]:
        """Wait until `found(spans)` holds (at most `seconds`); return the spans then."""
        async with asyncio.timeout(seconds):
            while not found(self.spans):
                self._changed.clear()
                await self._changed.wait()
        return self.spans

    async def trace(self, trace_id: str, *names: str) -> list[Received]:
        """The spans of `trace_id`, once spans with each of `names` have arrived."""

        def complete(spans: list[Received]) -> bool:
            arrived = {span.name for span in spans if span.trace_id == trace_id}
            return all(name in arrived for name in names)

        spans = await self.until(complete)
        return [span for span in spans if span.trace_id == trace_id]


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver

    async def Export(  # noqa: N802 - the generated name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self._receiver.hanging:
            await asyncio.to_thread(self._receiver._released.wait)
        self._receiver.take(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def _http_server(receiver: Receiver) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            if receiver.hanging:
                receiver._released.wait()
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            receiver.take_threadsafe(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class OtlpReceivers:
    """One receiver answering OTLP over gRPC and over HTTP, and its endpoints."""

    def __init__(self, receiver: Receiver, grpc_port: int, http_port: int) -> None:
        self.receiver = receiver
        self.grpc_port = grpc_port
        self.http_port = http_port

    def environment(self, protocol: str) -> dict[str, str]:
        """The OTEL_* variables that point an exporter of `protocol` here."""
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        }


@asynccontextmanager
async def running_receivers() -> AsyncIterator[OtlpReceivers]:
    """Start the gRPC and HTTP receivers; stop both (releasing held exports) on exit."""
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(receiver), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with _http_server(receiver) as http_port:
            try:
                yield OtlpReceivers(receiver, grpc_port, http_port)
            finally:
                receiver.release()
    finally:
        await server.stop(None)

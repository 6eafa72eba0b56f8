"""A small real-HTTP client for the HTTP edge's tests: Connect JSON and binary, GET, gRPC-Web.

It speaks the wire formats by hand on top of httpx (HTTP/1.1 or HTTP/2), so tests see exactly
the bytes a browser, curl or a Connect/gRPC-Web client would: status lines, headers, error
bodies and gRPC-Web trailer frames.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2


def _named(headers: dict[str, str]) -> dict[str, str]:
    """Keyword arguments as header names: `x_request_id` is `x-request-id`."""
    return {key.replace("_", "-"): value for key, value in headers.items()}


def auth_headers(token: str | None, **extra: str) -> dict[str, str]:
    """Headers for a call, with `authorization: Bearer` when a token is given."""
    headers = {key.replace("_", "-"): value for key, value in extra.items()}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def connect_json(
    client: httpx.AsyncClient, method: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    """A Connect unary POST with a JSON body (`method` is `/package.Service/Method`)."""
    return await client.post(
        method,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json", **_named(headers)},
    )


def get_url(method: str, body: dict[str, Any]) -> str:
    """The cacheable Connect GET URL of a NO_SIDE_EFFECTS call."""
    query = urllib.parse.urlencode({"encoding": "json", "message": json.dumps(body)})
    return f"{method}?{query}"


async def connect_proto(
    client: httpx.AsyncClient, method: str, request: Message, **headers: str
) -> httpx.Response:
    """A Connect unary POST with a binary protobuf body."""
    return await client.post(
        method,
        content=request.SerializeToString(),
        headers={"content-type": "application/proto", **_named(headers)},
    )


@dataclass
class GrpcWebReply:
    """A gRPC-Web response: HTTP status, headers, the messages and the trailers."""

    http_status: int
    headers: httpx.Headers
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int:
        """The gRPC status, from the trailer frame or (trailers-only) from the headers."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        assert value is not None, "a gRPC-Web reply always carries grpc-status"
        return int(value)

    def status_detail(self) -> status_pb2.Status:
        """The google.rpc.Status of `grpc-status-details-bin`."""
        raw = self.trailers.get("grpc-status-details-bin") or self.headers.get(
            "grpc-status-details-bin"
        )
        assert raw, "error carries grpc-status-details-bin"
        return status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))


def frame(payload: bytes, flags: int = 0) -> bytes:
    """One gRPC(-Web) length-prefixed frame."""
    return struct.pack(">BI", flags, len(payload)) + payload


async def grpc_web(
    client: httpx.AsyncClient, method: str, request: Message | bytes, **headers: str
) -> GrpcWebReply:
    """A gRPC-Web (binary) call; returns the decoded frames."""
    payload = request if isinstance(request, bytes) else request.SerializeToString()
    response = await client.post(
        method,
        content=frame(payload),
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            **_named(headers),
        },
    )
    reply = GrpcWebReply(response.status_code, response.headers)
    body = response.content
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        chunk, body = body[5 : 5 + length], body[5 + length :]
        if flags & 0x80:
            for line in chunk.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    reply.trailers[key.strip().lower()] = value.strip()
        else:
            reply.messages.append(chunk)
    return reply


@dataclass
class GrpcWebStream:
    """A gRPC-Web server stream being read frame by frame, as a browser reads it."""

    response: httpx.Response
    _chunks: AsyncIterator[bytes]
    _pending: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)

    async def _read_exactly(self, size: int) -> bytes | None:
        while len(self._pending) < size:
            try:
                self._pending += await anext(self._chunks)
            except StopAsyncIteration:
                return None
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    async def next_message(self) -> bytes | None:
        """The next message; None once the trailer frame (kept in `trailers`) has come."""
        header = await self._read_exactly(5)
        assert header is not None, "the stream ended without a trailer frame"
        flags, length = struct.unpack(">BI", header)
        chunk = await self._read_exactly(length)
        assert chunk is not None, "the stream ended inside a frame"
        if not flags & 0x80:
            return chunk
        for line in chunk.decode().split("\r\n"):
            if line:
                key, _, value = line.partition(":")
                self.trailers[key.strip().lower()] = value.strip()
        return None

    def failure(self) -> Failure:
        """The error the trailers carry."""
        reply = GrpcWebReply(self.response.status_code, self.response.headers)
        reply.trailers = self.trailers
        return grpc_web_failure(reply)


@asynccontextmanager
async def grpc_web_stream(
    client: httpx.AsyncClient, method: str, request: Message, **headers: str
) -> AsyncIterator[GrpcWebStream]:
    """Open a gRPC-Web server-streaming call; read it with `next_message()`."""
    async with client.stream(
        "POST",
        method,
        content=frame(request.SerializeToString()),
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            **_named(headers),
        },
    ) as response:
        yield GrpcWebStream(response, response.aiter_raw())


def merged_metadata(reply: httpx.Response | GrpcWebReply | GrpcWebStream, key: str) -> list[str]:
    """Every value of `key` that a Connect or gRPC-Web client reads for the call, in order.

    Those clients (connect-es, connect-go, connect-python) merge a response's headers and its
    trailers into one metadata object, an error's metadata above all: Connect unary trailers
    are the `trailer-*` headers, gRPC-Web's are the trailer frame. A key sent both ways reads
    back as "value, value".
    """
    if isinstance(reply, httpx.Response):
        headers, trailers = reply.headers, reply.headers.get_list(f"trailer-{key}")
    else:
        headers = reply.response.headers if isinstance(reply, GrpcWebStream) else reply.headers
        trailers = [reply.trailers[key]] if key in reply.trailers else []
    return [*headers.get_list(key), *trailers]


@dataclass(frozen=True)
class Failure:
    """What an error told the caller, on any protocol."""

    code: str  # google.rpc.Code name, e.g. INVALID_ARGUMENT
    message: str
    reason: str
    fields: dict[str, str]
    error_metadata: dict[str, str]


def _from_details(code: str, message: str, details: list[tuple[str, bytes]]) -> Failure:
    reason, fields, error_metadata = "", {}, {}
    for type_name, value in details:
        if type_name == "google.rpc.ErrorInfo":
            info = error_details_pb2.ErrorInfo.FromString(value)
            assert info.domain == "taskservice"
            reason, error_metadata = info.reason, dict(info.metadata)
        elif type_name == "google.rpc.BadRequest":
            bad = error_details_pb2.BadRequest.FromString(value)
            fields = {v.field: v.description for v in bad.field_violations}
    return Failure(code, message, reason, fields, error_metadata)


def connect_failure(response: httpx.Response) -> Failure:
    """Parse a Connect unary error body (JSON, details base64 without padding)."""
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    details = [
        (d["type"], base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4)))
        for d in body.get("details", [])
    ]
    return _from_details(body["code"].upper(), body.get("message", ""), details)


def grpc_web_failure(reply: GrpcWebReply) -> Failure:
    """Parse a gRPC-Web error from its status and `grpc-status-details-bin`."""
    status = reply.status_detail()
    assert status.code == reply.grpc_status
    details = [(d.type_url.rsplit("/", 1)[-1], d.value) for d in status.details]
    return _from_details(code_pb2.Code.Name(status.code), status.message, details)

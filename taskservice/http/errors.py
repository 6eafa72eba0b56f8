"""A google.rpc.Status from `taskservice.calls.errors`, as the Connect library's error.

connectrpc writes the error as the Connect JSON error body (details base64, with a debug
rendering) or as gRPC-Web trailers (`grpc-status-details-bin`), so every protocol carries the
same code, message, ErrorInfo and BadRequest as native gRPC.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.rpc import code_pb2, status_pb2
from protobuf.wkt import Any as WireAny


def connect_error(status: status_pb2.Status) -> ConnectError:
    """The ConnectError that carries `status` whole.

    connectrpc 0.13 packs details itself only from its own protobuf runtime's messages, so the
    `google.protobuf.Any` details are handed over as its `Any`, byte for byte.
    """
    details = [WireAny(type_url=detail.type_url, value=detail.value) for detail in status.details]
    return ConnectError(connect_code(status.code), status.message, details)


def connect_code(code: int) -> Code:
    """The Connect code for a google.rpc.Code (the same names, lower-cased)."""
    name = code_pb2.Code.Name(code)
    return Code.CANCELED if name == "CANCELLED" else Code(name.lower())


def code_name(code: Code) -> str:
    """The google.rpc.Code name for a Connect code, as access logs and metrics spell it."""
    return "CANCELLED" if code is Code.CANCELED else code.name

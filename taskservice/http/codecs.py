"""The Connect codecs (binary protobuf and JSON), with our errors instead of the library's.

connectrpc reports a body that does not decode as INVALID_ARGUMENT with the parser's text, and
a response that does not encode as UNKNOWN with the exception's text, past every interceptor.
These codecs wrap the library's google.protobuf ones so that a bad body is the same
INVALID_ARGUMENT (field `request`, with BadRequest) as on gRPC, and a response that cannot be
encoded (a bug) is INTERNAL with a request id, its text only in the server log.
"""

from __future__ import annotations

from typing import Any

from connectrpc.codec import Codec
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from connectrpc.errors import ConnectError
from google.protobuf.json_format import ParseError

from taskservice.calls.errors import internal_status, malformed_request, to_status
from taskservice.http.errors import connect_error

#: Longest part of the JSON parser's complaint passed on to the caller.
MAX_PARSE_ERROR_CHARS = 300


class SafeCodec(Codec[Any, Any]):
    """A codec that turns its inner codec's failures into our statuses."""

    def __init__(self, inner: Codec[Any, Any]) -> None:
        self._inner = inner

    def name(self) -> str:
        """The inner codec's name (`proto`, `json`)."""
        return self._inner.name()

    def encode(self, message: Any) -> bytes:
        """Encode a response; failing to is a bug, reported as INTERNAL."""
        try:
            return self._inner.encode(message)
        except Exception as exc:
            raise connect_error(internal_status("encoding a response", exc)) from None

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        """Decode a request; a body that is not one is INVALID_ARGUMENT on field `request`."""
        try:
            return self._inner.decode(data, message_class)
        except ConnectError:
            raise
        except ParseError as exc:
            description = f"not valid JSON for this method: {str(exc)[:MAX_PARSE_ERROR_CHARS]}"
            raise connect_error(to_status(malformed_request(description))) from None
        except Exception:
            raise connect_error(to_status(malformed_request())) from None


def safe_codecs() -> list[Codec[Any, Any]]:
    """Binary protobuf and JSON, both safe."""
    return [SafeCodec(google_protobuf_binary_codec()), SafeCodec(google_protobuf_json_codec())]

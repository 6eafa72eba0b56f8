"""The Connect codecs (binary protobuf and JSON), with our errors instead of the library's.

connectrpc reports a body that does not decode as INVALID_ARGUMENT with the parser's text, and
a response that does not encode as UNKNOWN with the exception's text, past every interceptor.
These codecs wrap the library's google.protobuf ones so that a bad body is the same
INVALID_ARGUMENT (field `request`, with BadRequest) as on gRPC, and a response that cannot be
encoded (a bug) is INTERNAL with a request id, its text only in the server log. JSON responses
are written by our `JsonEncoder` (compact, and about twice as fast as the library's
pretty-printed `MessageToJson`: the same JSON object); JSON requests are read by the library's
codec.
"""

from __future__ import annotations

from typing import Any

from connectrpc.codec import Codec
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from connectrpc.errors import ConnectError
from google.protobuf.json_format import ParseError
from google.protobuf.message import DecodeError

from taskservice.calls.errors import internal_status, malformed_request, to_status
from taskservice.http.errors import connect_error
from taskservice.http.json_codec import JsonEncoder

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
        except (DecodeError, UnicodeDecodeError):  # not the method's message, or not UTF-8
            raise connect_error(to_status(malformed_request())) from None
        except Exception as exc:  # a bug in decoding: INTERNAL, with its traceback logged
            raise connect_error(internal_status("decoding a request", exc)) from None


class JsonCodec(Codec[Any, Any]):
    """Proto3 JSON: responses by `JsonEncoder`, requests by the library's codec."""

    def __init__(self) -> None:
        self._library = google_protobuf_json_codec()
        self._encoder = JsonEncoder()

    def name(self) -> str:
        """`json`, as the library's."""
        return self._library.name()

    def encode(self, message: Any) -> bytes:
        """Compact JSON, the object json_format would write."""
        return self._encoder.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        """As the library decodes (json_format.Parse, unknown fields ignored)."""
        return self._library.decode(data, message_class)


def safe_codecs() -> list[Codec[Any, Any]]:
    """Binary protobuf and JSON, both safe."""
    return [SafeCodec(google_protobuf_binary_codec()), SafeCodec(JsonCodec())]

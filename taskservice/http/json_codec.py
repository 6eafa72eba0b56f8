"""Proto3 JSON for Connect responses: json_format's output, compact and without its Python layers.

connectrpc's JSON codec writes `MessageToJson(message)`: pretty-printed with two-space indents,
which only json's pure-Python encoder can do, after `json_format` has walked every field through
several Python calls (descriptor lookups, well-known-type dispatch, enum options). By profile that
took 11% of the event loop under Connect GetTask, more than the service call itself.

Here each message type gets a converter built once from its descriptor: for each field, its JSON
name and how its value is written (64-bit integers as strings, enums by name, Timestamp, Duration
and FieldMask as their JSON strings, messages recursively). Like `json_format`, it walks
`ListFields()`, so it writes exactly the fields `MessageToDict` does, in the same order. A message
type holding anything the converter does not know (maps, bytes, floats, other well-known types,
enums spelled with json_name options) is handed whole to `MessageToDict`. Either way the text is
`json.dumps` of the same object, compact and UTF-8; tests check it against `json_format` for every
message of the contract with generated values. Requests are decoded by `json_format`, whose errors
callers see.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

#: Well-known types whose JSON is the string their `ToJsonString()` returns.
_STRING_TYPES = frozenset(
    ("google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask")
)
_AS_IS = frozenset(
    (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_BOOL)
)
_AS_STRING = frozenset((FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64))

Convert = Callable[[Any], Any]
#: A message type's fields as (JSON name, value converter, repeated?), by field descriptor.
_Fields = dict[FieldDescriptor, tuple[str, Convert, bool]]


class _Unsupported(Exception):
    """A message type, or one inside it, that only json_format writes."""


def _identity(value: Any) -> Any:
    return value


def _json_string(message: Any) -> str:
    return message.ToJsonString()  # type: ignore[no-any-return]


class JsonEncoder:
    """Messages to compact proto3 JSON bytes, each type's converter built on first use."""

    def __init__(self) -> None:
        self._fields: dict[str, _Fields | None] = {}

    def encode(self, message: Message) -> bytes:
        """The message as `MessageToDict` sees it, dumped compact, in UTF-8."""
        try:
            value = self._message(message)
        except _Unsupported:
            value = MessageToDict(message)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

    def _message(self, message: Any) -> Any:
        descriptor = message.DESCRIPTOR
        if descriptor.full_name in _STRING_TYPES:
            return message.ToJsonString()
        fields = self._fields.get(descriptor.full_name, _NOT_BUILT)
        if fields is _NOT_BUILT:
            fields = self._fields[descriptor.full_name] = _build(descriptor, self._message)
        if fields is None:
            raise _Unsupported(descriptor.full_name)
        result = {}
        for field, value in message.ListFields():
            name, convert, repeated = fields[field]
            result[name] = [convert(item) for item in value] if repeated else convert(value)
        return result


_NOT_BUILT: Any = object()


def _build(descriptor: Descriptor, message: Convert) -> _Fields | None:
    """The converters of a message type's fields, or None if one of them needs json_format."""
    if descriptor.full_name.startswith("google.protobuf."):
        return None
    fields: _Fields = {}
    for field in descriptor.fields:
        convert = _converter(field, message)
        if convert is None:
            return None
        fields[field] = (field.json_name, convert, field.is_repeated)
    return fields


def _converter(field: FieldDescriptor, message: Convert) -> Convert | None:
    cpp_type = field.cpp_type
    if cpp_type in _AS_IS:
        return _identity
    if cpp_type in _AS_STRING:
        return str
    if cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return None if field.type == FieldDescriptor.TYPE_BYTES else _identity
    if cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return _enum_converter(field)
    if cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            return None
        if field.message_type.full_name in _STRING_TYPES:
            return _json_string
        return message  # checked when first met: recursive types are fine
    return None  # floats and doubles: NaN, infinities and float32's shortest form


def _our_annotation(option: FieldDescriptor) -> bool:
    """Whether an enum value's option is one of the contract's own (a permission's name, say).

    json_format writes an enum value by its name whatever custom options annotate it.
    """
    return option.is_extension and option.full_name.startswith("taskservice.")


def _enum_converter(field: FieldDescriptor) -> Convert | None:
    enum = field.enum_type
    if enum.full_name.startswith("google.protobuf.") or enum.is_closed:
        return None
    names = {}
    for value in enum.values:
        if any(not _our_annotation(option) for option, _ in value.GetOptions().ListFields()):
            return None  # an option json_format might heed: let it write the type
        names[value.number] = value.name
    return lambda number: names.get(number, number)

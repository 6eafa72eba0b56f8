"""The Connect JSON encoder writes exactly json_format's JSON object, for every message we define.

Messages are generated from the contract's descriptors, every field type included, so a field
added later is covered without touching this test; types the encoder hands to json_format (maps,
bytes, floats, other well-known types) are generated too, to check the hand-over.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskservice.v1
from taskservice.http.json_codec import JsonEncoder
from taskservice.v1 import task_pb2, task_service_pb2

#: Every generated module of the contract, so a new proto file is covered untouched.
_MODULES = [
    importlib.import_module(f"taskservice.v1.{module.name}")
    for module in pkgutil.iter_modules(taskservice.v1.__path__)
    if module.name.endswith("_pb2")
]


def _all_types(descriptors: Any) -> list[Descriptor]:
    found = []
    for descriptor in descriptors:
        if not descriptor.GetOptions().map_entry:
            found.append(descriptor)
        found.extend(_all_types(descriptor.nested_types))
    return found


CONTRACT = sorted(
    (
        d
        for module in _MODULES
        for d in _all_types(module.DESCRIPTOR.message_types_by_name.values())
    ),
    key=lambda d: d.full_name,
)
#: Types the encoder hands to json_format (a map, bytes, floats, Struct), and one it writes.
HANDED_OVER = [descriptor_pb2.FileDescriptorProto.DESCRIPTOR, struct_pb2.Struct.DESCRIPTOR]

_INTEGERS = {
    FieldDescriptor.CPPTYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT64: st.integers(0, 2**64 - 1),
}
_TIME_SECONDS = st.integers(-62_135_596_800, 253_402_300_799)
_NANOS = st.sampled_from([0, 1, 1_000, 1_000_000, 999_999_999]) | st.integers(0, 999_999_999)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    cpp = field.cpp_type
    if cpp in _INTEGERS:
        return _INTEGERS[cpp]
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=8)
        return st.text(max_size=8)
    # Finite: json_format refuses an infinite Struct number, and NaN equals nothing.
    if cpp == FieldDescriptor.CPPTYPE_FLOAT:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if cpp == FieldDescriptor.CPPTYPE_DOUBLE:
        return st.floats(allow_nan=False, allow_infinity=False)
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        if field.enum_type.is_closed:
            return st.sampled_from(known)
        return st.sampled_from(known) | st.integers(0, 50)
    raise AssertionError(f"no strategy for {field.full_name}")


#: A field mask's paths. Validated here, at import, because that imports hypothesis's regex
#: module, which pytest rewrites: parsing it deep in the recursion of drawing a nested message
#: once raised CPython 3.11's spurious "AST constructor recursion depth mismatch" (gh-106905).
_MASK_PATHS = st.from_regex(r"[a-z]{1,5}(_[a-z]{1,5}){0,2}(\.[a-z]{1,5})?", fullmatch=True)
_MASK_PATHS.validate()


def _message(descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return st.builds(cls, seconds=_TIME_SECONDS, nanos=_NANOS)
    if name == "google.protobuf.Duration":
        return st.builds(cls, seconds=st.integers(0, 315_576_000_000), nanos=_NANOS)
    if name == "google.protobuf.FieldMask":
        return st.builds(cls, paths=st.lists(_MASK_PATHS))
    if depth > 2:
        return st.just(cls())
    fields = {field.name: _field(field, depth) for field in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _fill(cls(), values))


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        return st.dictionaries(_scalar(key), _single(value, depth + 1), max_size=3)
    single = _single(field, depth + 1)
    return st.lists(single, max_size=3) if field.is_repeated else single


def _single(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        return _message(field.message_type, depth)
    return _scalar(field)


def _fill(message: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        target = getattr(message, name, None)
        if isinstance(value, Message):
            target.CopyFrom(value)  # type: ignore[union-attr]
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)  # type: ignore[index]
                else:
                    target[key] = item  # type: ignore[index]
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Message):
                    target.add().CopyFrom(item)  # type: ignore[union-attr]
                else:
                    target.append(item)  # type: ignore[union-attr]
        else:
            setattr(message, name, value)
    return message


def _check(encoder: JsonEncoder, message: Message) -> None:
    expected = MessageToDict(message)
    encoded = encoder.encode(message)
    assert json.loads(encoded) == expected
    assert encoded == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("descriptor", CONTRACT + HANDED_OVER, ids=lambda d: d.full_name)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_encodes_as_json_format_writes_it(
    descriptor: Descriptor, data: st.DataObject
) -> None:
    encoder = JsonEncoder()
    message = data.draw(_message(descriptor, 0))
    _check(encoder, message)
    _check(encoder, message)  # and again from the converters built by the first


def test_the_contract_is_written_by_the_fast_path() -> None:
    """Every message of the contract is one the encoder writes itself, not json_format."""
    encoder = JsonEncoder()
    for descriptor in CONTRACT:
        encoder._message(GetMessageClass(descriptor)())  # raises if it would hand over
    assert all(encoder._fields[d.full_name] is not None for d in CONTRACT)


def test_a_response_is_compact_utf8() -> None:
    task = task_pb2.Task(id=2**40, title="café ✓", status=task_pb2.TASK_STATUS_DONE)
    task.create_time.FromSeconds(0)
    assert (
        JsonEncoder().encode(task_service_pb2.GetTaskResponse(task=task))
        == (
            '{"task":{"id":"1099511627776","title":"café ✓","status":"TASK_STATUS_DONE",'
            '"createTime":"1970-01-01T00:00:00Z"}}'
        ).encode()
    )

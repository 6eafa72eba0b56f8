"""Conversions that must agree exactly with protobuf's own, and with the json module's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from taskservice.api.convert import timestamp
from taskservice.db.types import LabelList


@pytest.mark.parametrize(
    "value",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(2026, 11, 24, 1, 2, 3, 456_789, tzinfo=UTC),
        datetime(2026, 1, 1, 5, 0, tzinfo=timezone(timedelta(hours=5))),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_timestamp_matches_protobuf(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


@given(st.lists(st.text()))
def test_labels_read_back_as_written_and_as_json_loads_reads_them(labels: list[str]) -> None:
    column = LabelList()
    stored = column.process_bind_param(labels, None)  # type: ignore[arg-type]
    assert column.process_result_value(stored, None) == labels  # type: ignore[arg-type]
    spaced = json.dumps(labels, indent=1)
    assert column.process_result_value(f" {spaced} ", None) == labels  # type: ignore[arg-type]


def test_a_labels_text_that_is_not_one_json_value_is_an_error() -> None:
    for text in ('["a"]x', '["a"', "[1,]"):
        with pytest.raises(json.JSONDecodeError):
            LabelList().process_result_value(text, None)  # type: ignore[arg-type]

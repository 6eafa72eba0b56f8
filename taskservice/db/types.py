"""Column types that behave the same on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Dialect, Integer, Text
from sqlalchemy.types import TypeDecorator

#: 64-bit ids on PostgreSQL; on SQLite only `INTEGER PRIMARY KEY` is the auto-incrementing rowid.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in, an aware UTC datetime out, whatever the database keeps.

    SQLite stores no time zone and hands back naive values; PostgreSQL's `timestamptz` returns the
    session's zone. Normalising here means the rest of the code only ever sees UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes: their zone would be a guess."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read naive values as the UTC they were written in.

        SQLite returns every value naive; asyncpg returns UTC, except the two ends of the range,
        which it writes as PostgreSQL's -infinity and infinity and reads back as naive
        `datetime.min` and `datetime.max`. So this is no identity on asyncpg either.
        """
        if value is None or value.tzinfo is UTC:
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


_scan_json = json.JSONDecoder().scan_once


class LabelList(TypeDecorator[list[str]]):
    """A task's labels as one JSON array in a text column, the same on both databases."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Dialect) -> str:
        """Store the list as compact JSON (non-ASCII kept as is)."""
        return json.dumps(value or [], ensure_ascii=False, separators=(",", ":"))

    def process_result_value(self, value: str | None, dialect: Dialect) -> list[str]:
        """Read the JSON array back; a NULL is no labels.

        Called for every task read, so without `json.loads`' layers of Python: an empty list
        is answered at once, and the rest goes straight to the C scanner (which `json.loads`
        ends in), checked to have read the whole text.
        """
        if not value or value == "[]":
            return []
        try:
            labels, end = _scan_json(value, 0)
        except StopIteration:  # not a JSON value at its first character: let json.loads say why
            end = -1
        return labels if end == len(value) else json.loads(value)

"""The AIP-160 filter language: grammar, types, errors with positions, limits, and SQL == memory."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    exists,
    insert,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from taskservice.db.types import UTCDateTime
from taskservice.errors import InvalidArgument
from taskservice.services import tasks
from taskservice.services.filtering import (
    ANY,
    MAX_COMPARISONS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    REASON,
    And,
    ColumnTarget,
    Comparison,
    EnumValue,
    Field,
    Filter,
    Kind,
    Not,
    Op,
    Or,
    Schema,
    Value,
    canonical,
    like_pattern,
    matches,
    parse,
    to_sql,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

STATUSES = {
    "TASK_STATUS_TODO": "todo",
    "TASK_STATUS_IN_PROGRESS": "in_progress",
    "TASK_STATUS_DONE": "done",
}
PRIORITIES = {"TASK_PRIORITY_LOW": 1, "TASK_PRIORITY_MEDIUM": 2, "TASK_PRIORITY_HIGH": 3}

SCHEMA = Schema(
    Field("status", Kind.ENUM, enum_values=STATUSES),
    Field("priority", Kind.ENUM, enum_values=PRIORITIES),
    Field("owner_id", Kind.INT),
    Field("title", Kind.STRING),
    Field("labels", Kind.LABELS, presence=True),
    Field("due_time", Kind.TIMESTAMP, presence=True),
    Field("archived", Kind.BOOL),
)
FIELD_LIST = "status, priority, owner_id, title, labels, due_time, archived"

# The same fields as a table, with labels in a table of their own keyed by the casefolded label.
METADATA = MetaData()
ITEMS = Table(
    "items",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("status", String(16)),
    Column("priority", Integer),
    Column("owner_id", BigInteger),
    Column("title", Text),
    Column("due_time", UTCDateTime),
    Column("archived", Boolean),
)
ITEM_LABELS = Table(
    "item_labels",
    METADATA,
    Column("item_id", ForeignKey("items.id"), primary_key=True),
    Column("label_key", Text, primary_key=True),
)


def _labels_clause(op: Op, value: Value) -> ColumnElement[bool]:
    """labels:"x" and labels:* as EXISTS on the labels table (never NULL, as required)."""
    assert op is Op.HAS
    query = select(ITEM_LABELS.c.item_id).where(ITEM_LABELS.c.item_id == ITEMS.c.id)
    if value is not ANY:
        query = query.where(ITEM_LABELS.c.label_key == value)
    return exists(query)


COLUMNS: Mapping[str, ColumnTarget] = {
    **{name: ITEMS.c[name] for name in SCHEMA.fields if name != "labels"},
    "labels": _labels_clause,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    METADATA.create_all(engine)
    yield engine
    engine.dispose()


def _select_ids(
    engine: Engine, filter_: Filter, records: Sequence[Mapping[str, object]]
) -> set[int]:
    """Store the records as rows 1..n and return the ids to_sql() selects among them."""
    with engine.begin() as connection:
        connection.execute(ITEM_LABELS.delete())
        connection.execute(ITEMS.delete())
        for number, record in enumerate(records, start=1):
            row = {name: record.get(name) for name in COLUMNS if name != "labels"}
            connection.execute(insert(ITEMS).values(id=number, **row))
            keys = {str(label).casefold() for label in record.get("labels") or ()}
            for key in keys:
                connection.execute(insert(ITEM_LABELS).values(item_id=number, label_key=key))
        query = select(ITEMS.c.id).where(to_sql(filter_, COLUMNS))
        return set(connection.execute(query).scalars())


def _both(engine: Engine, text: str, records: Sequence[Mapping[str, object]]) -> set[int]:
    """Which records (by 1-based number) a filter selects, after checking SQL and memory agree."""
    filter_ = parse(text, SCHEMA)
    in_memory = {n for n, record in enumerate(records, start=1) if matches(filter_, record)}
    assert _select_ids(engine, filter_, records) == in_memory
    return in_memory


def _error(text: str, field_name: str = "filter") -> str:
    """The description of the error parse() raises for `text`."""
    with pytest.raises(InvalidArgument) as caught:
        parse(text, SCHEMA, field_name)
    error = caught.value
    assert error.reason == REASON
    assert [violation.field for violation in error.violations] == [field_name]
    return error.violations[0].description


def _cmp(name: str, op: Op, value: Value) -> Comparison:
    return Comparison(name, SCHEMA.fields[name].kind, op, value)


A = _cmp("owner_id", Op.EQ, 1)
B = _cmp("owner_id", Op.EQ, 2)
C = _cmp("owner_id", Op.EQ, 3)
D = _cmp("owner_id", Op.EQ, 4)
DAY = datetime(2026, 1, 1, tzinfo=UTC)


# Values and kinds.


def test_an_empty_or_blank_filter_matches_everything(engine: Engine) -> None:
    for text in ("", "   ", "\n\t "):
        filter_ = parse(text, SCHEMA)
        assert filter_ == Filter(None)
        assert canonical(filter_) == ""
    assert _both(engine, "", [{}, {"owner_id": 1}]) == {1, 2}


def test_enum_values_are_read_by_their_full_names_quoted_or_not() -> None:
    done = _cmp("status", Op.EQ, EnumValue("TASK_STATUS_DONE", "done"))
    assert parse("status = TASK_STATUS_DONE", SCHEMA).expression == done
    assert parse('status="TASK_STATUS_DONE"', SCHEMA).expression == done
    high = parse("priority != TASK_PRIORITY_HIGH", SCHEMA).expression
    assert high == _cmp("priority", Op.NE, EnumValue("TASK_PRIORITY_HIGH", 3))


def test_enums_match_their_stored_values(engine: Engine) -> None:
    records = [{"status": "done", "priority": 3}, {"status": "todo", "priority": 1}, {}]
    assert _both(engine, "status = TASK_STATUS_DONE", records) == {1}
    assert _both(engine, "status != TASK_STATUS_DONE", records) == {2}
    assert _both(engine, "priority = TASK_PRIORITY_LOW", records) == {2}


def test_integers_compare_with_every_ordering_operator(engine: Engine) -> None:
    records = [{"owner_id": n} for n in (1, 2, 3)]
    assert _both(engine, "owner_id = 2", records) == {2}
    assert _both(engine, "owner_id != 2", records) == {1, 3}
    assert _both(engine, "owner_id < 2", records) == {1}
    assert _both(engine, "owner_id <= 2", records) == {1, 2}
    assert _both(engine, "owner_id > 2", records) == {3}
    assert _both(engine, "owner_id >= 2", records) == {2, 3}


def test_integers_cover_int64_and_nothing_beyond() -> None:
    assert parse(f"owner_id = {INT64_MAX}", SCHEMA).expression == _cmp("owner_id", Op.EQ, INT64_MAX)
    assert parse(f"owner_id = {INT64_MIN}", SCHEMA).expression == _cmp("owner_id", Op.EQ, INT64_MIN)
    assert parse("owner_id = -0", SCHEMA).expression == _cmp("owner_id", Op.EQ, 0)
    assert parse("owner_id = 007", SCHEMA).expression == _cmp("owner_id", Op.EQ, 7)
    assert parse('owner_id = "7"', SCHEMA).expression == _cmp("owner_id", Op.EQ, 7)
    out_of_range = "is out of range for owner_id: integers are from -9223372036854775808 to "
    assert _error(f"owner_id = {INT64_MAX + 1}") == (
        f"position 12: {INT64_MAX + 1} {out_of_range}{INT64_MAX}"
    )
    assert _error(f"owner_id = {INT64_MIN - 1}").startswith(f"position 12: {INT64_MIN - 1} is out")
    assert "out of range" in _error("owner_id = " + "9" * 1500)
    assert parse("owner_id = " + "0" * 100 + "1", SCHEMA).expression == _cmp("owner_id", Op.EQ, 1)
    for bad in ("1.5", "1e3", "+1", "0x10", "\u0661"):
        assert (
            _error(f"owner_id = {bad}") == f'position 12: owner_id takes an integer, found "{bad}"'
        )


def test_booleans_are_true_or_false(engine: Engine) -> None:
    records = [{"archived": True}, {"archived": False}, {}]
    assert _both(engine, "archived = true", records) == {1}
    assert _both(engine, "archived != true", records) == {2}
    assert _error("archived = TRUE") == 'position 12: archived takes true or false, found "TRUE"'


def test_title_has_is_a_case_insensitive_substring_search(engine: Engine) -> None:
    records = [{"title": "Quarterly REPORT"}, {"title": "report"}, {"title": "rep ort"}, {}]
    assert _both(engine, 'title:"report"', records) == {1, 2}
    assert _both(engine, "title:Report", records) == {1, 2}
    assert _both(engine, 'title:"ly rep"', records) == {1}
    assert _both(engine, 'title:""', records) == {1, 2, 3}


def test_title_equality_is_exact(engine: Engine) -> None:
    records = [{"title": "Report"}, {"title": "report"}, {}]
    assert _both(engine, 'title = "report"', records) == {2}
    assert _both(engine, 'title != "report"', records) == {1}


def test_like_wildcards_in_a_search_are_taken_literally(engine: Engine) -> None:
    records = [{"title": "100%"}, {"title": "1000"}, {"title": "a_b"}, {"title": "axb"}]
    records += [{"title": "back\\slash"}, {"title": "backslash"}]
    assert _both(engine, 'title:"0%"', records) == {1}
    assert _both(engine, 'title:"_"', records) == {3}
    assert _both(engine, 'title:"k\\\\s"', records) == {5}
    assert like_pattern("50%_\\") == "%50\\%\\_\\\\%"


def test_labels_has_tests_membership_case_insensitively(engine: Engine) -> None:
    records = [{"labels": ["Home", "work"]}, {"labels": ["homework"]}, {"labels": []}, {}]
    assert _both(engine, 'labels:"home"', records) == {1}
    assert _both(engine, "labels:HOME", records) == {1}
    assert _both(engine, "labels:*", records) == {1, 2}
    assert _both(engine, "-labels:*", records) == {3, 4}
    assert parse('labels:"STRASSE"', SCHEMA) == parse('labels:"straße"', SCHEMA)


def test_timestamps_compare_as_instants_whatever_their_offset(engine: Engine) -> None:
    records = [{"due_time": DAY - timedelta(microseconds=1)}, {"due_time": DAY}, {}]
    assert _both(engine, 'due_time < "2026-01-01T00:00:00Z"', records) == {1}
    assert _both(engine, "due_time <= 2026-01-01T02:00:00+02:00", records) == {1, 2}
    assert _both(engine, "due_time = 2025-12-31T23:59:59.999999Z", records) == {1}
    assert _both(engine, "due_time >= 2025-12-31t19:00:00-05:00", records) == {2}
    assert _both(engine, "due_time:*", records) == {1, 2}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", DAY),
        ("2026-01-01t00:00:00z", DAY),
        ("2026-01-01T01:30:00+01:30", DAY),
        ("2025-12-31T23:00:00-01:00", DAY),
        ("2026-01-01T00:00:00-00:00", DAY),
        ("2026-01-01T00:00:00.5Z", DAY + timedelta(milliseconds=500)),
        ("2026-01-01T00:00:00.123456Z", DAY + timedelta(microseconds=123456)),
        ("2026-01-01T00:00:00.123456000Z", DAY + timedelta(microseconds=123456)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_timestamps_are_rfc3339_with_an_offset_read_as_utc(text: str, expected: datetime) -> None:
    for spelled in (text, f'"{text}"'):
        comparison = parse(f"due_time > {spelled}", SCHEMA).expression
        assert comparison == _cmp("due_time", Op.GT, expected)
        assert isinstance(comparison, Comparison)
        assert comparison.value.tzinfo is UTC  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("2026-01-01", "due_time takes an RFC 3339 timestamp with an offset such as"),
        ("2026-01-01T00:00:00", "due_time takes an RFC 3339 timestamp with an offset such as"),
        ("2026-01-01 00:00:00Z", "due_time takes an RFC 3339 timestamp with an offset such as"),
        ("2026-1-01T00:00:00Z", "due_time takes an RFC 3339 timestamp with an offset such as"),
        ("2026-01-01T00:00:00+0100", "due_time takes an RFC 3339 timestamp with an offset such as"),
        ("2026-02-30T00:00:00Z", "is not a valid date and time"),
        ("2026-01-01T24:00:00Z", "is not a valid date and time"),
        ("2026-12-31T23:59:60Z", "is not a valid date and time"),
        ("2026-01-01T00:00:00+24:00", "has an invalid offset"),
        ("2026-01-01T00:00:00+01:60", "has an invalid offset"),
        ("2026-01-01T00:00:00.0000001Z", "is finer than the microseconds times are kept in"),
        ("0000-01-01T00:00:00Z", "is out of range: years 0001 to 9999 in UTC"),
        ("0001-01-01T00:30:00+01:00", "is out of range: years 0001 to 9999 in UTC"),
        ("9999-12-31T23:59:59-00:01", "is out of range: years 0001 to 9999 in UTC"),
    ],
)
def test_a_bad_timestamp_is_refused_at_its_position(text: str, problem: str) -> None:
    assert _error(f'due_time < "{text}"').startswith("position 12: ")
    assert problem in _error(f'due_time < "{text}"')


# Unset values.


def test_a_comparison_never_matches_an_unset_value_but_its_negation_does(engine: Engine) -> None:
    records = [{"due_time": DAY}, {"due_time": DAY + timedelta(days=1)}, {"due_time": None}]
    at = '"2026-01-01T00:00:00Z"'
    assert _both(engine, f"due_time != {at}", records) == {2}
    assert _both(engine, f"NOT due_time = {at}", records) == {2, 3}
    assert _both(engine, f"due_time < {at}", records) == set()
    assert _both(engine, f"NOT due_time < {at}", records) == {1, 2, 3}
    assert _both(engine, f"NOT (due_time < {at} OR due_time > {at})", records) == {1, 3}
    assert _both(engine, "NOT due_time:*", records) == {3}
    assert _both(engine, "NOT NOT due_time:*", records) == {1, 2}
    assert _both(engine, 'NOT title:"x"', [{"title": None}, {"title": "x"}]) == {1}


# Grammar.


def test_or_binds_tighter_than_and() -> None:
    assert parse("owner_id=1 AND owner_id=2 OR owner_id=3", SCHEMA).expression == And(
        (A, Or((B, C)))
    )
    assert parse("owner_id=1 OR owner_id=2 AND owner_id=3", SCHEMA).expression == And(
        (Or((A, B)), C)
    )


def test_juxtaposition_is_an_implicit_and_with_the_same_precedence() -> None:
    assert parse("owner_id=1 owner_id=2", SCHEMA) == parse("owner_id=1 AND owner_id=2", SCHEMA)
    assert parse("owner_id=1 owner_id=2 OR owner_id=3", SCHEMA).expression == And((A, Or((B, C))))
    assert parse("(owner_id=1)(owner_id=2)", SCHEMA).expression == And((A, B))


def test_not_binds_tightest_and_minus_is_not() -> None:
    assert parse("NOT owner_id=1 OR owner_id=2", SCHEMA).expression == Or((Not(A), B))
    assert parse("-owner_id=1 owner_id=2", SCHEMA).expression == And((Not(A), B))
    assert parse("NOT NOT owner_id=1", SCHEMA).expression == Not(Not(A))
    assert parse("NOT(owner_id=1)", SCHEMA).expression == Not(A)
    assert parse("- owner_id = 1", SCHEMA).expression == Not(A)
    assert parse("owner_id = -1", SCHEMA).expression == _cmp("owner_id", Op.EQ, -1)


def test_parentheses_group_and_nested_operators_flatten() -> None:
    expression = parse("(owner_id=1 AND owner_id=2) OR owner_id=3", SCHEMA).expression
    assert expression == Or((And((A, B)), C))
    expression = parse("((owner_id=1 OR owner_id=2)) OR (owner_id=3 OR owner_id=4)", SCHEMA)
    assert expression.expression == Or((A, B, C, D))
    expression = parse("owner_id=1 AND (owner_id=2 AND owner_id=3) owner_id=4", SCHEMA)
    assert expression.expression == And((A, B, C, D))


def test_whitespace_around_operators_is_optional() -> None:
    spaced = parse(' owner_id = 1  AND\ttitle : "x"\n', SCHEMA)
    assert spaced == parse('owner_id=1 AND title:"x"', SCHEMA)


def test_keywords_are_upper_case_whole_words() -> None:
    assert "AND, OR and NOT are upper-case" in _error("owner_id=1 and owner_id=2")
    assert _error("NOTE = 1").startswith('position 1: unknown field "NOTE"')
    assert _error("ORDER = 1").startswith('position 1: unknown field "ORDER"')


def test_strings_take_either_quote_and_backslash_escapes() -> None:
    expression = parse(r'title = "a\"b\\c\nd\re\tf\'g"', SCHEMA).expression
    assert expression == _cmp("title", Op.EQ, "a\"b\\c\nd\re\tf'g")
    assert parse("title = 'say \"hi\"'", SCHEMA).expression == _cmp("title", Op.EQ, 'say "hi"')
    assert parse('title = "(AND) OR"', SCHEMA).expression == _cmp("title", Op.EQ, "(AND) OR")
    assert parse('title = "ünïcødé 中"', SCHEMA).expression == _cmp("title", Op.EQ, "ünïcødé 中")


def test_field_name_is_the_callers() -> None:
    assert _error("colour = 1", "request.filter").startswith("position 1: unknown field")


# Errors: each with its position and what was expected.


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("status = ", 'position 10: expected a value after "=", found end of filter'),
        ("status =", 'position 9: expected a value after "=", found end of filter'),
        (
            "colour = 1",
            f'position 1: unknown field "colour"; filterable fields: {FIELD_LIST}',
        ),
        (
            "status = TASK_STATUS_DONE AND colour = 1",
            f'position 31: unknown field "colour"; filterable fields: {FIELD_LIST}',
        ),
        (
            "status < TASK_STATUS_DONE",
            'position 8: operator "<" is not allowed on status; allowed: =, !=',
        ),
        (
            "labels >= 1",
            'position 8: operator ">=" is not allowed on labels; allowed: :, labels:* (presence)',
        ),
        (
            "owner_id:1",
            'position 9: operator ":" is not allowed on owner_id; allowed: =, !=, <, <=, >, >=',
        ),
        (
            "title < 1",
            'position 7: operator "<" is not allowed on title; allowed: =, !=, :',
        ),
        ("title:*", "position 7: the presence test title:* is not allowed"),
        (
            'due_time:"2026-01-01T00:00:00Z"',
            'position 10: only the presence test due_time:* may follow ":" on due_time',
        ),
        (
            "status = TASK_STATUS_DON",
            'position 10: unknown value "TASK_STATUS_DON" for status; expected one of '
            "TASK_STATUS_TODO, TASK_STATUS_IN_PROGRESS, TASK_STATUS_DONE",
        ),
        (
            "status = task_status_done",
            'position 10: unknown value "task_status_done" for status; expected one of '
            "TASK_STATUS_TODO, TASK_STATUS_IN_PROGRESS, TASK_STATUS_DONE",
        ),
        ('owner_id = "x"', 'position 12: owner_id takes an integer, found "x"'),
        (
            "owner_id 1",
            'position 10: expected an operator (=, !=, <, <=, >, >=, :) after owner_id, found "1"',
        ),
        (
            "owner_id",
            "position 9: expected an operator (=, !=, <, <=, >, >=, :) after "
            "owner_id, found end of filter",
        ),
        ("owner_id == 1", 'position 11: unexpected "=": equality is a single "="'),
        ("owner_id = (1)", 'position 12: expected a value after "=", found "("'),
        ("owner_id = AND", 'position 12: expected a value after "=", found "AND"'),
        (
            "title = OR",
            'position 9: expected a value after "=", found "OR"; quote a keyword to use it as text',
        ),
        ('"report"', "position 1: expected a field name, found a quoted string"),
        ("report", 'position 1: unknown field "report"; filterable fields: ' + FIELD_LIST),
        ("= 1", 'position 1: expected a field name, found "="'),
        ("42", 'position 1: expected a field name, found "42"'),
        (
            "owner_id=1 AND",
            'position 15: expected a field name after "AND", found end of filter',
        ),
        (
            "owner_id=1 OR OR owner_id=2",
            'position 15: expected a field name after "OR", found "OR"',
        ),
        ("AND owner_id=1", 'position 1: expected a field name, found "AND"'),
        ("NOT", 'position 4: expected a field name after "NOT", found end of filter'),
        ("-", 'position 2: expected a field name after "-", found end of filter'),
        ("()", 'position 2: expected a field name after "(", found ")"'),
        (
            "(owner_id=1",
            'position 12: expected ")" to close the "(" at position 1, found end of filter',
        ),
        ("owner_id=1)", 'position 11: unexpected ")" without a matching "("'),
        ("owner_id=1 = 2", 'position 12: expected a field name, found "="'),
        ('title:"abc', 'position 7: unterminated string: this " is never closed'),
        ("title:'abc\\'", "position 7: unterminated string: this ' is never closed"),
        ('title:"abc\\', 'position 7: unterminated string: this " is never closed'),
        ('title:"a\\qb"', "position 9: unknown escape \\q; known: \\\\ \\\" \\' \\n \\r \\t"),
        (
            'title:"a\\\x01"',
            "position 9: unknown escape \\ + U+0001; known: \\\\ \\\" \\' \\n \\r \\t",
        ),
        (
            "title:a*",
            'position 7: "a*" must be quoted: unquoted text cannot hold any of * = < > ! : \\',
        ),
        (
            "title = a:b",
            'position 9: "a:b" must be quoted: unquoted text cannot hold any of * = < > ! : \\',
        ),
        ('title = "a\x00"', "position 11: NUL (U+0000) is not allowed"),
        (
            "owner_id = 1 " + "x" * 30,
            'position 14: unknown field "' + "x" * 30 + f'"; filterable fields: {FIELD_LIST}',
        ),
        (
            "owner_id = 1 €" + "x" * 30,
            'position 14: expected a field name, found "€' + "x" * 19 + '..."',
        ),
    ],
)
def test_every_mistake_names_its_position_and_what_was_expected(
    text: str, description: str
) -> None:
    assert _error(text) == description


def test_positions_count_characters_not_bytes() -> None:
    assert _error('title = "ü" colour = 1').startswith("position 13: unknown field")


# Limits.


def test_a_filter_may_be_as_long_as_the_limit_and_no_longer() -> None:
    text = "owner_id = 1"
    assert parse(text.ljust(MAX_FILTER_LENGTH), SCHEMA).expression == A
    assert _error(text.ljust(MAX_FILTER_LENGTH + 1)) == (
        f"position {MAX_FILTER_LENGTH + 1}: a filter is at most {MAX_FILTER_LENGTH} characters "
        f"(this one has {MAX_FILTER_LENGTH + 1})"
    )


def test_a_filter_holds_a_limited_number_of_comparisons() -> None:
    allowed = " AND ".join(["owner_id=1"] * MAX_COMPARISONS)
    assert len(parse(allowed, SCHEMA).expression.operands) == MAX_COMPARISONS  # type: ignore[union-attr]
    too_many = allowed + " OR owner_id=2"
    assert _error(too_many) == (
        f"position {len(allowed) + 5}: a filter holds at most {MAX_COMPARISONS} comparisons"
    )


def test_nesting_of_parentheses_and_not_is_limited() -> None:
    deepest = "(" * MAX_DEPTH + "owner_id=1" + ")" * MAX_DEPTH
    assert parse(deepest, SCHEMA).expression == A
    too_deep = "(" * (MAX_DEPTH + 1) + "owner_id=1" + ")" * (MAX_DEPTH + 1)
    assert _error(too_deep) == (
        f"position {MAX_DEPTH + 1}: nested more than {MAX_DEPTH} levels deep (parentheses and NOT)"
    )
    assert _error("NOT " * (MAX_DEPTH + 1) + "owner_id=1").startswith(
        f"position {4 * MAX_DEPTH + 1}: nested more than"
    )
    assert _error("-" * 500 + "owner_id=1").startswith(f"position {MAX_DEPTH + 1}: nested")
    assert _error("(" * 1000).startswith(f"position {MAX_DEPTH + 1}: nested")
    mixed = "NOT (" * (MAX_DEPTH // 2) + "owner_id=1" + ")" * (MAX_DEPTH // 2)
    assert parse(mixed, SCHEMA).expression is not None


# Canonical form.


def test_the_canonical_form_ignores_spelling_but_keeps_meaning() -> None:
    spellings = [
        'status=TASK_STATUS_DONE   title:"Report" -labels:*',
        "status = \"TASK_STATUS_DONE\" AND title:'REPORT' AND NOT labels:*",
        "(status = TASK_STATUS_DONE) AND (title:report AND NOT (labels:*))",
    ]
    expected = 'status = TASK_STATUS_DONE AND title:"report" AND NOT labels:*'
    assert {canonical(parse(text, SCHEMA)) for text in spellings} == {expected}
    assert str(parse(spellings[0], SCHEMA)) == expected


def test_the_canonical_form_normalises_values() -> None:
    assert canonical(parse("due_time < 2026-01-01T02:00:00.500+02:00", SCHEMA)) == (
        'due_time < "2026-01-01T00:00:00.5Z"'
    )
    assert canonical(parse('owner_id = "007"', SCHEMA)) == "owner_id = 7"
    assert canonical(parse('title = "a\\"b\\\\c\\nd"', SCHEMA)) == 'title = "a\\"b\\\\c\\nd"'
    assert canonical(parse("due_time > 0001-01-01T00:00:00Z", SCHEMA)) == (
        'due_time > "0001-01-01T00:00:00Z"'
    )


def test_the_canonical_form_parenthesises_only_what_precedence_needs_and_reads_back() -> None:
    numbers = Schema(Field("n", Kind.INT))
    cases = {
        "n=1 AND n=2 OR n=3": "n = 1 AND n = 2 OR n = 3",
        "n=1 AND (n=2 OR n=3)": "n = 1 AND n = 2 OR n = 3",
        "(n=1 AND n=2) OR n=3": "(n = 1 AND n = 2) OR n = 3",
        "NOT (n=1 OR n=2)": "NOT (n = 1 OR n = 2)",
        "NOT -(n=1)": "NOT NOT n = 1",
    }
    for text, expected in cases.items():
        parsed = parse(text, numbers)
        assert canonical(parsed) == expected
        assert parse(expected, numbers) == parsed


def test_the_tree_is_immutable() -> None:
    parsed = parse("owner_id = 1", SCHEMA)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.expression = None  # type: ignore[misc]


# Schema and wiring mistakes are the programmer's, caught early.


def test_schema_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="cannot allow <"):
        Field("status", Kind.ENUM, operators=frozenset({Op.LT}), enum_values=STATUSES)
    with pytest.raises(ValueError, match="enum_values are required"):
        Field("status", Kind.ENUM)
    with pytest.raises(ValueError, match="enum_values are required"):
        Field("owner_id", Kind.INT, enum_values={"X": 1})
    with pytest.raises(ValueError, match="not an identifier"):
        Field("AND", Kind.INT)
    with pytest.raises(ValueError, match="not an identifier"):
        Field("status", Kind.ENUM, enum_values={"NOT": 1})
    with pytest.raises(ValueError, match="declared twice"):
        Schema(Field("a", Kind.INT), Field("a", Kind.INT))
    narrowed = Schema(Field("n", Kind.INT, operators=frozenset({Op.EQ})))
    with pytest.raises(InvalidArgument, match='operator "<" is not allowed on n; allowed: ='):
        parse("n < 1", narrowed)


def test_wiring_mistakes_in_the_column_map_are_programming_errors() -> None:
    with pytest.raises(LookupError, match="owner_id"):
        to_sql(parse("owner_id = 1", SCHEMA), {})
    with pytest.raises(TypeError, match="ClauseFactory"):
        to_sql(parse('labels:"x"', SCHEMA), {"labels": ITEMS.c.title})


# Properties: no input escapes as anything but InvalidArgument, and SQL agrees with memory.

_POSITION = re.compile(r"position ([0-9]+): ")


def _parse_or_invalid(text: str) -> Filter | None:
    """Parse, or check the InvalidArgument is well formed; any other exception fails the test."""
    error: InvalidArgument | None = None
    try:
        parsed = parse(text, SCHEMA)
    except InvalidArgument as raised:
        error = raised
    if error is not None:
        assert error.reason == REASON
        assert [violation.field for violation in error.violations] == ["filter"]
        position = _POSITION.match(error.violations[0].description)
        assert position is not None, error.violations[0].description
        assert 1 <= int(position.group(1)) <= len(text) + 1
        return None
    assert parse(canonical(parsed), SCHEMA) == parsed
    return parsed


PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TOKENS = [
    *SCHEMA.fields,
    "colour",
    "and",
    "AND",
    "OR",
    "NOT",
    "-",
    "(",
    ")",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    ":",
    "==",
    "*",
    '"',
    "'",
    "\\",
    '"x"',
    "'y z'",
    '"a\\"b"',
    '"\\n"',
    '"\\u"',
    "report",
    *STATUSES,
    *PRIORITIES,
    "TASK_STATUS_",
    "0",
    "-1",
    "42",
    str(INT64_MAX),
    str(INT64_MAX + 1),
    "1.5",
    "true",
    "false",
    "2026-01-01T00:00:00Z",
    '"2026-01-01T00:00:00+01:00"',
    "2026-02-30T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "2026-01-01",
    "\x00",
    "é",
    "中",
]


@PROPERTY
@given(st.text(max_size=200))
def test_any_text_parses_or_is_invalid_argument(text: str) -> None:
    _parse_or_invalid(text)


@PROPERTY
@given(
    st.lists(
        st.tuples(st.sampled_from(TOKENS), st.sampled_from(["", " ", " ", "  ", "\t"])),
        max_size=25,
    )
)
def test_token_soup_parses_or_is_invalid_argument(pieces: list[tuple[str, str]]) -> None:
    _parse_or_invalid("".join(token + separator for token, separator in pieces))


@PROPERTY
@given(st.integers(min_value=1, max_value=3 * MAX_DEPTH), st.sampled_from(["(", "NOT ", "-"]))
def test_deep_nesting_is_refused_without_recursion_errors(depth: int, opener: str) -> None:
    closer = ")" if opener == "(" else ""
    _parse_or_invalid(opener * depth + "owner_id=1" + closer * depth)


# Grammar-built filters over the test schema, to compare to_sql() with matches().

_TEXT = "aAbB%_\\ 中\"'"
_INSTANTS = [
    DAY - timedelta(microseconds=1),
    DAY,
    DAY + timedelta(hours=1),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _timestamp_text(instant: datetime, offset_minutes: int) -> str:
    try:
        local = instant.astimezone(timezone(timedelta(minutes=offset_minutes)))
    except OverflowError:
        local = instant
    return _quoted(local.isoformat())


_ORDERED = ["=", "!=", "<", "<=", ">", ">="]
_COMPARISONS = st.one_of(
    st.builds("status {} {}".format, st.sampled_from(["=", "!="]), st.sampled_from(list(STATUSES))),
    st.builds(
        "priority {} {}".format, st.sampled_from(["=", "!="]), st.sampled_from(list(PRIORITIES))
    ),
    st.builds(
        "owner_id {} {}".format,
        st.sampled_from(_ORDERED),
        st.sampled_from([-1, 0, 1, 2, INT64_MIN, INT64_MAX]),
    ),
    st.builds("title:{}".format, st.text(_TEXT, max_size=3).map(_quoted)),
    st.builds(
        "title {} {}".format, st.sampled_from(["=", "!="]), st.text(_TEXT, max_size=3).map(_quoted)
    ),
    st.builds("labels:{}".format, st.sampled_from(["*", "a", "A", '"ss"', "ß", '"b b"'])),
    st.builds(
        "due_time {} {}".format,
        st.sampled_from(_ORDERED),
        st.builds(_timestamp_text, st.sampled_from(_INSTANTS), st.sampled_from([0, 90, -300])),
    ),
    st.just("due_time:*"),
    st.builds(
        "archived {} {}".format, st.sampled_from(["=", "!="]), st.sampled_from(["true", "false"])
    ),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds("{} AND {}".format, children, children),
        st.builds("{} OR {}".format, children, children),
        st.builds("{} {}".format, children, children),
        st.builds("NOT {}".format, children),
        st.builds("-{}".format, children),
        st.builds("({})".format, children),
    )


FILTERS = st.recursive(_COMPARISONS, _combine, max_leaves=8)
RECORDS = st.fixed_dictionaries(
    {
        "status": st.sampled_from([None, *STATUSES.values()]),
        "priority": st.sampled_from([None, *PRIORITIES.values()]),
        "owner_id": st.sampled_from([None, -1, 0, 1, 2, INT64_MIN, INT64_MAX]),
        "title": st.none() | st.text(_TEXT, max_size=4),
        "labels": st.lists(st.sampled_from(["a", "A", "SS", "ß", "b b", "c"]), max_size=3),
        "due_time": st.sampled_from([None, *_INSTANTS]),
        "archived": st.sampled_from([None, True, False]),
    }
)


@settings(PROPERTY, max_examples=250)
@given(FILTERS, st.lists(RECORDS, min_size=2, max_size=6))
def test_sql_and_memory_select_the_same_records(
    engine: Engine, text: str, records: list[dict[str, object]]
) -> None:
    parsed = _parse_or_invalid(text)
    if parsed is None:  # only NOT/- prefixes stacked past MAX_DEPTH can make a generated one fail
        return
    _both(engine, text, records)
    _both(engine, canonical(parsed), records)


def test_the_task_service_remembers_parsed_filters_but_not_mistakes() -> None:
    """Parsed task filters are shared between calls; a text that fails is refused every time."""
    text = 'status = TASK_STATUS_DONE AND labels:"home"'
    first = tasks._parse_filter(text)
    assert tasks._parse_filter(text) is first
    assert first == parse(text, tasks.TASK_FILTER_SCHEMA, "filter")
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="position"):
            tasks._parse_filter("status = ")

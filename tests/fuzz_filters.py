"""ListTasks filters for the fuzz: built from the documented grammar, and broken ones.

Documented filters follow ListTasksRequest.filter's comment only (fields, operators, values,
NOT / - / AND / OR / juxtaposition / parentheses, quoting) and stay inside its limits; each is
registered in `fuzz_lists.DOCUMENTED_FILTERS`, so the model requires the server to accept it.
Values come from the example's own tasks (their labels, titles, times, owners, assignees,
creators, parents and lists) so that filters select some tasks and not others. Broken filters
probe every documented limit and mistake; whether the server accepts those is its parser's word,
but never INTERNAL.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import timedelta, timezone

from hypothesis import strategies as st

from tests.fuzz_lists import DOCUMENTED_FILTERS
from tests.fuzz_rules import (
    FILTER_MAX_LENGTH,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    Pair,
    to_datetime,
)

_STATUSES = ("TASK_STATUS_TODO", "TASK_STATUS_IN_PROGRESS", "TASK_STATUS_DONE")
_PRIORITIES = (
    "TASK_PRIORITY_LOW",
    "TASK_PRIORITY_MEDIUM",
    "TASK_PRIORITY_HIGH",
    "TASK_PRIORITY_URGENT",
)
_ORDERED = ("=", "!=", "<", "<=", ">", ">=")
_TIME_FIELDS = ("due_time", "create_time", "update_time", "complete_time")
#: Integer fields: users (the owner, the assignee, the creator), the parent task, the list.
_ID_FIELDS = ("owner_id", "parent_id", "task_list_id", "assignee_id", "creator_id")


def quote(text: str) -> str:
    """A filter string literal, with the parser's escapes."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def rfc3339(value: Pair, offset_minutes: int = 0) -> str:
    """A timestamp with an offset (Z for UTC), microseconds kept."""
    moment = to_datetime(value)
    if offset_minutes:
        try:
            moment = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
        except (OverflowError, ValueError):
            offset_minutes = 0
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}"
    )
    if not offset_minutes:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


@st.composite
def _comparison(
    draw: st.DrawFn,
    labels: Sequence[str],
    titles: Sequence[str],
    times: Sequence[Pair],
    user_ids: Sequence[int],
    task_ids: Sequence[int],
    list_ids: Sequence[int],
) -> str:
    field = draw(
        st.sampled_from(["status", "priority", "labels", *_ID_FIELDS, "title", *_TIME_FIELDS])
    )
    if field == "status":
        return f"status {draw(st.sampled_from(['=', '!=']))} {draw(st.sampled_from(_STATUSES))}"
    if field == "priority":
        if draw(st.booleans()):
            return "priority:*"
        return f"priority {draw(st.sampled_from(['=', '!=']))} {draw(st.sampled_from(_PRIORITIES))}"
    if field == "labels":
        if not labels or draw(st.integers(0, 3)) == 0:
            return "labels:*"
        label = draw(st.sampled_from(list(labels)))
        label = draw(st.sampled_from([label, label.upper(), label.swapcase()]))
        return f"labels:{quote(label)}"
    if field == "assignee_id" and draw(st.integers(0, 3)) == 0:
        return "assignee_id:*"
    if field in _ID_FIELDS:
        pool = list(
            [0, *task_ids]
            if field == "parent_id"
            else [0, *list_ids]
            if field == "task_list_id"
            else [0, *user_ids]
        )
        value = draw(st.one_of(st.sampled_from(pool), st.sampled_from([-(2**63), 2**63 - 1, -1])))
        return f"{field} {draw(st.sampled_from(_ORDERED))} {value}"
    if field == "title":
        title = draw(st.sampled_from(list(titles))) if titles else "task"
        start = draw(st.integers(0, max(len(title) - 1, 0)))
        needle = title[start : start + draw(st.integers(1, 6))] or "a"
        needle = draw(st.sampled_from([needle, needle.upper(), "%", "_", "\\", "a%_\\b", '"']))
        if draw(st.booleans()):
            return f"title:{quote(needle)}"
        exact = draw(st.sampled_from([title, needle]))
        return f"title {draw(st.sampled_from(['=', '!=']))} {quote(exact)}"
    if draw(st.integers(0, 3)) == 0 and field in ("due_time", "complete_time"):
        return f"{field}:*"
    value = draw(st.sampled_from(list(times))) if times else (1_900_000_000, 0)
    shift = draw(st.sampled_from([0, 0, 1000, -1000]))  # a microsecond either side
    seconds, nanos = value[0], value[1] + shift
    if nanos < 0:
        seconds, nanos = seconds - 1, nanos + 1_000_000_000
    elif nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    if not TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS:
        seconds, nanos = value
    offset = draw(st.sampled_from([0, 0, 330, -480]))
    moment = rfc3339((seconds, nanos), offset)
    return f"{field} {draw(st.sampled_from(_ORDERED))} {quote(moment)}"


@st.composite
def _expression(draw: st.DrawFn, comparison: st.SearchStrategy[str], depth: int = 0) -> str:
    shape = draw(
        st.sampled_from(["cmp", "cmp", "and", "or", "juxtaposed", "not", "minus", "paren"])
    )
    if depth >= 3 or shape == "cmp":
        return draw(comparison)
    if shape == "not":
        return f"NOT {draw(_expression(comparison, depth + 1))}"
    if shape == "minus":
        return f"-{draw(_expression(comparison, depth + 1))}"
    if shape == "paren":
        return f"({draw(_expression(comparison, depth + 1))})"
    left = draw(_expression(comparison, depth + 1))
    right = draw(_expression(comparison, depth + 1))
    joiner = {"and": " AND ", "or": " OR ", "juxtaposed": " "}[shape]
    return f"{left}{joiner}{right}"


def _register(text: str) -> str:
    """Mark a grammar-built filter as one the server must accept.

    Not when it is too long, or when a quoted value holds a control character other than the
    escaped newline, return and tab (the comment does not say whether those may be quoted).
    """
    controls = any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in text)
    if len(text) <= FILTER_MAX_LENGTH and not controls:
        DOCUMENTED_FILTERS.add(text)
    return text


def documented_filters(
    labels: Sequence[str],
    titles: Sequence[str],
    times: Sequence[Pair],
    user_ids: Sequence[int],
    task_ids: Sequence[int],
    list_ids: Sequence[int] = (),
) -> st.SearchStrategy[str]:
    """Filters the comment documents as valid, registered as such."""
    comparison = _comparison(labels, titles, times, user_ids, task_ids, list_ids)
    return _expression(comparison).map(_register)


def broken_filters(documented: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mistakes of every documented kind, and filters at and past every limit."""
    limits = st.sampled_from(
        [
            " AND ".join(["status = TASK_STATUS_DONE"] * 50),
            " AND ".join(["status = TASK_STATUS_DONE"] * 51),
            "(" * 20 + "status = TASK_STATUS_DONE" + ")" * 20,
            "(" * 21 + "status = TASK_STATUS_DONE" + ")" * 21,
            "NOT " * 19 + "status = TASK_STATUS_DONE",
            "NOT " * 21 + "status = TASK_STATUS_DONE",
            "title = " + quote("x" * (FILTER_MAX_LENGTH - 10)),
            "title = " + quote("x" * (FILTER_MAX_LENGTH - 9)),
            "status = " + quote("x" * (FILTER_MAX_LENGTH - 11)),  # echoed in the error
            "owner_id = " + "9" * (FILTER_MAX_LENGTH - 11),
        ]
    )
    mistakes = st.sampled_from(
        [
            "status =",
            "status = TASK_STATUS_UNSPECIFIED",
            "priority = TASK_PRIORITY_UNSPECIFIED",
            "status < TASK_STATUS_DONE",
            "title < x",
            "owner_id = abc",
            "owner_id = 9223372036854775808",
            "owner_id = -9223372036854775809",
            "foo = 1",
            "status = task_status_done",
            "status = TASK_STATUS_DONE and priority:*",
            "due_time < 2030-01-01",
            'due_time < "2030-01-01T00:00:00"',
            'due_time < "2030-01-01T00:00:00.0000001Z"',
            'due_time < "0001-01-01T00:00:00+01:00"',
            'due_time < "9999-12-31T23:59:59-01:00"',
            'due_time < "2030-02-30T00:00:00Z"',
            "labels = home",
            "labels:home*",
            "title:*",
            "title = a:b",
            'title = "unterminated',
            "(status = TASK_STATUS_DONE",
            "status = TASK_STATUS_DONE)",
            "AND",
            "NOT",
            "-",
            "status = TASK_STATUS_DONE OR",
            "\x00",
            "status\x00= TASK_STATUS_DONE",
        ]
    )
    mutated = st.builds(
        lambda text, index, junk: text[:index] + junk + text[index + 1 :],
        documented,
        st.integers(0, 60),
        st.sampled_from(["", "(", ")", '"', "'", ":", "=", " OR ", "\\", "é", "*"]),
    )
    return st.one_of(limits, mistakes, mutated, st.text(max_size=20))

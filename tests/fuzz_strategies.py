"""Hypothesis strategies for every request message, built from the generated descriptors.

Each field gets values by its protobuf type (int64 extremes, unknown enum numbers, Timestamps out
of range, junk FieldMask paths, NUL, control characters and strings near and over the documented
limits), so a message or field added to the protos is fuzzed without a change here. Fields whose
name says what they hold (`id`, `owner_id`, `email`, `page_token`, `etag`, ...) draw from the
values the current example has met: ids of the caller's own tasks and of others', real page
tokens, current and stale etags.

Every field draws a good value (valid and meaningful) most of the time and a bad one otherwise,
so that a request with several fields still often gets past validation and reaches the rules and
the database; failures shrink towards the good values, leaving only the bad ones that matter.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from tests.fuzz_filters import broken_filters, documented_filters
from tests.fuzz_rules import (
    DESCRIPTION_MAX,
    EMAIL_MAX,
    GRANTABLE_PERMISSIONS,
    PASSWORD_MAX_BYTES,
    REQUEST_ID_MAX,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    TITLE_MAX,
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}
#: Fields that are output only (API conventions, and "Output only" in the proto comments).
OUTPUT_ONLY_FIELDS = frozenset(
    {
        "id",
        "owner_id",
        "create_time",
        "update_time",
        "etag",
        "position",
        "complete_time",
        "delete_time",
        "purge_time",
    }
)
#: Characters that break naive code: NUL, controls, separators, BOM, bidi override, combining,
#: a character whose lower case is longer, astral.
NASTY_CHARACTERS = "\x00\x01\x1f\x7f\t\n\r \u00a0\u2028\u200b\ufeff\u202e\u0301İ😀\U0010ffff"
NASTY_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\n\r\x0b\x0c",
    "\u3000",
    "\u202eevil",
    "e\u0301",
    "İ",
    "😀",
    "%s%n",
    "'; DROP TABLE tasks; --",
    "\\",
    "null",
)
#: Lengths around every documented string limit, and the server's own caps on page tokens
#: (1,024 characters) and authorization values (4,096).
_LIMITS = (TITLE_MAX, DESCRIPTION_MAX, REQUEST_ID_MAX, EMAIL_MAX, PASSWORD_MAX_BYTES, 1024, 4096)
#: Just over the server's 1 MiB message limit.
HUGE = 1024 * 1024 + 1

_T = TypeVar("_T")


def mostly(good: st.SearchStrategy[_T], bad: st.SearchStrategy[_T]) -> st.SearchStrategy[_T]:
    """`good` six times in seven, `bad` otherwise; shrinks towards `good`.

    (`one_of` cannot weight: it merges repeated branches.)
    """
    return _mostly(good, bad)


@st.composite
def _mostly(draw: st.DrawFn, good: st.SearchStrategy[_T], bad: st.SearchStrategy[_T]) -> _T:
    return draw(bad if draw(st.integers(0, 6)) == 6 else good)


def known(values: Sequence[_T], otherwise: st.SearchStrategy[_T]) -> st.SearchStrategy[_T]:
    """One of `values`, or `otherwise` when there are none yet."""
    return st.sampled_from(list(values)) if values else otherwise


def sized_text(limits: Sequence[int]) -> st.SearchStrategy[str]:
    """A repeated character padded with white space: lengths at and just past `limits`."""
    lengths = sorted({n for limit in limits for n in (limit - 1, limit, limit + 1)} | {0, 1, 2})
    return st.builds(
        lambda pad, unit, n: pad + unit * n + pad,
        st.sampled_from(["", " ", "\t\n", "\u3000"]),
        st.sampled_from(list("aé😀 \u0301İ\x00")),
        st.sampled_from(lengths),
    )


def nasty_text() -> st.SearchStrategy[str]:
    """Hostile characters, any Unicode, and lengths around every documented limit."""
    return st.one_of(
        st.sampled_from(NASTY_STRINGS),
        st.text(st.sampled_from(NASTY_CHARACTERS), max_size=6),
        st.text(max_size=12),
        sized_text(_LIMITS),
    )


def oversize_text() -> st.SearchStrategy[str]:
    """A string that alone makes a request larger than the server accepts (a slow call)."""
    return st.builds(lambda unit: unit * HUGE, st.sampled_from(["x", "é"]))


def plain_text(min_size: int = 0) -> st.SearchStrategy[str]:
    """Short text of letters and digits from any script."""
    return st.text(st.characters(categories=["L", "N"]), min_size=min_size, max_size=12)


@dataclass(frozen=True)
class Pools:
    """Values the current example has met, from the point of view of the call's caller."""

    caller_id: int | None
    own_task_ids: Sequence[int]
    task_ids: Sequence[int]
    gone_task_ids: Sequence[int]
    user_ids: Sequence[int]
    gone_user_ids: Sequence[int]
    emails: Sequence[str]
    passwords: Sequence[str]
    page_tokens: Sequence[str]
    etags: Sequence[str]
    stale_etags: Sequence[str]
    request_ids: Sequence[str]
    #: The caller's own password, for `current_password`.
    caller_password: str | None
    #: Current etag of each task, for an `etag` next to that task's `id`.
    etag_of: Mapping[int, str]
    #: Password of each user's (normalised) email, for a `password` next to that `email`.
    password_of: Mapping[str, str]
    #: List of each task; each list's live tasks; live tasks by (list, parent) sibling list.
    list_of: Mapping[int, int]
    live_of: Mapping[int, Sequence[int]]
    children: Mapping[tuple[int, int], Sequence[int]]
    #: Labels, titles and times the tasks hold, for filters that select some of them.
    labels: Sequence[str]
    titles: Sequence[str]
    times: Sequence[tuple[int, int]]
    #: The caller's tasks in the trash: what UndeleteTask is about.
    own_trashed_ids: Sequence[int] = ()
    #: Refresh tokens the server issued (live, retired or revoked), for `refresh_token`.
    refresh_tokens: Sequence[str] = ()
    #: API keys: the caller's own, and everyone's, for DeleteApiKey's `id`.
    own_api_key_ids: Sequence[int] = ()
    api_key_ids: Sequence[int] = ()
    #: Task lists: the caller's, every one the example met, the caller's personal list, and each
    #: list's members.
    own_list_ids: Sequence[int] = ()
    list_ids: Sequence[int] = ()
    personal_list: int | None = None
    members_of: Mapping[int, Sequence[int]] = dataclasses.field(default_factory=dict)
    #: Each list's current etag, for an `etag` next to that list's `id`.
    list_etag_of: Mapping[int, str] = dataclasses.field(default_factory=dict)


def ints(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    """The type's extremes and boundaries, or anything in range."""
    low, high = bounds
    candidates = {low, low + 1, -1, 0, 1, 2**31 - 1, 2**31, 2**32, high - 1, high}
    edges = sorted(v for v in candidates if low <= v <= high)
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def ids(
    bounds: tuple[int, int], mine: Sequence[int], live: Sequence[int], gone: Sequence[int]
) -> st.SearchStrategy[int]:
    """Mostly the caller's own ids, else anyone's that exist.

    Rarely: ids that are gone, the next id to be handed out, the type's extremes.
    """
    good = mostly(known(mine, known(live, ints(bounds))), known(live, ints(bounds)))
    after_last = [max([*live, *gone]) + 1] if live or gone else []
    return mostly(good, st.one_of(known([*gone, *after_last], ints(bounds)), ints(bounds)))


def page_sizes(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    """Tiny pages (so walks take several), the default; rarely the maximum, beyond, negatives."""
    low, high = bounds
    return mostly(
        st.sampled_from([1, 1, 2, 3, 0, 5]),
        st.one_of(st.sampled_from([1000, 1001, -1, low, high]), st.integers(low, high)),
    )


def titles() -> st.SearchStrategy[str]:
    """Ordinary titles, now and then long ones; rarely padded, empty, over-long or hostile."""
    long = st.builds(
        lambda unit, n: unit * n, st.sampled_from(list("aé😀İ")), st.sampled_from([120, 200])
    )
    return mostly(
        mostly(plain_text(min_size=1), long), st.one_of(sized_text([TITLE_MAX]), nasty_text())
    )


def descriptions() -> st.SearchStrategy[str]:
    """Empty and ordinary; rarely at and over 10,000 characters, hostile, or oversize."""
    return mostly(
        st.one_of(st.just(""), st.text(max_size=20)),
        mostly(st.one_of(sized_text([DESCRIPTION_MAX]), nasty_text()), oversize_text()),
    )


def emails(existing: Sequence[str]) -> st.SearchStrategy[str]:
    """Fresh and existing addresses (re-cased, padded); rarely long, Unicode or invalid ones."""
    variants = [*existing, *(f"  {e.upper()} " for e in existing)]
    long_domain = ".".join(["d" * 63, "d" * 63, "d" * 59]) + ".com"  # 189 characters
    fresh = st.builds("fuzz{}@example.com".format, st.integers(0, 2**20))
    good = st.one_of(fresh, known(variants, fresh))
    bad = st.one_of(
        st.builds(
            lambda local, domain: f"{local}@{domain}",
            st.sampled_from(["ü", "İ" * 30, "a" * 64, "a" * 65, "Ω.x", "a+b", "é" * 32]),
            st.sampled_from(["example.com", "exämple.COM", long_domain, long_domain + "x"]),
        ),
        st.sampled_from(
            [
                "",
                " ",
                "no-at-sign",
                "a@b",
                "@example.com",
                "a@@example.com",
                "a b@x.com",
                "a\x00@example.com",
                "a@example.com\x00",
                "a" * 255 + "@x.com",
            ]
        ),
        nasty_text(),
    )
    return mostly(good, bad)


def passwords(current: Sequence[str], preferred: str | None = None) -> st.SearchStrategy[str]:
    """The preferred password, current and fresh valid ones.

    Rarely: lengths around 8 characters and 72 bytes, NUL, a current password cut short.
    """
    fresh = ["another password", "a" * 8, "a" * 70 + "é", "😀" * 18]  # 8 chars to 72 bytes
    bad = st.one_of(
        st.sampled_from(
            [
                "a" * 7,
                "a" * 73,
                "a" * 71 + "é",  # 73 bytes
                "😀" * 2,  # 8 bytes, 2 characters
                "password\x00",
                "\x00" * 8,
                *(f"{p}\x00tail" for p in current),  # bcrypt would stop at the NUL
                *(p[:-1] for p in current),
            ]
        ),
        nasty_text(),
    )
    good = st.sampled_from([*current, *fresh])
    if preferred is not None:
        good = mostly(st.just(preferred), good)
    return mostly(good, bad)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def page_tokens(issued: Sequence[str]) -> st.SearchStrategy[str]:
    """None or real ones (as issued); rarely tampered with, forged bodies with random MACs, junk."""
    forged_body = st.builds(
        lambda scope, after: _b64(json.dumps({"s": scope, "a": after}).encode()),
        st.sampled_from([{"list": "users"}, {"list": "tasks"}, {}, None]),
        st.sampled_from([0, -1, 2**63, "1", None]),
    )
    bad = st.one_of(
        st.builds(lambda body, mac: f"{body}.{_b64(mac)}", forged_body, st.binary(min_size=16)),
        st.sampled_from(["", ".", "a.b", "a.b.c", "====.====", "x" * 1025, "é.é"]),
        nasty_text(),
    )
    if issued:
        tampered = st.builds(
            lambda token, index, char: token[:index] + char + token[index + 1 :],
            st.sampled_from(list(issued)),
            st.integers(0, 200),
            st.sampled_from(list("A_-.=\x00é")),
        )
        bad = st.one_of(tampered, bad)
    return mostly(st.one_of(st.just(""), known(issued, st.just(""))), bad)


def etags(
    current: Sequence[str],
    stale: Sequence[str],
    task_ids: Sequence[int],
    preferred: str | None = None,
) -> st.SearchStrategy[str]:
    """None (unconditional), the named task's current etag or another's.

    Rarely: stale, forged and junk ones.
    """
    forged = st.builds(
        lambda task_id, version: f'W/"{task_id}-{version}"',
        known(task_ids, st.just(0)),
        st.sampled_from([0, 1, 2, -1, 2**63]),
    )
    bad = st.one_of(known(stale, forged), forged, nasty_text())
    good = st.one_of(st.just(""), known([preferred] if preferred else current, st.just("")))
    return mostly(good, bad)


def request_ids(used: Sequence[str]) -> st.SearchStrategy[str]:
    """None, fresh keys and keys used before (by anyone); rarely at and over 128 characters."""
    good = st.one_of(
        st.just(""), st.builds("key-{}".format, st.integers(0, 5)), known(used, st.just(""))
    )
    return mostly(good, st.one_of(sized_text([REQUEST_ID_MAX]), nasty_text()))


def timestamps() -> st.SearchStrategy[tuple[int, int]]:
    """(seconds, nanos) in the valid range; rarely at its edges and outside it."""
    good = st.tuples(st.integers(0, 2**32), st.integers(0, 999_999_999))
    seconds = st.one_of(
        st.integers(TIMESTAMP_MIN_SECONDS, TIMESTAMP_MAX_SECONDS),
        st.sampled_from(
            [
                TIMESTAMP_MIN_SECONDS,
                TIMESTAMP_MAX_SECONDS,
                TIMESTAMP_MIN_SECONDS - 1,
                TIMESTAMP_MAX_SECONDS + 1,
                *INT64,
                -1,
            ]
        ),
    )
    nanos = st.sampled_from([0, 1, 999, 1000, 999_999_999, 10**9, -1, *INT32])
    return mostly(good, st.tuples(seconds, nanos))


def mask_paths(resource: Descriptor) -> st.SearchStrategy[list[str]]:
    """Some writable paths of the resource; rarely none, output-only, unknown or malformed ones."""
    names = [f.name for f in resource.fields]
    writable = [name for name in names if name not in OUTPUT_ONLY_FIELDS]
    junk = ["", "*", "TITLE", "title.x", f"{resource.name.lower()}.{writable[0]}", "x", "\x00"]
    return mostly(
        st.lists(st.sampled_from(writable), min_size=1, max_size=3),
        st.lists(st.sampled_from([*names, *junk]), max_size=4),
    )


#: Name of a string field -> its values, given the pools and the fields drawn before it in the
#: same message; other strings get `mostly(plain_text(), nasty_text())`.
def labels(known_labels: Sequence[str]) -> st.SearchStrategy[list[str]]:
    """A few labels (known ones re-cased, fresh ones); rarely bad ones, or 20 and more."""
    variants = [v for label in known_labels for v in (label, label.upper(), f" {label} ")]
    label = mostly(
        st.one_of(st.builds("label{}".format, st.integers(0, 9)), known(variants, plain_text(1))),
        st.one_of(
            st.sampled_from(
                ["", " ", "x" * 51, "é" * 50, "a\x01b", "\x00", "tab\there", "ß", "SS"]
            ),
            nasty_text(),
        ),
    )
    many = st.sampled_from(
        [
            [f"l{n}" for n in range(20)],
            [f"l{n}" for n in range(21)],
            [f"l{n}" for n in range(20)] + [f"L{n}" for n in range(20)],
        ]
    )
    return mostly(st.lists(label, max_size=4), many)


def batch_ids(pools: Pools) -> st.SearchStrategy[list[int]]:
    """A few ids, the caller's own mostly, repeats allowed; rarely bad ones or over 100."""
    one = ids(INT64, pools.own_task_ids, pools.task_ids, pools.gone_task_ids)
    own = pools.own_task_ids or pools.task_ids or [1]
    many = st.sampled_from([[own[0]] * 100, [own[0]] * 101, [0] * 101])
    return mostly(st.lists(one, max_size=5), many)


def permission_lists() -> st.SearchStrategy[list[int]]:
    """A few distinct grantable permissions, often none.

    Rarely a repeat, or UNSPECIFIED, PUBLIC or a number the enum lacks among them.
    """
    grantable = sorted(GRANTABLE_PERMISSIONS)
    some = st.lists(st.sampled_from(grantable), max_size=2)
    one_or_more = st.lists(st.sampled_from(grantable), min_size=1, max_size=3)
    not_one = st.sampled_from([0, 1, 0, 1, max(grantable) + 1, 99, -1, *INT32])
    bad = st.one_of(
        st.builds(lambda head, odd, tail: [*head, odd, *tail], some, not_one, some),
        st.builds(lambda head: [*head, head[0]], one_or_more),
    )
    return mostly(st.lists(st.sampled_from(grantable), max_size=4, unique=True), bad)


def filters(pools: Pools) -> st.SearchStrategy[str]:
    """None, or a documented filter over the example's tasks; rarely a broken one."""
    documented = documented_filters(
        pools.labels, pools.titles, pools.times, pools.user_ids, pools.task_ids, pools.list_ids
    )
    # Mostly none, so lists run long enough for page walks; a filter narrows them.
    return mostly(mostly(st.just(""), documented), broken_filters(documented))


def refresh_tokens(issued: Sequence[str]) -> st.SearchStrategy[str]:
    """A refresh token the server issued, mostly; else a tampered or made-up one, or junk."""
    tampered = [token[:-1] + ("A" if token[-1] != "A" else "B") for token in issued]
    bad = st.one_of(
        st.sampled_from(["", "tsr_", "tsr_0123456789abcdef_" + "A" * 43, "x" * 201]),
        nasty_text(),
        *([st.sampled_from(tampered)] if tampered else []),
    )
    return mostly(known(issued, bad), bad)


def orderings() -> st.SearchStrategy[str]:
    """The six documented orders, with and without " desc"; rarely a mistake."""
    words = ("create_time", "update_time", "due_time", "priority", "title", "position")
    good = st.sampled_from(["", *words, *(f"{w} desc" for w in words)])
    bad = st.sampled_from(
        [
            "id",
            "title asc",
            "title,due_time",
            "title, due_time desc",
            "TITLE",
            "title DESC",
            "create_time desc desc",
            " title",
            "title  desc",
            "\x00",
            "position desc ",
        ]
    )
    return mostly(good, st.one_of(bad, nasty_text()))


StringHint = Callable[[Pools, Mapping[str, object]], st.SearchStrategy[str]]
STRING_HINTS: dict[str, StringHint] = {
    "email": lambda pools, siblings: emails(pools.emails),
    "password": lambda pools, siblings: passwords(
        pools.passwords, pools.password_of.get(_normalised(siblings.get("email")))
    ),
    "current_password": lambda pools, siblings: passwords(pools.passwords, pools.caller_password),
    "new_password": lambda pools, siblings: passwords(pools.passwords),
    "title": lambda pools, siblings: titles(),
    "description": lambda pools, siblings: descriptions(),
    "page_token": lambda pools, siblings: page_tokens(pools.page_tokens),
    "etag": lambda pools, siblings: etags(
        pools.etags,
        pools.stale_etags,
        pools.task_ids,
        pools.etag_of.get(siblings.get("id", 0)),  # type: ignore[arg-type]
    ),
    "request_id": lambda pools, siblings: request_ids(pools.request_ids),
    "filter": lambda pools, siblings: filters(pools),
    "order_by": lambda pools, siblings: orderings(),
    "refresh_token": lambda pools, siblings: refresh_tokens(pools.refresh_tokens),
    "display_name": lambda pools, siblings: mostly(
        plain_text(min_size=1), st.one_of(sized_text([100]), nasty_text())
    ),
}
#: Name of a repeated field -> the whole list's values.
REPEATED_HINTS: dict[str, Callable[[Pools], st.SearchStrategy[list[Any]]]] = {
    "labels": lambda pools: labels(pools.labels),
    "ids": batch_ids,
    "permissions": lambda pools: permission_lists(),
}


def _normalised(email: object) -> str:
    return email.strip().lower() if isinstance(email, str) else ""


def resource_of(message: Descriptor, service_name: str) -> str:
    """Which resource an `id` in `message` names: the message's own, or the service's."""
    if message.name in {"Task", "User"}:
        return message.name.lower()
    return "task" if service_name.startswith("Task") else "user"


def message_strategy(
    message: Descriptor, pools: Pools, service_name: str
) -> st.SearchStrategy[Message]:
    """Any message of type `message`, field by field, by type and by name."""
    if message.full_name == "google.protobuf.Timestamp":
        return st.builds(_timestamp, st.just(GetMessageClass(message)), timestamps())
    return _message(message, pools, service_name)


def _timestamp(cls: type[Message], pair: tuple[int, int]) -> Message:
    return cls(seconds=pair[0], nanos=pair[1])  # type: ignore[call-arg]


@st.composite
def _message(draw: st.DrawFn, message: Descriptor, pools: Pools, service_name: str) -> Message:
    # One composite for every message type: Hypothesis inspects a composite's source each time
    # one is defined, which cost a millisecond per call when defined per message.
    instance = GetMessageClass(message)()
    siblings: dict[str, object] = {}
    chosen: dict[str, str | None] = {}
    for oneof in message.oneofs:  # proto3 `optional` fields are oneofs of one field
        chosen[oneof.name] = draw(st.sampled_from([None, *(f.name for f in oneof.fields)]))
    for field_descriptor in message.fields:
        oneof = field_descriptor.containing_oneof
        if oneof is not None and chosen[oneof.name] != field_descriptor.name:
            continue
        values = _field_values(field_descriptor, message, pools, service_name, siblings)
        if field_descriptor.is_repeated and field_descriptor.name in REPEATED_HINTS:
            getattr(instance, field_descriptor.name).extend(
                draw(REPEATED_HINTS[field_descriptor.name](pools))
            )
        elif field_descriptor.is_repeated:
            getattr(instance, field_descriptor.name).extend(draw(st.lists(values, max_size=3)))
        elif field_descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            if draw(mostly(st.just(True), st.just(False))):
                getattr(instance, field_descriptor.name).CopyFrom(draw(values))
        else:
            value = draw(values)
            setattr(instance, field_descriptor.name, value)
            siblings[field_descriptor.name] = value
    if message.name == "AddTaskListMemberRequest" and draw(mostly(st.just(True), st.just(False))):
        # One of `member.user_id` and `email`, as the comment asks, most of the time.
        if instance.member.user_id:  # type: ignore[attr-defined]
            instance.email = ""  # type: ignore[attr-defined]
        elif not instance.email:  # type: ignore[attr-defined]
            instance.email = draw(emails(pools.emails))  # type: ignore[attr-defined]
    return instance


def _field_values(
    field_descriptor: FieldDescriptor,
    parent: Descriptor,
    pools: Pools,
    service_name: str,
    siblings: Mapping[str, object],
) -> st.SearchStrategy[object]:
    kind = field_descriptor.type
    name = field_descriptor.name
    if kind == FieldDescriptor.TYPE_MESSAGE:
        if field_descriptor.message_type.full_name == "google.protobuf.FieldMask":
            resource = next(
                f.message_type
                for f in parent.fields
                if f.type == FieldDescriptor.TYPE_MESSAGE and f is not field_descriptor
            )
            cls = GetMessageClass(field_descriptor.message_type)
            return st.builds(lambda paths: cls(paths=paths), mask_paths(resource))
        return message_strategy(field_descriptor.message_type, pools, service_name)
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [value.number for value in field_descriptor.enum_type.values]
        unknown = [max(numbers) + 1, 99, -1, *INT32]
        named_values = st.sampled_from([n for n in numbers if n] or numbers)
        if field_descriptor.enum_type.name == "TaskListRole":
            # A role is required wherever it is asked for: unset is a mistake, drawn rarely.
            return mostly(named_values, st.sampled_from([0, *unknown]))
        if parent.name.endswith("Request"):
            # On a request (a list's filter), unset means "any": the common, meaningful value.
            return mostly(mostly(st.just(0), named_values), st.sampled_from(unknown))
        # On a resource, zero means "unspecified": valid in some places only, so less often.
        return mostly(mostly(named_values, st.just(0)), st.sampled_from(unknown))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in _INT_RANGES:
        return _int_values(name, _INT_RANGES[kind], parent, pools, service_name, siblings)
    if (
        kind == FieldDescriptor.TYPE_STRING
        and name == "etag"
        and (service_name == "TaskListService" or parent.name == "TaskList")
    ):
        current = list(pools.list_etag_of.values())
        return etags(current, [], [], pools.list_etag_of.get(siblings.get("id", 0)))  # type: ignore[arg-type]
    if kind == FieldDescriptor.TYPE_STRING:
        hint = STRING_HINTS.get(name)
        return hint(pools, siblings) if hint is not None else mostly(plain_text(), nasty_text())
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind in {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}:
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    raise AssertionError(f"no strategy for {field_descriptor.full_name} (type {kind})")


def _int_values(
    name: str,
    bounds: tuple[int, int],
    parent: Descriptor,
    pools: Pools,
    service_name: str,
    siblings: Mapping[str, object],
) -> st.SearchStrategy[int]:
    if name == "page_size":
        return page_sizes(bounds)
    if name == "start_revision":
        # Mostly from now (0) or a recent revision, so that streams open; sometimes anything.
        return mostly(st.integers(0, 20), ints(bounds))
    me = [pools.caller_id] if pools.caller_id is not None else []
    if name == "task_list_id" and parent.name == "Task":
        # 0 (the personal list, or the parent's) as often as a list.
        return st.one_of(st.just(0), list_ids(bounds, pools))
    if name == "task_list_id" or (
        name == "id" and (service_name == "TaskListService" or parent.name == "TaskList")
    ):
        return list_ids(bounds, pools)
    if name == "user_id" and parent.name in {
        "UpdateTaskListMemberRequest",
        "RemoveTaskListMemberRequest",
    }:
        members = pools.members_of.get(siblings.get("task_list_id", 0), ())  # type: ignore[call-overload]
        return ids(bounds, members, pools.user_ids, pools.gone_user_ids)
    if name in {"assignee_id", "member_id"}:
        return st.one_of(st.just(0), ids(bounds, me, pools.user_ids, pools.gone_user_ids))
    if name == "id" and parent.name == "DeleteApiKeyRequest":
        return ids(bounds, pools.own_api_key_ids, pools.api_key_ids, ())
    if name == "id" and parent.name.startswith("Undelete"):
        return ids(bounds, pools.own_trashed_ids, pools.task_ids, pools.gone_task_ids)
    if name == "id" and resource_of(parent, service_name) == "task":
        return ids(bounds, pools.own_task_ids, pools.task_ids, pools.gone_task_ids)
    if name == "id":
        return ids(bounds, me, pools.user_ids, pools.gone_user_ids)
    if name in {"owner_id", "user_id"}:
        # 0 means "the caller" where an owner may be left unset.
        return st.one_of(st.just(0), ids(bounds, me, pools.user_ids, pools.gone_user_ids))
    if name in {"parent_id", "previous_id"}:
        return _tree_ids(name, bounds, pools, siblings)
    return ints(bounds)


def list_ids(bounds: tuple[int, int], pools: Pools) -> st.SearchStrategy[int]:
    """Mostly the caller's lists, else any the example met; rarely an id naming no list.

    Never an id the model has not met: a personal list of a user the model has not yet seen
    one of would be a list it cannot tell about.
    """
    low, high = bounds
    missing = st.one_of(
        st.just(0), st.integers(max(low, -5), -1), st.integers(2**40, min(high, 2**62))
    )
    good = mostly(
        known(pools.own_list_ids, known(pools.list_ids, missing)), known(pools.list_ids, missing)
    )
    return mostly(good, missing)


def _tree_ids(
    name: str, bounds: tuple[int, int], pools: Pools, siblings: Mapping[str, object]
) -> st.SearchStrategy[int]:
    """A parent among the owner's live tasks, or a sibling of the destination list; 0 often.

    The list is the one named (MoveTask's destination, CreateTask's list), else the named
    task's, else the caller's personal list; the destination sibling list is the one under the
    `parent_id` drawn just before.
    """
    task_id = siblings.get("id", 0)
    where = (
        siblings.get("task_list_id")
        or pools.list_of.get(task_id)  # type: ignore[call-overload]
        or pools.personal_list
    )
    if name == "parent_id":
        good: Sequence[int] = pools.live_of.get(where, ())  # type: ignore[arg-type]
    else:
        good = pools.children.get((where, siblings.get("parent_id", 0)), ())  # type: ignore[arg-type]
    return st.one_of(
        st.just(0),
        ids(bounds, [t for t in good if t != task_id], pools.task_ids, pools.gone_task_ids),
    )

"""ListTasks' `filter` and `order_by` over gRPC, on both databases.

Every field and operator, errors naming their field and position, tokens bound to filter and
order, every ordering's exact order, and keyset page walks that stay exact while tasks are added.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from taskservice.security.tokens import TokenCodec
from taskservice.server import Application
from taskservice.services.pagination import PageKey, PageTokens
from taskservice.v1 import task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, make_admin, register

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TODO, IN_PROGRESS, DONE = (
    task_pb2.TASK_STATUS_TODO,
    task_pb2.TASK_STATUS_IN_PROGRESS,
    task_pb2.TASK_STATUS_DONE,
)
NONE, LOW, MEDIUM, HIGH, URGENT = range(5)
#: More pages than any list here needs: a walk past this is looping, and fails instead of hanging.
MAX_PAGES = 50


def at(year: int, month: int = 1, day: int = 1, hour: int = 0) -> Timestamp:
    return Timestamp(seconds=int(datetime(year, month, day, hour, tzinfo=UTC).timestamp()))


@pytest.fixture
async def alice(stubs: Stubs) -> Account:
    return await register(stubs)


@pytest.fixture
async def bob(stubs: Stubs) -> Account:
    return await register(stubs)


async def create(stubs: Stubs, who: Account, title: str, **fields: object) -> task_pb2.Task:
    response = await stubs.tasks.CreateTask(
        pb.CreateTaskRequest(task=task_pb2.Task(title=title, **fields)), metadata=who.metadata
    )
    return response.task


async def list_all(
    stubs: Stubs, who: Account, page_size: int = 0, **request: object
) -> list[task_pb2.Task]:
    tasks: list[task_pb2.Task] = []
    token = ""
    for _ in range(MAX_PAGES):
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_size=page_size, page_token=token, **request),
            metadata=who.metadata,
        )
        tasks.extend(page.tasks)
        token = page.next_page_token
        if not token:
            return tasks
    pytest.fail(f"no last page after {MAX_PAGES} pages: the tokens go round in circles")


async def titles(stubs: Stubs, who: Account, filter_: str, **request: object) -> set[str]:
    return {task.title for task in await list_all(stubs, who, filter=filter_, **request)}


# --- filter -----------------------------------------------------------------------------------

ALPHA, BETA, GAMMA, DELTA, EPSILON = (
    "alpha report",
    "beta",
    "gamma 100% done_x",
    "delta Report",
    ("epsilon 100x doneyx"),
)
EVERY = {ALPHA, BETA, GAMMA, DELTA, EPSILON}

#: (filter, the titles of alice's tasks it selects)
FILTER_CASES: list[tuple[str, set[str]]] = [
    ("", EVERY),
    ("status = TASK_STATUS_DONE", {GAMMA}),
    ("status != TASK_STATUS_TODO", {BETA, GAMMA}),
    ("status = TASK_STATUS_IN_PROGRESS", {BETA}),
    ("priority = TASK_PRIORITY_HIGH", {ALPHA}),
    ("priority = TASK_PRIORITY_MEDIUM", set()),
    # Unset (no priority) never matches a comparison, not even !=.
    ("priority != TASK_PRIORITY_HIGH", {BETA, DELTA}),
    ("priority:*", {ALPHA, BETA, DELTA}),
    ("NOT priority:*", {GAMMA, EPSILON}),
    ("NOT priority = TASK_PRIORITY_HIGH", {BETA, GAMMA, DELTA, EPSILON}),
    ('labels:"home"', {ALPHA}),
    ('labels:"HOME"', {ALPHA}),
    ("labels:Urgent", {ALPHA}),
    ('labels:"STRASSE"', {DELTA}),
    ('labels:"straße"', {DELTA}),
    ('labels:"hom"', set()),
    ("labels:*", {ALPHA, BETA, DELTA}),
    ("-labels:*", {GAMMA, EPSILON}),
    ('title:"REPORT"', {ALPHA, DELTA}),
    ("title:report", {ALPHA, DELTA}),
    ('title = "beta"', {BETA}),
    ('title = "Beta"', set()),
    ('title != "beta"', EVERY - {BETA}),
    # % and _ are literal characters, not LIKE wildcards.
    ('title:"100%"', {GAMMA}),
    ('title:"e_x"', {GAMMA}),
    ('title:"%"', {GAMMA}),
    ('due_time < "2030-03-01T00:00:00Z"', {ALPHA}),
    ('due_time >= "2030-03-01T00:00:00Z"', {BETA, DELTA}),
    ('due_time > "2030-06-01T00:00:00Z"', {DELTA}),
    ('due_time <= "2030-06-01T00:00:00Z"', {ALPHA, BETA}),
    ('due_time = "2030-01-01T01:00:00+01:00"', {ALPHA}),
    ('due_time != "2030-01-01T00:00:00Z"', {BETA, DELTA}),
    ('NOT due_time < "2030-03-01T00:00:00Z"', {BETA, DELTA, GAMMA, EPSILON}),
    ("due_time:*", {ALPHA, BETA, DELTA}),
    ("NOT due_time:*", {GAMMA, EPSILON}),
    ("complete_time:*", {GAMMA}),
    ('complete_time > "2000-01-01T00:00:00Z"', {GAMMA}),
    ('complete_time < "2000-01-01T00:00:00Z"', set()),
    ('NOT complete_time < "2000-01-01T00:00:00Z"', EVERY),
    ('create_time > "2000-01-01T00:00:00Z"', EVERY),
    ('create_time < "2000-01-01T00:00:00Z"', set()),
    ('update_time <= "2100-01-01T00:00:00Z"', EVERY),
    ('update_time > "2100-01-01T00:00:00Z"', set()),
    # AIP-160: OR binds tighter than AND, so this is (DONE OR HIGH) AND home.
    ('status = TASK_STATUS_DONE OR priority = TASK_PRIORITY_HIGH AND labels:"home"', {ALPHA}),
    ('(status = TASK_STATUS_DONE OR priority = TASK_PRIORITY_HIGH) AND labels:"home"', {ALPHA}),
    (
        'status = TASK_STATUS_DONE OR (priority = TASK_PRIORITY_HIGH AND labels:"home")',
        {ALPHA, GAMMA},
    ),
    ('labels:"home" status = TASK_STATUS_DONE OR priority = TASK_PRIORITY_HIGH', {ALPHA}),
    ("title:report labels:urgent", {ALPHA}),
    ("title:report AND NOT labels:urgent", {DELTA}),
    ("NOT (status = TASK_STATUS_TODO OR status = TASK_STATUS_DONE)", {BETA}),
]


@pytest.fixture
async def catalogue(stubs: Stubs, alice: Account, bob: Account) -> None:
    """Alice's five tasks, and one of Bob's that matches most filters and must never show."""
    await create(stubs, alice, ALPHA, priority=HIGH, labels=["Home", "Urgent"], due_time=at(2030))
    await create(
        stubs, alice, BETA, status=IN_PROGRESS, priority=LOW, labels=["work"],
        due_time=at(2030, 6),
    )  # fmt: skip
    await create(stubs, alice, GAMMA, status=DONE)
    await create(stubs, alice, DELTA, priority=URGENT, labels=["Straße"], due_time=at(2031))
    await create(stubs, alice, EPSILON)
    await create(
        stubs, bob, ALPHA, status=DONE, priority=HIGH, labels=["home", "urgent", "work"],
        due_time=at(2030),
    )  # fmt: skip


@pytest.mark.usefixtures("catalogue")
async def test_every_filter_field_and_operator(stubs: Stubs, alice: Account) -> None:
    for filter_, expected in FILTER_CASES:
        assert await titles(stubs, alice, filter_) == expected, filter_


@pytest.mark.usefixtures("catalogue")
async def test_filter_combines_with_status_and_owner_by_and(
    stubs: Stubs, alice: Account, bob: Account
) -> None:
    assert await titles(stubs, alice, "priority:*", status=TODO) == {ALPHA, DELTA}
    assert await titles(stubs, alice, "priority:*", status=DONE) == set()
    assert await titles(stubs, alice, "labels:*", owner_id=alice.user.id) == {ALPHA, BETA, DELTA}


@pytest.mark.usefixtures("catalogue")
async def test_owner_id_filter_never_widens_a_users_list(
    app: Application, stubs: Stubs, alice: Account, bob: Account
) -> None:
    assert await titles(stubs, alice, f"owner_id = {alice.user.id}") == EVERY
    assert await titles(stubs, alice, f"owner_id = {bob.user.id}") == set()
    assert await titles(stubs, alice, f"owner_id != {alice.user.id}") == set()
    admin = await make_admin(app, stubs)
    assert await titles(stubs, admin, f"owner_id = {bob.user.id}") == {ALPHA}
    both = f"owner_id >= {min(alice.user.id, bob.user.id)} AND labels:work"
    assert [t.owner_id for t in await list_all(stubs, admin, filter=both)] == [
        bob.user.id,
        alice.user.id,
    ]


@pytest.mark.usefixtures("catalogue")
async def test_a_view_built_for_one_user_serves_another_only_their_tasks(
    stubs: Stubs, alice: Account, bob: Account
) -> None:
    """The same filter and order (one statement, built once and kept) binds each caller's id."""
    for order_by in ("", "due_time", "title desc"):
        for page_size in (1, 50):
            request = {"filter": 'labels:"home"', "order_by": order_by, "page_size": page_size}
            mine = await list_all(stubs, alice, **request)
            theirs = await list_all(stubs, bob, **request)
            assert [(t.title, t.owner_id) for t in mine] == [(ALPHA, alice.user.id)]
            assert [(t.title, t.owner_id) for t in theirs] == [(ALPHA, bob.user.id)]


async def test_a_label_view_pages_the_owners_labelled_tasks_in_id_order(
    stubs: Stubs, alice: Account, bob: Account
) -> None:
    """A user's list needing a label reads that user's keys of it (task_lists.with_owner_label).

    Relabelled and trashed tasks leave it, another owner's tasks never join it, and every id
    ordering pages through it exactly, alone or with more of the filter beside the label.
    """
    label_sets = [["Home"], ["work", "HOME"], [], ["home"], ["x"], ["Home", "y"]]
    mine = [
        await create(stubs, alice, f"t{n}", labels=labels)
        for n, labels in enumerate(label_sets * 2)
    ]
    for _ in range(3):
        await create(stubs, bob, "theirs", labels=["home"])
    relabelled, trashed = mine[0], mine[3]
    await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(
            task=task_pb2.Task(id=relabelled.id, labels=["work"]), update_mask={"paths": ["labels"]}
        ),
        metadata=alice.metadata,
    )
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=trashed.id), metadata=alice.metadata)
    home = [t.id for t in mine if "home" in {label.casefold() for label in t.labels}]
    live = [task_id for task_id in home if task_id not in (relabelled.id, trashed.id)]
    for order_by, descending in (("", True), ("create_time", False), ("create_time desc", True)):
        for page_size in (1, 4, 50):
            request = {"order_by": order_by, "page_size": page_size}
            listed = await list_all(stubs, alice, filter='labels:"home"', **request)
            assert [t.id for t in listed] == sorted(live, reverse=descending), request
            everything = await list_all(
                stubs, alice, filter='labels:"home"', show_deleted=True, **request
            )
            with_trash = [task_id for task_id in home if task_id != relabelled.id]
            assert [t.id for t in everything] == sorted(with_trash, reverse=descending), request
            titled = await list_all(stubs, alice, filter='title:t1 AND labels:"home"', **request)
            assert [t.title for t in titled] == ["t11", "t1"][:: 1 if descending else -1]


async def test_filter_errors_name_the_field_and_the_position(stubs: Stubs, alice: Account) -> None:
    await create(stubs, alice, "kept")
    cases = {
        "nope = 1": "position 1",
        "title:": "position 7",
        "status = TASK_STATUS_BOGUS": "position 10",
        "priority = TASK_PRIORITY_UNSPECIFIED": "position 12",
        "priority < TASK_PRIORITY_HIGH": "position 10",
        'due_time < "tomorrow"': "position 12",
        "(title:a": "position 9",
        "status = TASK_STATUS_DONE OR": "position 29",
        "x" * 2001: "position",
    }
    for filter_, position in cases.items():
        failure = await fails(
            stubs.tasks.ListTasks(pb.ListTasksRequest(filter=filter_), metadata=alice.metadata),
            INVALID,
        )
        assert set(failure.fields) == {"filter"}, filter_
        assert failure.fields["filter"].startswith(position), (filter_, failure.fields)
        assert failure.reason == "FILTER_INVALID"
    assert [t.title for t in await list_all(stubs, alice)] == ["kept"]


async def test_order_by_errors_name_the_field(stubs: Stubs, alice: Account) -> None:
    for order_by in (
        "id",
        "status",
        "create_time asc",
        "title DESC",
        "Title",
        "title,due_time",
        "title, due_time desc",
        "due_time desc desc",
        "description",
    ):
        failure = await fails(
            stubs.tasks.ListTasks(pb.ListTasksRequest(order_by=order_by), metadata=alice.metadata),
            INVALID,
        )
        assert set(failure.fields) == {"order_by"}, order_by
        assert "create_time, update_time, due_time, priority, title" in failure.fields["order_by"]


async def test_page_tokens_are_bound_to_filter_and_order_by(stubs: Stubs, alice: Account) -> None:
    for number in range(3):
        await create(stubs, alice, f"t{number}", priority=HIGH)

    async def token(**request: object) -> str:
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_size=1, **request), metadata=alice.metadata
        )
        assert page.next_page_token
        return page.next_page_token

    filtered = await token(filter="priority = TASK_PRIORITY_HIGH")
    ordered = await token(order_by="title")
    default = await token()
    misuses = [
        (filtered, {"filter": "priority:*"}),
        (filtered, {}),
        (filtered, {"filter": "priority = TASK_PRIORITY_HIGH", "order_by": "title"}),
        (ordered, {"order_by": "title desc"}),
        (ordered, {"order_by": "due_time"}),
        (ordered, {}),
        (default, {"order_by": "title"}),
        (default, {"filter": "priority:*"}),
    ]
    for page_token, request in misuses:
        failure = await fails(
            stubs.tasks.ListTasks(
                pb.ListTasksRequest(page_token=page_token, **request), metadata=alice.metadata
            ),
            INVALID,
        )
        assert set(failure.fields) == {"page_token"}, request
    # The same filter spelled differently, and the default order spelled out, keep the token.
    for page_token, request in [
        (filtered, {"filter": "priority=TASK_PRIORITY_HIGH"}),
        (default, {"order_by": "create_time desc"}),
        (ordered, {"order_by": " title "}),
    ]:
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_token=page_token, **request), metadata=alice.metadata
        )
        assert len(page.tasks) == 2


async def test_sealed_tokens_of_the_wrong_shape_are_invalid_not_internal(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    """A genuine MAC on a key this version cannot read (say, from another release) is refused."""
    await make_tasks(stubs, alice, 3)
    seal = PageTokens(TokenCodec.from_settings(app.settings).derive_key(b"page-tokens")).seal
    me = alice.user.id
    scope = {"list": "tasks", "caller": me, "status": None, "owner": me}
    cases: list[tuple[str, PageKey]] = [
        ("", [5]),
        ("due_time", 5),
        ("due_time", [0, "soon", 1]),
        ("due_time", [2, 0, 1]),
        ("due_time", [0, 10**30, 1]),
        ("due_time", [1, None, "1"]),
        ("due_time", [0, 1]),
        ("title", [0, 5, 1]),
        ("priority", [0, "high", 1]),
        ("create_time", [1, None, 1]),
        ("title", [1, None, 1]),
    ]
    for order_by, after in cases:
        token = seal({**scope, "order_by": order_by} if order_by else scope, after)
        failure = await fails(
            stubs.tasks.ListTasks(
                pb.ListTasksRequest(page_token=token, order_by=order_by), metadata=alice.metadata
            ),
            INVALID,
        )
        assert set(failure.fields) == {"page_token"}, (order_by, after)


# --- order_by ---------------------------------------------------------------------------------

SortValue = tuple[int, int] | str | int | None


def _time(stamp: Timestamp) -> tuple[int, int]:
    return (stamp.seconds, stamp.nanos)


#: Each ordering's key as the API defines it: None for "missing" (sorted last in both directions).
KEYS: dict[str, Callable[[task_pb2.Task], SortValue]] = {
    "create_time": lambda task: _time(task.create_time),
    "update_time": lambda task: _time(task.update_time),
    "due_time": lambda task: _time(task.due_time) if task.HasField("due_time") else None,
    "priority": lambda task: task.priority or None,
    "title": lambda task: task.title,
    # Fixed-width strings that sort as the positions do; all these tasks are top-level siblings.
    "position": lambda task: task.position,
}
ORDERINGS = [(name, descending) for name in KEYS for descending in (False, True)]


def expected_order(tasks: list[task_pb2.Task], name: str, descending: bool) -> list[task_pb2.Task]:
    """The API's order: by value then id in the asked direction, tasks without a value last."""
    key = KEYS[name]
    present = [task for task in tasks if key(task) is not None]
    missing = [task for task in tasks if key(task) is None]
    present.sort(key=lambda task: (key(task), task.id), reverse=descending)
    missing.sort(key=lambda task: task.id, reverse=descending)
    return present + missing


def order_text(name: str, descending: bool) -> str:
    return f"{name} desc" if descending else name


#: Titles that sort alike in every collation (lower-case ASCII letters only), repeated for ties.
TITLES = ["kiwi", "apple", "mango", "apple", "fig", "banana", "kiwi", "cherry", "fig", "date"]
PRIORITIES = [HIGH, NONE, LOW, HIGH, URGENT, NONE, LOW, MEDIUM, HIGH, NONE]
DUES = [at(2031), None, at(2030), at(2031), None, at(2029), at(2030), None, at(2032), at(2030)]


async def make_tasks(stubs: Stubs, who: Account, count: int, offset: int = 0) -> None:
    for number in range(offset, offset + count):
        due = DUES[number % len(DUES)]
        await create(
            stubs,
            who,
            TITLES[number % len(TITLES)],
            priority=PRIORITIES[number % len(PRIORITIES)],
            **({"due_time": due} if due is not None else {}),
        )


async def test_every_ordering_is_exact_with_ties_by_id_and_missing_values_last(
    stubs: Stubs, alice: Account, bob: Account
) -> None:
    await make_tasks(stubs, alice, 10)
    await make_tasks(stubs, bob, 2)
    everything = await list_all(stubs, alice)
    # Touch some tasks out of creation order so update_time differs from create_time's order.
    for task in (everything[7], everything[2], everything[5]):
        await stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=task.id, description="touched"),
                update_mask={"paths": ["description"]},
            ),
            metadata=alice.metadata,
        )
    everything = await list_all(stubs, alice)
    assert [t.id for t in everything] == sorted((t.id for t in everything), reverse=True)
    for name, descending in ORDERINGS:
        expected = [t.id for t in expected_order(everything, name, descending)]
        for page_size in (0, 3):
            listed = await list_all(
                stubs, alice, page_size=page_size, order_by=order_text(name, descending)
            )
            assert [t.id for t in listed] == expected, (name, descending, page_size)
    # Filters and orderings combine, pages and all.
    listed = await list_all(
        stubs, alice, page_size=2, order_by="due_time desc", filter="priority:*"
    )
    assert [t.id for t in listed] == [
        t.id for t in expected_order(everything, "due_time", True) if t.priority
    ]


@pytest.mark.parametrize("name", list(KEYS))
async def test_page_walks_return_every_earlier_task_once_in_order_during_inserts(
    stubs: Stubs, alice: Account, name: str
) -> None:
    await make_tasks(stubs, alice, 10)
    counter = itertools.count(10)
    for descending in (False, True):
        existing = {task.id for task in await list_all(stubs, alice)}
        page_read, inserted = asyncio.Event(), asyncio.Event()

        async def insert(page_read: asyncio.Event, inserted: asyncio.Event) -> None:
            # Another coroutine, taking turns with the walk so that every page boundary sees new
            # tasks (values spread over the whole order), a bounded number so the walk ends.
            for _ in range(INSERTS_PER_WALK):
                await page_read.wait()
                page_read.clear()
                await make_tasks(stubs, alice, 1, next(counter))
                inserted.set()

        inserter = asyncio.create_task(insert(page_read, inserted))
        walked: list[task_pb2.Task] = []
        token = ""
        for _ in range(MAX_PAGES):
            page = await stubs.tasks.ListTasks(
                pb.ListTasksRequest(
                    page_size=3, page_token=token, order_by=order_text(name, descending)
                ),
                metadata=alice.metadata,
            )
            walked.extend(page.tasks)
            token = page.next_page_token
            if not token:
                break
            if not inserter.done():
                page_read.set()
                await inserted.wait()
                inserted.clear()
        else:
            pytest.fail(f"no last page after {MAX_PAGES} pages: the tokens go round in circles")
        inserter.cancel()
        ids = [task.id for task in walked]
        assert len(ids) == len(set(ids)), "no task is returned twice"
        assert existing <= set(ids), "every task that existed when the walk began is returned"
        assert ids == [t.id for t in expected_order(walked, name, descending)], "and in order"


#: Tasks the concurrent coroutine adds during one walk, one per page boundary.
INSERTS_PER_WALK = 4

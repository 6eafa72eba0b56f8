"""Fuzz every RPC over the real server, on SQLite and on PostgreSQL.

Each Hypothesis example starts from empty tables with an admin, three regular users, a service
account, a few tasks (one a subtask) and a list Alice shares (Bob an EDITOR, Carol and the
service account VIEWERs, a task of Bob's assigned to Alice), then makes a sequence of calls to
methods drawn from every service in the generated descriptors, as callers drawn from those users,
users it registers, API keys, revoked tokens, anonymous callers and forged tokens; now and then
it goes on with a page walk it began.
Requests are type-valid but extreme (tests/fuzz_strategies.py, tests/fuzz_filters.py); the
model (tests/fuzz_model.py, fuzz_tasks.py, fuzz_lists.py, fuzz_shared.py) knows every list's
members and roles and says which answers the proto comments allow each caller. A call fails the
run when it gets INTERNAL, UNKNOWN or any code the model does not allow, when an
INVALID_ARGUMENT names a field the model finds fine or leaves out one it finds bad, or when an
OK answer disagrees with the model; side effects no answer shows (a trashed subtree, renumbered
siblings, tasks unassigned or handed to a list's next owner) are read back and may change
nothing else. After the calls every row in the database (users, tasks, lists and their members)
must agree with the last OK answer about it: failed calls wrote nothing.

`make test` runs a small fixed budget, derandomized, so CI is deterministic. `make fuzz` runs
FUZZ_EXAMPLES examples from a random FUZZ_SEED it prints; `make fuzz FUZZ_SEED=<seed>` repeats one.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import bcrypt
import grpc
import jwt
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, text

import taskservice.v1
from taskservice.api.convert import USER_KINDS, permission_numbers, task_to_proto
from taskservice.config import Settings
from taskservice.db.models import (
    ApiKey,
    AuditEvent,
    RefreshToken,
    Task,
    TaskCreateRequest,
    TaskLabel,
    TaskList,
    TaskListMember,
    ThrottleCounter,
    User,
)
from taskservice.server import Application, build_server
from taskservice.services.users import NO_PASSWORD
from taskservice.v1 import (
    api_key_service_pb2,
    permissions_pb2,
    task_list_pb2,
    task_list_service_pb2,
    task_pb2,
    task_service_pb2,
    user_service_pb2,
)
from tests.conftest import Stubs
from tests.fuzz_model import Model
from tests.fuzz_rules import (
    EXHAUSTED,
    INVALID,
    NOT_FOUND,
    OK,
    TASK_WIRE_FIELDS,
    ContractViolation,
    Credential,
    Expect,
    Resync,
    wire_task,
)
from tests.fuzz_strategies import INT32, Pools, known, message_strategy, mostly, page_sizes
from tests.fuzz_tasks import names_id
from tests.helpers import PASSWORD, make_admin, register

#: Examples per database in `make test`: 10-20 s each on two busy cores. The derandomized draw
#: of these 50 makes about 1,270 calls per database (the run's cost is its calls, at about 11 ms
#: each with their drawing, and 0.15 s per example's reset).
CI_EXAMPLES = 50
#: Fewest and most calls in one example.
MIN_CALLS, MAX_CALLS = 5, 30
#: No call may take this long; a hang fails the run instead of stalling CI.
CALL_TIMEOUT_SECONDS = 60.0
#: Codes that are never a right answer to any request.
NEVER = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
#: Methods drawn more often than others: they make the rows the rest work on.
WEIGHTS = {"CreateTask": 3, "Register": 2, "AddTaskListMember": 2}
#: Tasks every example starts with: (owner's index among admin, alice, bob; title; parent's
#: index in this list or None). Alice's second task is a subtask of her first.
SEED_TASKS = (
    (0, "the admin's task", None),
    (1, "alice's task", None),
    (1, "alice's subtask", 1),
    (2, "bob's task", None),
)
#: The title of the list Alice shares in every example.
SEED_LIST_TITLE = "the team's list"
#: The display name of the service account every example starts with.
SEED_SERVICE_ACCOUNT = "the report robot"
#: Database collations in which titles sort by code point, as the model sorts them.
CODE_POINT_COLLATIONS = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic"})


@dataclass(frozen=True)
class Rpc:
    """One method of one service, found in the generated descriptors."""

    service: ServiceDescriptor
    method: MethodDescriptor
    stubs: ModuleType

    @property
    def path(self) -> str:
        """The method's full gRPC path, as the server sees it."""
        return f"/{self.service.full_name}/{self.method.name}"

    def __repr__(self) -> str:
        return self.path


def every_rpc() -> list[Rpc]:
    """Every method of every service in taskservice.v1, straight from the generated code."""
    rpcs = []
    for module_info in sorted(pkgutil.iter_modules(taskservice.v1.__path__), key=lambda m: m.name):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"taskservice.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            stubs = importlib.import_module(f"taskservice.v1.{module_info.name}_grpc")
            rpcs.extend(Rpc(service, method, stubs) for method in service.methods)
    return rpcs


RPCS = every_rpc()


def test_every_rpc_has_an_oracle_and_no_client_streams() -> None:
    """A new RPC fails here until the model knows what it may answer: never skipped silently.

    Server streams are called for their first response (then cancelled); client streams the
    fuzz cannot call yet.
    """
    assert {rpc.path for rpc in RPCS} == Model(1).methods
    streaming = [rpc.path for rpc in RPCS if rpc.method.client_streaming]
    assert not streaming, f"the fuzz calls unary methods only; teach it streams for {streaming}"


@dataclass(frozen=True)
class Call:
    """One drawn call; its repr is what Hypothesis prints for a failing example."""

    rpc: Rpc
    credential: Credential
    request: Message

    def __repr__(self) -> str:
        return f"{self.rpc.method.name} as {self.credential.name}: {describe(self.request)}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How Hypothesis prints a drawn call (it would otherwise list the dataclass fields)."""
        printer.text(repr(self))


def describe(message: Message) -> str:
    """A message on one line, long strings abbreviated (some are over a megabyte)."""
    parts = []
    for field_descriptor, value in message.ListFields():
        if isinstance(value, Message):
            text = describe(value)
        elif isinstance(value, str) and len(value) > 60:
            text = f"{value[:24]!r}...<{len(value)} characters>"
        elif field_descriptor.is_repeated:
            text = repr(list(value))
        else:
            text = repr(value)
        parts.append(f"{field_descriptor.name}={text}")
    return "{" + ", ".join(parts) + "}"


def _arabic_digits(number: int) -> str:
    return "".join(chr(0x0660 + int(digit)) for digit in str(number))


class Harness:
    """One server, its stubs, and the model of the example being run."""

    def __init__(self, app: Application, channel: grpc.aio.Channel) -> None:
        self.app = app
        self.settings: Settings = app.settings
        self.stubs = Stubs.over(channel)
        self._methods: dict[str, Callable[..., Any]] = {}
        for rpc in RPCS:
            stub = getattr(rpc.stubs, f"{rpc.service.name}Stub")(channel)
            method = getattr(stub, rpc.method.name)
            self._methods[rpc.path] = (
                _first_response(method) if rpc.method.server_streaming else method
            )
        self.title_order_exact = True
        self.model = self.new_model()
        self.transcript: list[str] = []
        #: (method, code) -> answers seen: shows which paths the fuzz reached.
        self.outcomes: Counter[tuple[str, str]] = Counter()
        #: Next pages of list walks begun in this example: a call that would continue each.
        self.walks: list[Call] = []
        #: The first NOT_FOUND (message, reason) for a task: every other must be the same.
        self.task_not_found: dict[str, tuple[str, str]] = {}

    def new_model(self) -> Model:
        """An empty model for this server's settings."""
        return Model(
            self.settings.max_message_bytes,
            self.settings.trash_retention_days * 86_400,
            title_order_exact=self.title_order_exact,
        )

    async def start(self) -> None:
        """Learn how the database orders titles (the model sorts by code point)."""
        if self.app.database.engine.dialect.name == "postgresql":
            query = text("SELECT datcollate FROM pg_database WHERE datname = current_database()")
            async with self.app.database.engine.connect() as connection:
                collation = await connection.scalar(query)
            self.title_order_exact = collation in CODE_POINT_COLLATIONS

    async def reset(self) -> None:
        """Empty tables, then an admin and three regular users, as the model knows them."""
        async with self.app.database.write() as session:
            for table in (
                TaskCreateRequest,
                TaskLabel,
                Task,
                TaskListMember,
                TaskList,
                ApiKey,
                RefreshToken,
                AuditEvent,
                ThrottleCounter,
                User,
            ):
                await session.execute(delete(table))
        self.app.auth_states.forget_all()
        self.model = self.new_model()
        self.transcript = []
        self.walks = []
        admin = await make_admin(self.app, self.stubs, "admin@example.com")
        accounts = [
            admin,
            await register(self.stubs, "alice@example.com"),
            await register(self.stubs, "bob@example.com"),
            await register(self.stubs, "carol@example.com"),
        ]
        credentials = []
        for account in accounts:
            self.model.add_user(account.user, PASSWORD)
            credentials.append(self.model.add_token(account.user.id, account.token))
        # A few tasks to start with, so that the first calls already reach rows; created through
        # the same checked path as every other call.
        create = next(rpc for rpc in RPCS if rpc.method.name == "CreateTask")
        created: list[int] = []
        for owner, title, parent in SEED_TASKS:
            parent_id = created[parent] if parent is not None else 0
            task = task_pb2.Task(title=title, parent_id=parent_id)
            await self.call(
                Call(create, credentials[owner], task_service_pb2.CreateTaskRequest(task=task))
            )
            created.append(max(self.model.tasks))
        # A service account, so that calls about users meet one (it cannot Login, or be made an
        # admin; ListUsers' kind filter tells it apart): created by the admin, checked the same way.
        create_account = next(rpc for rpc in RPCS if rpc.method.name == "CreateServiceAccount")
        request = user_service_pb2.CreateServiceAccountRequest(
            display_name=SEED_SERVICE_ACCOUNT,
            permissions=[
                permissions_pb2.PERMISSION_TASKS_READ,
                permissions_pb2.PERMISSION_AUDIT_READ,
            ],
        )
        await self.call(Call(create_account, credentials[0], request))
        # Machine callers: the service account's key, and the admin's keys limited to reading
        # tasks, to reading every owner's tasks, to writing every owner's tasks, and to reading
        # every owner's tasks but writing only the admin's own; the model knows what each may
        # call (a missing permission: PERMISSION_DENIED) and whose tasks.
        robot = max(self.model.users)
        create_key = next(rpc for rpc in RPCS if rpc.method.name == "CreateApiKey")
        for user_id, scope in (
            (robot, []),
            (admin.user.id, [permissions_pb2.PERMISSION_TASKS_READ]),
            (admin.user.id, [permissions_pb2.PERMISSION_TASKS_READ_ALL]),
            (admin.user.id, [permissions_pb2.PERMISSION_TASKS_WRITE_ALL]),
            (
                admin.user.id,
                [permissions_pb2.PERMISSION_TASKS_READ_ALL, permissions_pb2.PERMISSION_TASKS_WRITE],
            ),
        ):
            key_request = api_key_service_pb2.CreateApiKeyRequest(
                user_id=user_id, display_name="machine", permissions=scope
            )
            created = await self.call(Call(create_key, credentials[0], key_request))
            assert isinstance(created, api_key_service_pb2.CreateApiKeyResponse)
            self.model.add_key(created.api_key.id, created.secret)
        await self._share_a_list(credentials, robot)

    async def _share_a_list(self, credentials: list[Credential], robot: int) -> None:
        """Alice's shared list: Bob an EDITOR (by email), Carol and the robot VIEWERs (by id).

        Bob makes a task there, assigned to Alice, so that the first calls already meet a list
        with members of every role; all through the same checked path as every other call.
        """
        rpc = {r.method.name: r for r in RPCS}
        alice, bob = credentials[1], credentials[2]
        created = await self.call(
            Call(
                rpc["CreateTaskList"],
                alice,
                task_list_service_pb2.CreateTaskListRequest(
                    task_list=task_list_pb2.TaskList(title=SEED_LIST_TITLE)
                ),
            )
        )
        assert isinstance(created, task_list_service_pb2.CreateTaskListResponse)
        list_id = created.task_list.id
        carol = credentials[3].user_id or 0
        for member, email, role in (
            (0, "bob@example.com", task_list_pb2.TASK_LIST_ROLE_EDITOR),
            (carol, "", task_list_pb2.TASK_LIST_ROLE_VIEWER),
            (robot, "", task_list_pb2.TASK_LIST_ROLE_VIEWER),
        ):
            added = await self.call(
                Call(
                    rpc["AddTaskListMember"],
                    alice,
                    task_list_service_pb2.AddTaskListMemberRequest(
                        task_list_id=list_id,
                        member=task_list_pb2.TaskListMember(user_id=member, role=role),
                        email=email,
                    ),
                )
            )
            assert added is not None
        task = task_pb2.Task(
            title="the team's task", task_list_id=list_id, assignee_id=alice.user_id or 0
        )
        made = await self.call(
            Call(rpc["CreateTask"], bob, task_service_pb2.CreateTaskRequest(task=task))
        )
        assert made is not None

    def pools(self, credential: Credential) -> Pools:
        """What the model has met, seen from the caller, for the strategies to reuse."""
        model = self.model
        caller = model.caller(credential)
        caller_id = None if caller is None else caller.id
        mine = model.member_lists(caller_id) if caller_id is not None else set()
        return Pools(
            caller_id=caller_id,
            own_task_ids=[t.id for t in model.tasks.values() if t.task_list_id in mine],
            own_trashed_ids=[
                t.id for t in model.tasks.values() if t.task_list_id in mine and t.deleted
            ],
            refresh_tokens=list(model.cred.refresh_tokens),
            own_api_key_ids=[k.id for k in model.cred.api_keys.values() if k.user_id == caller_id],
            api_key_ids=list(model.cred.api_keys),
            task_ids=list(model.tasks),
            gone_task_ids=model.gone_task_ids,
            user_ids=list(model.users),
            gone_user_ids=model.gone_user_ids,
            emails=[user.email for user in model.users.values()],
            passwords=sorted({u.password for u in model.users.values() if u.password is not None}),
            page_tokens=[page.token for page in model.pages],
            etags=[task.etag for task in model.tasks.values()],
            stale_etags=[tag for task in model.tasks.values() for tag in task.etags[:-1]],
            request_ids=model.request_ids,
            caller_password=None if caller is None else caller.password,
            etag_of={task.id: task.etag for task in model.tasks.values()},
            password_of={
                user.email: user.password
                for user in model.users.values()
                if user.password is not None
            },
            list_of={task.id: task.task_list_id for task in model.tasks.values()},
            live_of={
                list_id: [
                    t.id
                    for t in model.tasks.values()
                    if t.task_list_id == list_id and not t.deleted
                ]
                for list_id in model.lists
            },
            children={
                (task.task_list_id, task.parent_id): [
                    t.id for t in model.siblings(task.task_list_id, task.parent_id, 0)
                ]
                for task in model.tasks.values()
            },
            own_list_ids=sorted(model.member_lists(caller_id)) if caller_id is not None else [],
            list_ids=list(model.lists),
            personal_list=model.personal_lists.get(caller_id) if caller_id is not None else None,
            members_of={row.id: list(row.members) for row in model.lists.values()},
            list_etag_of={row.id: row.etag for row in model.lists.values() if row.etag},
            labels=sorted({label for task in model.tasks.values() for label in task.labels}),
            titles=sorted({task.title for task in model.tasks.values()}),
            times=sorted(
                {
                    time
                    for task in model.tasks.values()
                    for time in (task.due_time, task.create_time, task.update_time)
                    if time is not None
                }
            ),
        )

    def credentials(self) -> st.SearchStrategy[Credential]:
        """Valid callers; rarely revoked tokens, nobody, junk and forged-but-signed tokens."""
        valid = [c for c in self.model.credentials if self.model.caller(c) is not None]
        user_ids = [*self.model.users, *self.model.gone_user_ids]
        bad = st.one_of(
            st.sampled_from(self.model.credentials),
            st.just(Credential("anonymous")),
            st.sampled_from(self._junk_credentials(self.model.credentials)),
            st.builds(self._odd_token, st.sampled_from(user_ids), st.integers(0, 12)),
        )
        return mostly(known(valid, bad), bad)

    @staticmethod
    def _junk_credentials(held: Sequence[Credential]) -> list[Credential]:
        real = held[0].metadata[0][1]
        return [
            Credential("junk: scheme only", (("authorization", "Bearer"),)),
            Credential("junk: basic", (("authorization", "Basic YTpi"),)),
            Credential("junk: not a jwt", (("authorization", "Bearer not.a.jwt"),)),
            Credential("junk: tampered", (("authorization", real + "x"),)),
            Credential("junk: huge", (("authorization", "Bearer " + "x" * 5000),)),
            Credential("junk: two entries", (("authorization", real), ("authorization", real))),
        ]

    def _odd_token(self, user_id: int, variant: int) -> Credential:
        """A token signed with the server's key whose claims are odd: always UNAUTHENTICATED."""
        now = int(time.time())
        version = self.model.users[user_id].version if user_id in self.model.users else 0
        claims: dict[str, object] = {
            "sub": str(user_id),
            "ver": version,
            "jti": "fuzz",
            "iat": now,
            "exp": now + 600,
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
        }
        odd: list[tuple[str, object]] = [
            ("sub", _arabic_digits(user_id)),
            ("sub", "9" * 20),
            ("sub", str(2**63)),
            ("sub", "-1"),
            ("sub", "0"),
            ("sub", user_id),
            ("sub", f" {user_id}"),
            ("sub", f"0{user_id}"),
            ("ver", True),
            ("ver", float(version)),
            ("ver", str(version)),
            ("exp", now - 3600),
            ("aud", "someone-else"),
        ]
        name, value = odd[variant]
        claims[name] = value
        assert self.settings.jwt_secret_key is not None
        key = self.settings.jwt_secret_key.get_secret_value()
        token = jwt.encode(claims, key, algorithm=self.settings.jwt_algorithm)
        return Credential(f"odd claims: {name}={value!r}", (("authorization", f"Bearer {token}"),))

    def calls(self) -> st.SearchStrategy[Call]:
        """A call to any method, as any caller, with a request drawn for the current state."""
        return _calls(self, self.credentials())

    async def run_example(self, data: st.DataObject) -> None:
        """Reset, make the drawn calls one after another, then compare every row."""
        await self.reset()
        count = data.draw(st.integers(MIN_CALLS, MAX_CALLS), label="number of calls")
        for index in range(count):
            await self.call(data.draw(self.calls(), label=f"call {index + 1}"))
        await self.check_rows()

    async def call(self, call: Call) -> Message | None:
        """Make one call and hold its answer against the model; the response, if OK."""
        if call.rpc.method.server_streaming:  # WatchTasks' oracle needs the store's revision
            await self.app.database.number_changes()  # every earlier write numbered
            async with self.app.database.rows() as connection:
                self.model.current_revision = await connection.scalar(
                    text("SELECT revision FROM task_revision")
                )
        expect = self.model.expect(call.rpc.path, call.credential, call.request)
        method = self._methods[call.rpc.path]
        self.transcript.append(repr(call))
        response: Message | None = None
        try:
            response = await method(
                call.request,
                metadata=call.credential.metadata or None,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            self._check_error(call, expect, error)
            return None
        self.transcript[-1] += " -> OK"
        self.outcomes[call.rpc.method.name, "OK"] += 1
        if OK not in expect.codes:
            self.fail(call, expect, "OK, but the contract forbids it")
        assert expect.on_ok is not None
        try:
            resync = expect.on_ok(response)
        except ContractViolation as violation:
            self.fail(call, expect, f"OK, but {violation}")
        if resync is not None:
            await self.resync(call, expect, resync)
        token = getattr(response, "next_page_token", "")
        if token:
            following = type(call.request)()
            following.CopyFrom(call.request)
            following.page_token = token  # type: ignore[attr-defined]
            self.walks = [*self.walks[-4:], Call(call.rpc, call.credential, following)]
        return response

    def _check_error(self, call: Call, expect: Expect, error: grpc.aio.AioRpcError) -> None:
        code = error.code()
        self.transcript[-1] += f" -> {code.name}: {error.details()}"
        self.outcomes[call.rpc.method.name, code.name] += 1
        if code in NEVER or code not in expect.codes:
            self.fail(call, expect, f"{code.name}: {error.details()}")
        if code == EXHAUSTED:
            return  # gRPC refuses an oversize message before any of our code runs
        reason, fields = _error_details(error)
        if not reason:
            self.fail(call, expect, f"{code.name} without an ErrorInfo reason")
        if code == NOT_FOUND and expect.hidden is not None:
            # "the same message" for another user's task (or list) as for a missing one.
            said = (error.details() or "", reason)
            if self.task_not_found.setdefault(expect.hidden, said) != said:
                self.fail(call, expect, f"NOT_FOUND {said}, elsewhere {self.task_not_found}")
        named = expect.not_found_names
        if code == NOT_FOUND and named is not None and not names_id(error.details() or "", named):
            self.fail(call, expect, f"NOT_FOUND not naming task {named}")
        if code == INVALID:
            named = set(fields)
            # A long list stops with "... and N more (not listed)": then not all are named.
            complete = not any(text.startswith("... and ") for text in fields.values())
            if not named:
                self.fail(call, expect, "INVALID_ARGUMENT naming no field")
            if not named <= expect.bad_fields | expect.may_name or (
                complete and not expect.bad_fields <= named
            ):
                self.fail(call, expect, f"INVALID_ARGUMENT naming fields {sorted(named)}")

    def fail(self, call: Call, expect: Expect, what: str) -> None:
        """Stop the example, printing the calls that led here and what was allowed."""
        transcript = "\n  ".join(self.transcript[-15:])
        allowed = "\n  ".join(expect.reasons)
        raise AssertionError(
            f"{call!r}\n  answered {what}\nallowed:\n  {allowed}\n"
            f"calls of this example (last 15):\n  {transcript}"
        )

    async def _rendered_tasks(self, task_ids: Sequence[int] | None = None) -> dict[int, Any]:
        """Task rows as the API would show them, with their trash roots and label keys."""
        query = select(Task) if task_ids is None else select(Task).where(Task.id.in_(task_ids))
        async with self.app.database.read() as session:
            rows = list((await session.scalars(query)).all())
            label_rows = (
                await session.execute(select(TaskLabel.task_id, TaskLabel.owner_id, TaskLabel.key))
            ).all()
        # Keyed by task and owner: a label row naming another owner leaves its task short a key.
        keys: dict[tuple[int, int], set[str]] = {}
        for task_id, owner_id, key in label_rows:
            keys.setdefault((task_id, owner_id), set()).add(key)
        return {
            row.id: (
                wire_task(task_to_proto(row)),
                row.trash_root_id,
                keys.get((row.id, row.owner_id), set()),
            )
            for row in rows
        }

    async def resync(self, call: Call, expect: Expect, resync: Resync) -> None:
        """Read back the tasks an OK answer changed on the side; only `absorb` may differ."""
        rendered = await self._rendered_tasks(resync.task_ids)
        for task_id in resync.task_ids:
            row = self.model.tasks[task_id]
            if task_id not in rendered:
                self.fail(call, expect, f"OK, but task {task_id} is gone")
            wire, trash_root, _ = rendered[task_id]
            got = dict(zip(TASK_WIRE_FIELDS, wire, strict=True))
            want = dict(zip(TASK_WIRE_FIELDS, row.wire(), strict=True))
            changed = {name for name in TASK_WIRE_FIELDS if got[name] != want[name]}
            if changed - resync.absorb or trash_root != row.trash_root:
                details = {name: (got[name], want[name]) for name in changed - resync.absorb}
                self.fail(
                    call,
                    expect,
                    f"OK, but it also changed task {task_id}: {details} "
                    f"(trash root {trash_root}, model {row.trash_root})",
                )
            for name in resync.absorb:
                setattr(row, name, got[name])
            if got["etag"] != want["etag"]:
                row.etags.append(row.etag)
        if resync.then is not None:
            try:
                resync.then()
            except ContractViolation as violation:
                self.fail(call, expect, f"OK, but {violation}")

    async def check_rows(self) -> None:
        """Every row agrees with the last OK answer about it; nothing else was written."""
        model = self.model
        async with self.app.database.read() as session:
            users = {u.id: u for u in (await session.scalars(select(User))).all()}
            keys = {
                (k.user_id, k.request_id): k.task_id
                for k in (await session.scalars(select(TaskCreateRequest))).all()
            }
            stored_lists = list((await session.scalars(select(TaskList))).all())
            memberships = list((await session.scalars(select(TaskListMember))).all())
        want_users = {
            u.id: (u.email, u.is_active, u.is_admin, u.kind, u.display_name, list(u.permissions))
            for u in model.users.values()
        }
        got_users = {
            u.id: (
                u.email,
                u.is_active,
                u.is_admin,
                USER_KINDS.get(u.kind),
                u.display_name or "",
                permission_numbers(u.permissions),
            )
            for u in users.values()
        }
        self._agree("users", got_users, want_users)
        for user_id, row in model.users.items():
            if row.password is None:  # a service account: no password at all
                assert users[user_id].password_hash == NO_PASSWORD, f"user {user_id} has one"
                continue
            stored = users[user_id].password_hash.encode()
            password_matches = await asyncio.to_thread(
                bcrypt.checkpw, row.password.encode(), stored
            )
            assert password_matches, f"user {user_id}'s password is not the one last set"
        rendered = await self._rendered_tasks()
        want_tasks = {
            task.id: (task.wire(), task.trash_root, {label.casefold() for label in task.labels})
            for task in model.tasks.values()
        }
        self._agree("tasks", rendered, want_tasks)
        self._agree("idempotency keys", keys, model.keys)
        # Every list the model met, with its members and roles; personal lists it has not met
        # are the only others.
        got_lists = {
            row.id: (row.owner_id, row.title, row.description, row.personal, row.delete_time)
            for row in stored_lists
            if row.id in model.lists or not row.personal
        }
        want_lists = {
            row.id: (row.owner_id, row.title, row.description, row.personal, row.deleted)
            for row in model.lists.values()
        }
        got_lists = {
            list_id: (*values[:4], values[4] is not None) for list_id, values in got_lists.items()
        }
        self._agree("task lists", got_lists, want_lists)
        got_members = {
            (m.task_list_id, m.user_id): m.role for m in memberships if m.task_list_id in want_lists
        }
        want_members = {
            (row.id, user): role
            for row in model.lists.values()
            for user, role in row.members.items()
        }
        self._agree("task list members", got_members, want_members)

    def _agree(self, what: str, got: dict[Any, Any], want: dict[Any, Any]) -> None:
        if got == want:
            return
        differences = [
            f"{key}: stored {_clip(got.get(key))}, last OK answer {_clip(want.get(key))}"
            for key in sorted(set(got) | set(want), key=repr)
            if got.get(key) != want.get(key)
        ]
        transcript = "\n  ".join(self.transcript[-15:])
        raise AssertionError(
            f"{what} disagree with the last OK answers:\n  "
            + "\n  ".join(differences[:10])
            + f"\ncalls of this example (last 15):\n  {transcript}"
        )


#: Every method, the ones that make rows several times over.
_WEIGHTED_RPCS = [rpc for rpc in RPCS for _ in range(WEIGHTS.get(rpc.method.name, 1))]


@st.composite
def _calls(draw: st.DrawFn, harness: Harness, credentials: st.SearchStrategy[Credential]) -> Call:
    if harness.walks and draw(st.booleans()):
        # Go on with a list walk: the next page, as it was asked for, perhaps of another size.
        following = draw(st.sampled_from(harness.walks))
        request = type(following.request)()
        request.CopyFrom(following.request)
        if draw(st.booleans()):
            request.page_size = draw(page_sizes(INT32))  # type: ignore[attr-defined]
        return Call(following.rpc, following.credential, request)
    rpc = draw(st.sampled_from(_WEIGHTED_RPCS))
    credential = draw(credentials)
    pools = harness.pools(credential)
    request = draw(message_strategy(rpc.method.input_type, pools, rpc.service.name))
    return Call(rpc, credential, request)


def _first_response(method: Callable[..., Any]) -> Callable[..., Any]:
    """A server-streaming method called like a unary one: its first response, then cancelled."""

    async def first(request: Message, **options: Any) -> Message:
        stream = method(request, **options)
        try:
            response = await stream.read()
        finally:
            stream.cancel()
        assert response is not grpc.aio.EOF, "a stream ended OK without a response"
        return response

    return first


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}..."


def _error_details(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and the BadRequest fields (with descriptions) of a failed call."""
    reason, fields = "", {}
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info) and info.domain == "taskservice":
                reason = info.reason
            elif detail.Unpack(bad_request):
                fields = {v.field: v.description for v in bad_request.field_violations}
    return reason, fields


def outcome_table(outcomes: Counter[tuple[str, str]]) -> str:
    """How often each method got each code: the paths the fuzz reached (`make fuzz` prints it)."""
    lines = ["answers per method:"]
    for method in sorted({method for method, _ in outcomes}):
        codes = sorted((code, n) for (m, code), n in outcomes.items() if m == method)
        lines.append(f"  {method:15} " + ", ".join(f"{code} {n}" for code, n in codes))
    return "\n".join(lines)


def fuzz_budget() -> tuple[int, int | None]:
    """(examples, seed): the fixed CI budget, or `make fuzz`'s FUZZ_EXAMPLES and FUZZ_SEED."""
    examples = int(os.environ.get("FUZZ_EXAMPLES") or CI_EXAMPLES)
    seed_text = os.environ.get("FUZZ_SEED")
    return examples, int(seed_text) if seed_text else None


def test_every_rpc_answers_as_the_protos_say(settings: Settings) -> None:
    examples, fuzz_seed = fuzz_budget()
    with asyncio.Runner() as runner:
        app = runner.run(build_server(settings))
        runner.run(app.start())
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        harness = Harness(app, channel)
        runner.run(harness.start())
        try:

            @hypothesis_settings(
                max_examples=examples,
                derandomize=fuzz_seed is None,
                database=None,
                deadline=None,
                print_blob=True,
                # Explaining re-runs a failing example many times over; the transcript says more.
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[
                    HealthCheck.too_slow,
                    HealthCheck.data_too_large,
                    HealthCheck.filter_too_much,
                    HealthCheck.large_base_example,
                ],
            )
            @given(st.data())
            def fuzz(data: st.DataObject) -> None:
                runner.run(harness.run_example(data))

            if fuzz_seed is not None:
                fuzz = seed(fuzz_seed)(fuzz)
            fuzz()
            backend = settings.sqlalchemy_url.get_backend_name()
            print(f"\n{backend}: {outcome_table(harness.outcomes)}")
        except Exception as failure:
            if fuzz_seed is not None:
                failure.add_note(f"repeat with: make fuzz FUZZ_SEED={fuzz_seed}")
            raise
        finally:
            runner.run(channel.close())
            runner.run(app.stop(grace=None))

"""Client certificates as credentials: MTLS_IDENTITIES maps SPIFFE IDs and DNS names to accounts.

A second server, with mutual TLS and the mapping, shares the database of the plain `app` on which
each test creates its admin and service accounts; certificates are made by the test. A matrix at
the bottom holds every kind of call over the mapped certificate against the same call with the
account's key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from taskservice.config import ConfigError, load_settings
from taskservice.server import Application, build_server
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import (
    api_key_service_pb2_grpc,
    audit_service_pb2_grpc,
    auth_service_pb2_grpc,
    task_list_service_pb2_grpc,
    task_service_pb2_grpc,
    user_pb2,
    user_service_pb2_grpc,
)
from taskservice.v1 import audit_service_pb2 as audit_pb
from taskservice.v1 import auth_service_pb2 as auth_pb
from taskservice.v1 import permissions_pb2 as perms
from taskservice.v1 import task_list_pb2 as lists_pb
from taskservice.v1 import task_list_service_pb2 as lsvc
from taskservice.v1 import task_service_pb2 as tasks_pb
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import Stubs, make_settings
from tests.helpers import Account, fails, make_admin, register
from tests.http_client import auth_headers, connect_failure, connect_json
from tests.test_tls import (
    Credential,
    Pki,
    _https,
    _issue,
    _secure,
    pki,  # noqa: F401 - a fixture
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOTIFIER = "spiffe://example.org/ns/jobs/sa/notifier"
NOTIFIER_DNS = "notifier.jobs.example.org"
CREATE_TASK = "/taskservice.v1.TaskService/CreateTask"
GET_ME = "/taskservice.v1.UserService/GetMe"


@dataclass
class Mesh:
    """The mapped server, its certificates, and the accounts they stand for."""

    app: Application
    pki: Pki
    admin: Account
    account: user_pb2.User
    person: Account
    clients: dict[str, Credential]


def _client(authority: Pki, *names: x509.GeneralName) -> Credential:
    return _issue("workload", authority.ca, names=names)


@pytest.fixture
async def mesh(
    app: Application,
    stubs: Stubs,
    pki: Pki,  # noqa: F811 - the fixture
    database_url: str,
) -> AsyncIterator[Mesh]:
    admin = await make_admin(app, stubs)
    account = (
        await stubs.users.CreateServiceAccount(
            users_pb.CreateServiceAccountRequest(
                display_name="notifier",
                permissions=[perms.PERMISSION_TASKS_WRITE, perms.PERMISSION_USERS_READ],
            ),
            metadata=admin.metadata,
        )
    ).user
    person = await register(stubs)
    clients = {
        "spiffe": _client(pki, x509.UniformResourceIdentifier(NOTIFIER)),
        "dns": _client(pki, x509.DNSName(NOTIFIER_DNS.upper())),
        "unmapped": _client(pki, x509.UniformResourceIdentifier(NOTIFIER + "-other")),
        "person": _client(pki, x509.DNSName("laptop.example.org")),
        "admin": _client(pki),
    }
    identities = (
        f"{NOTIFIER}={account.id}, {NOTIFIER_DNS}={account.id},laptop.example.org={person.user.id}"
    )
    settings = make_settings(
        database_url,
        tls_cert_file=pki.files["cert"],
        tls_key_file=pki.files["key"],
        tls_client_ca_file=pki.files["ca"],
        mtls_identities=identities,
    )
    mapped = await build_server(settings)
    await mapped.start()
    yield Mesh(mapped, pki, admin, account, person, clients)
    await mapped.stop(grace=None)


def _stubs(mesh: Mesh, client: str) -> tuple[grpc.aio.Channel, Stubs]:
    channel = _secure(mesh.app, mesh.pki, mesh.clients[client])
    return channel, Stubs.over(channel)


def _task(title: str) -> tasks_pb.CreateTaskRequest:
    return tasks_pb.CreateTaskRequest(task={"title": title})


@pytest.mark.parametrize("client", ["spiffe", "dns"])
async def test_a_mapped_certificate_creates_tasks_with_no_token_over_grpc(
    mesh: Mesh, client: str
) -> None:
    channel, stubs = _stubs(mesh, client)
    async with channel:
        task = (await stubs.tasks.CreateTask(_task("from the mesh"), timeout=10)).task
        me = (await stubs.users.GetMe(users_pb.GetMeRequest(), timeout=10)).user
    assert task.owner_id == mesh.account.id
    assert me.id == mesh.account.id


async def test_a_mapped_certificate_creates_tasks_with_no_token_over_http(
    mesh: Mesh, tmp_path: Path
) -> None:
    async with _https(mesh.app, mesh.pki, mesh.clients["spiffe"], tmp_path) as http:
        created = await connect_json(http, CREATE_TASK, {"task": {"title": "over connect"}})
        rest = await http.post("/api/v1/tasks/", json={"title": "over rest"})
    assert created.status_code == 200, created.text
    assert created.json()["task"]["ownerId"] == str(mesh.account.id)
    assert rest.status_code == 200, rest.text
    assert rest.json()["owner_id"] == mesh.account.id


async def test_the_certificate_grants_only_the_accounts_permissions(mesh: Mesh) -> None:
    channel, stubs = _stubs(mesh, "spiffe")
    async with channel:
        failure = await fails(
            stubs.tasks.ListTasks(tasks_pb.ListTasksRequest(), timeout=10), DENIED
        )
        assert (failure.reason, failure.error_metadata) == (
            "PERMISSION_MISSING",
            {"permission": "tasks.read"},
        )
        # A certificate is no login: it cannot manage keys, whatever the account holds.
        await fails(stubs.api_keys.ListApiKeys(keys_pb.ListApiKeysRequest(), timeout=10), DENIED)


async def test_an_unmapped_certificate_authenticates_nobody_on_either_edge(
    mesh: Mesh, tmp_path: Path
) -> None:
    channel, stubs = _stubs(mesh, "unmapped")
    async with channel:
        failure = await fails(stubs.tasks.CreateTask(_task("nobody"), timeout=10), UNAUTHENTICATED)
        assert failure.reason == "TOKEN_MISSING"
        health = await stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # the handshake succeeded
    # One connection per refused call: hypercorn 0.18 drops an HTTP/2 connection on which a
    # response went out before its request's body was read.
    async with _https(mesh.app, mesh.pki, mesh.clients["unmapped"], tmp_path) as http:
        response = await connect_json(http, CREATE_TASK, {"task": {"title": "nobody"}})
    async with _https(mesh.app, mesh.pki, mesh.clients["unmapped"], tmp_path) as http:
        rest = await http.post("/api/v1/tasks/", json={"title": "nobody"})
    assert response.status_code == 401
    assert connect_failure(response).reason == "TOKEN_MISSING"
    assert rest.status_code == 401


async def test_a_bearer_token_wins_over_a_mapped_certificate(mesh: Mesh, tmp_path: Path) -> None:
    channel, stubs = _stubs(mesh, "spiffe")
    async with channel:
        me = await stubs.users.GetMe(users_pb.GetMeRequest(), metadata=mesh.admin.metadata)
        assert me.user.id == mesh.admin.user.id
        # A bad token is refused, never replaced by the certificate.
        failure = await fails(
            stubs.users.GetMe(users_pb.GetMeRequest(), metadata=(("authorization", "Bearer x"),)),
            UNAUTHENTICATED,
        )
        assert failure.reason != "TOKEN_MISSING"
    async with _https(mesh.app, mesh.pki, mesh.clients["spiffe"], tmp_path) as http:
        response = await connect_json(http, GET_ME, {}, **auth_headers(mesh.admin.token))
    assert response.json()["user"]["id"] == str(mesh.admin.user.id)


async def test_a_deactivated_or_deleted_accounts_certificate_is_refused(
    mesh: Mesh, tmp_path: Path
) -> None:
    channel, stubs = _stubs(mesh, "spiffe")
    admin_channel, admin = _stubs(mesh, "admin")
    async with channel, admin_channel:
        await stubs.tasks.CreateTask(_task("before"), timeout=10)
        await admin.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": mesh.account.id, "is_active": False},
                update_mask={"paths": ["is_active"]},
            ),
            metadata=mesh.admin.metadata,
        )
        failure = await fails(stubs.tasks.CreateTask(_task("after"), timeout=10), UNAUTHENTICATED)
        assert failure.reason == "CERTIFICATE_REVOKED"
        async with _https(mesh.app, mesh.pki, mesh.clients["spiffe"], tmp_path) as http:
            response = await connect_json(http, CREATE_TASK, {"task": {"title": "after"}})
        assert connect_failure(response).reason == "CERTIFICATE_REVOKED"
        await admin.users.DeleteUser(
            users_pb.DeleteUserRequest(id=mesh.account.id), metadata=mesh.admin.metadata
        )
        failure = await fails(stubs.tasks.CreateTask(_task("gone"), timeout=10), UNAUTHENTICATED)
        assert failure.reason == "CERTIFICATE_REVOKED"


async def test_a_certificate_mapped_to_a_person_authenticates_nobody(mesh: Mesh) -> None:
    channel, stubs = _stubs(mesh, "person")
    async with channel:
        failure = await fails(stubs.users.GetMe(users_pb.GetMeRequest()), UNAUTHENTICATED)
    assert failure.reason == "CERTIFICATE_REVOKED"


async def test_a_certificate_watch_needs_the_accounts_tasks_read(mesh: Mesh) -> None:
    channel, stubs = _stubs(mesh, "spiffe")
    async with channel:
        failure = await fails(
            _first(stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), timeout=10)), DENIED
        )
    assert failure.error_metadata == {"permission": "tasks.read"}


async def test_a_certificate_watch_ends_once_its_account_is_deactivated(mesh: Mesh) -> None:
    channel, stubs = _stubs(mesh, "spiffe")
    admin_channel, admin = _stubs(mesh, "admin")
    async with channel, admin_channel:
        await admin.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": mesh.account.id, "permissions": [perms.PERMISSION_TASKS_READ]},
                update_mask={"paths": ["permissions"]},
            ),
            metadata=mesh.admin.metadata,
        )
        stream = stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), timeout=30)
        first = await _first(stream)
        assert first is not None  # the stream is live, authenticated by the certificate
        await admin.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": mesh.account.id, "is_active": False},
                update_mask={"paths": ["is_active"]},
            ),
            metadata=mesh.admin.metadata,
        )
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in stream:
                pass
    assert ended.value.code() == UNAUTHENTICATED
    assert "CERTIFICATE_REVOKED" in str(ended.value.trailing_metadata())


async def _first(stream: AsyncIterator[object]) -> object:
    async for message in stream:
        return message
    return None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("spiffe://example.org/a", "is not identity=user_id"),
        ("spiffe://Example.org/a=1", "is not a SPIFFE ID"),
        ("https://example.org/a=1", "neither a SPIFFE ID nor a DNS name"),
        ("a.example=1,A.example=2", "listed twice"),
        ("a.example=0", "positive user id"),
    ],
)
def test_a_bad_mapping_stops_the_start_naming_the_setting(
    value: str, problem: str, tmp_path: Path
) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    with pytest.raises(ConfigError, match=f"MTLS_IDENTITIES: .*{problem}"):
        load_settings(
            _env_file=None,
            database_url="sqlite+aiosqlite:///x.db",
            tls_cert_file=files["cert"],
            tls_key_file=files["key"],
            tls_client_ca_file=files["ca"],
            mtls_identities=value,
        )


def test_a_mapping_needs_mutual_tls() -> None:
    with pytest.raises(ConfigError, match="MTLS_IDENTITIES needs mutual TLS"):
        load_settings(
            _env_file=None, database_url="sqlite+aiosqlite:///x.db", mtls_identities="a.example=1"
        )


def test_the_identity_is_split_at_the_last_equals_sign() -> None:
    settings = make_settings(
        "sqlite+aiosqlite:///x.db",
        tls_cert_file=Path("c"),
        tls_key_file=Path("k"),
        tls_client_ca_file=Path("ca"),
        mtls_identities=f" {NOTIFIER}=42 ,jobs.example.org=7",
    )
    assert settings.mtls_identity_accounts == {NOTIFIER: 42, "jobs.example.org": 7}


@dataclass
class Twin:
    """One side's copy of the resources a write changes: the certificate's, or the key's."""

    own: int
    trashed: int
    shared_list: int
    shared_task: int
    leave_list: int


async def _twin(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, key: Account, who: Account
) -> Twin:
    """The account's own and trashed tasks, a list it edits (with a task) and one it views."""

    async def task(stubs: Stubs, metadata: object, **fields: object) -> int:
        created = await stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task=fields), metadata=metadata
        )
        return created.task.id

    own = await task(stubs, key.metadata, title="own")
    trashed = await task(stubs, key.metadata, title="trashed")
    await stubs.tasks.DeleteTask(tasks_pb.DeleteTaskRequest(id=trashed), metadata=key.metadata)
    made = []
    for role in (lists_pb.TASK_LIST_ROLE_EDITOR, lists_pb.TASK_LIST_ROLE_VIEWER):
        created = await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="team")),
            metadata=who.metadata,
        )
        await lists.AddTaskListMember(
            lsvc.AddTaskListMemberRequest(
                task_list_id=created.task_list.id,
                member=lists_pb.TaskListMember(user_id=key.user.id, role=role),
            ),
            metadata=who.metadata,
        )
        made.append(created.task_list.id)
    shared_task = await task(stubs, who.metadata, title="team's", task_list_id=made[0])
    return Twin(own, trashed, made[0], shared_task, made[1])


#: Fields that differ between two equal answers made at different moments or about twin rows.
_VOLATILE = frozenset(
    {
        "etag",
        "create_time",
        "update_time",
        "complete_time",
        "delete_time",
        "purge_time",
        "position",
        "revision",
    }
)


#: Keys holding a task's or a list's id, by what they name; "id" names what its message is.
_TASK_KEYS, _LIST_KEYS = frozenset({"task", "tasks"}), frozenset({"task_list", "task_lists"})


def _normalized(value: object, names: dict[str, dict[int, str]], kind: str = "") -> object:
    """An answer as a dict, with what two equal answers about twin rows may differ in taken out.

    Each twin's task and list ids become their names (others' ids: "other"), and times, etags,
    positions and revisions are left out.
    """
    if isinstance(value, Message):
        value = json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, list):
        return [_normalized(item, names, kind) for item in value]
    if not isinstance(value, dict):
        return value
    normal: dict[str, object] = {}
    for key, item in value.items():
        if key in _VOLATILE or key == "next_page_token":
            continue
        named = {"id": kind, "parent_id": "task", "task_list_id": "list"}.get(key)
        if named in names:
            normal[key] = names[named].get(int(item), "other")  # type: ignore[call-overload]
        else:
            inner = "task" if key in _TASK_KEYS else "list" if key in _LIST_KEYS else ""
            normal[key] = _normalized(item, names, inner)
    return normal


async def _outcome(call: Awaitable[Message]) -> tuple[str, object]:
    """The code and, for an error, its ErrorInfo reason and metadata; for OK, the answer."""
    try:
        return "OK", await call
    except grpc.aio.AioRpcError as error:
        reason: tuple[str, dict[str, str]] = ("", {})
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        reason = (info.reason, dict(info.metadata))
        return error.code().name, reason


@dataclass(frozen=True)
class Case:
    """One call of the matrix: its service and method, and its request on one side's rows."""

    name: str
    service: str
    method: str
    request: Callable[[Twin, Shared], Message]
    #: A read: both sides ask about the same rows (the certificate's), back to back.
    read: bool = False


@dataclass(frozen=True)
class Shared:
    """Rows both sides ask about: a person's own task and list, and a key of the account."""

    person_id: int
    person_task: int
    person_list: int
    key_id: int


def _cases() -> list[Case]:
    t, u, l, k = "tasks", "users", "lists", "api_keys"  # noqa: E741 - short service names
    return [
        Case("list tasks", t, "ListTasks", lambda w, s: tasks_pb.ListTasksRequest(), True),
        Case(
            "list another owner's",
            t,
            "ListTasks",
            lambda w, s: tasks_pb.ListTasksRequest(owner_id=s.person_id),
            True,
        ),
        Case("get own", t, "GetTask", lambda w, s: tasks_pb.GetTaskRequest(id=w.own), True),
        Case(
            "get shared", t, "GetTask", lambda w, s: tasks_pb.GetTaskRequest(id=w.shared_task), True
        ),
        Case(
            "get a person's",
            t,
            "GetTask",
            lambda w, s: tasks_pb.GetTaskRequest(id=s.person_task),
            True,
        ),
        Case(
            "batch get",
            t,
            "BatchGetTasks",
            lambda w, s: tasks_pb.BatchGetTasksRequest(ids=[w.own, w.shared_task, s.person_task]),
            True,
        ),
        Case("get me", u, "GetMe", lambda w, s: users_pb.GetMeRequest(), True),
        Case("list users", u, "ListUsers", lambda w, s: users_pb.ListUsersRequest(), True),
        Case(
            "get a user", u, "GetUser", lambda w, s: users_pb.GetUserRequest(id=s.person_id), True
        ),
        Case("list lists", l, "ListTaskLists", lambda w, s: lsvc.ListTaskListsRequest(), True),
        Case(
            "get a list",
            l,
            "GetTaskList",
            lambda w, s: lsvc.GetTaskListRequest(id=w.shared_list),
            True,
        ),
        Case(
            "get a person's list",
            l,
            "GetTaskList",
            lambda w, s: lsvc.GetTaskListRequest(id=s.person_list),
            True,
        ),
        Case(
            "list members",
            l,
            "ListTaskListMembers",
            lambda w, s: lsvc.ListTaskListMembersRequest(task_list_id=w.shared_list),
            True,
        ),
        Case("list keys", k, "ListApiKeys", lambda w, s: keys_pb.ListApiKeysRequest(), True),
        Case(
            "list audit events",
            "audit",
            "ListAuditEvents",
            lambda w, s: audit_pb.ListAuditEventsRequest(),
            True,
        ),
        Case(
            "create", t, "CreateTask", lambda w, s: tasks_pb.CreateTaskRequest(task={"title": "n"})
        ),
        Case(
            "create in a list",
            t,
            "CreateTask",
            lambda w, s: tasks_pb.CreateTaskRequest(
                task={"title": "n", "task_list_id": w.shared_list}
            ),
        ),
        Case(
            "create for a person",
            t,
            "CreateTask",
            lambda w, s: tasks_pb.CreateTaskRequest(task={"title": "n", "owner_id": s.person_id}),
        ),
        Case(
            "patch own",
            t,
            "PatchTask",
            lambda w, s: tasks_pb.PatchTaskRequest(
                task={"id": w.own, "title": "patched"}, update_mask={"paths": ["title"]}
            ),
        ),
        Case(
            "patch shared",
            t,
            "PatchTask",
            lambda w, s: tasks_pb.PatchTaskRequest(
                task={"id": w.shared_task, "status": 3}, update_mask={"paths": ["status"]}
            ),
        ),
        Case(
            "patch a person's",
            t,
            "PatchTask",
            lambda w, s: tasks_pb.PatchTaskRequest(
                task={"id": s.person_task, "title": "x"}, update_mask={"paths": ["title"]}
            ),
        ),
        Case(
            "move into a list",
            t,
            "MoveTask",
            lambda w, s: tasks_pb.MoveTaskRequest(id=w.own, task_list_id=w.shared_list),
        ),
        Case(
            "undelete", t, "UndeleteTask", lambda w, s: tasks_pb.UndeleteTaskRequest(id=w.trashed)
        ),
        Case("delete", t, "DeleteTask", lambda w, s: tasks_pb.DeleteTaskRequest(id=w.own)),
        Case(
            "delete a person's",
            t,
            "DeleteTask",
            lambda w, s: tasks_pb.DeleteTaskRequest(id=s.person_task),
        ),
        Case(
            "create a list",
            l,
            "CreateTaskList",
            lambda w, s: lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="mine")),
        ),
        Case(
            "rename a list it edits",
            l,
            "UpdateTaskList",
            lambda w, s: lsvc.UpdateTaskListRequest(
                task_list=lists_pb.TaskList(id=w.shared_list, title="renamed"),
                update_mask={"paths": ["title"]},
            ),
        ),
        Case(
            "leave a list",
            l,
            "LeaveTaskList",
            lambda w, s: lsvc.LeaveTaskListRequest(task_list_id=w.leave_list),
        ),
        Case(
            "change password",
            "auth",
            "ChangePassword",
            lambda w, s: auth_pb.ChangePasswordRequest(
                current_password="x" * 12, new_password="y" * 12
            ),
        ),
        Case(
            "create a key",
            k,
            "CreateApiKey",
            lambda w, s: keys_pb.CreateApiKeyRequest(display_name="more"),
        ),
        Case(
            "delete a key", k, "DeleteApiKey", lambda w, s: keys_pb.DeleteApiKeyRequest(id=s.key_id)
        ),
        Case(
            "delete a user",
            u,
            "DeleteUser",
            lambda w, s: users_pb.DeleteUserRequest(id=s.person_id),
        ),
    ]


@pytest.mark.parametrize(
    "granted",
    [
        pytest.param((perms.PERMISSION_TASKS_WRITE, perms.PERMISSION_USERS_READ), id="as-created"),
        pytest.param(
            (
                perms.PERMISSION_TASKS_READ,
                perms.PERMISSION_TASKS_WRITE,
                perms.PERMISSION_USERS_READ,
            ),
            id="reads-too",
        ),
    ],
)
async def test_a_mapped_certificate_answers_every_call_as_the_accounts_key(
    mesh: Mesh, granted: tuple[int, ...]
) -> None:
    """A call over the mapped certificate with no token is answered as with the account's key.

    Each call gets what the same call with the account's own (unlimited) key gets: the same
    code, reason and answer.

    Reads ask about the same rows back to back; writes act on twin rows made alike for each
    side, and their answers are compared with each twin's ids named alike.
    """
    cert_channel, _ = _stubs(mesh, "spiffe")
    key_channel, plain = _stubs(mesh, "admin")  # an unmapped certificate: only the key counts
    async with cert_channel, key_channel:
        await plain.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": mesh.account.id, "permissions": granted},
                update_mask={"paths": ["permissions"]},
            ),
            metadata=mesh.admin.metadata,
        )
        made = await plain.api_keys.CreateApiKey(
            keys_pb.CreateApiKeyRequest(user_id=mesh.account.id, display_name="twin"),
            metadata=mesh.admin.metadata,
        )
        key = Account(mesh.account, made.secret)
        person = await register(plain)
        person_task = (
            await plain.tasks.CreateTask(
                tasks_pb.CreateTaskRequest(task={"title": "private"}), metadata=person.metadata
            )
        ).task
        lists = task_list_service_pb2_grpc.TaskListServiceStub(key_channel)
        person_list = await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="private")),
            metadata=person.metadata,
        )
        shared = Shared(person.user.id, person_task.id, person_list.task_list.id, made.api_key.id)
        twins = [await _twin(plain, lists, key, person) for _ in range(2)]
        names = [
            {
                "task": {twin.own: "own", twin.trashed: "trashed", twin.shared_task: "shared"},
                "list": {twin.shared_list: "shared", twin.leave_list: "leave"},
            }
            for twin in twins
        ]
        seen = set()
        for case in _cases():
            answers = []
            for side, (channel, metadata) in enumerate(
                ((cert_channel, None), (key_channel, key.metadata))
            ):
                twin = twins[0 if case.read else side]
                stub = _stub(channel, case.service)
                call = getattr(stub, case.method)(
                    case.request(twin, shared), metadata=metadata, timeout=10
                )
                code, answer = await _outcome(call)
                answers.append((code, _normalized(answer, names[0 if case.read else side])))
            assert answers[0] == answers[1], (
                f"{case.name}: certificate {answers[0]}, key {answers[1]}"
            )
            seen.add(answers[0][0])
    # The matrix reaches answers of every kind, not only refusals.
    assert {"OK", "NOT_FOUND", "PERMISSION_DENIED"} <= seen, seen


def _stub(channel: grpc.aio.Channel, service: str) -> object:
    stubs = {
        "tasks": task_service_pb2_grpc.TaskServiceStub,
        "users": user_service_pb2_grpc.UserServiceStub,
        "lists": task_list_service_pb2_grpc.TaskListServiceStub,
        "api_keys": api_key_service_pb2_grpc.ApiKeyServiceStub,
        "audit": audit_service_pb2_grpc.AuditServiceStub,
        "auth": auth_service_pb2_grpc.AuthServiceStub,
    }
    return stubs[service](channel)

"""Client certificates as credentials: MTLS_IDENTITIES maps SPIFFE IDs and DNS names to accounts.

A second server, with mutual TLS and the mapping, shares the database of the plain `app` on which
each test creates its admin and service accounts; certificates are made by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2

from taskservice.config import ConfigError, load_settings
from taskservice.server import Application, build_server
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import permissions_pb2 as perms
from taskservice.v1 import task_service_pb2 as tasks_pb
from taskservice.v1 import user_pb2
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

"""Transport security: TLS serves encrypted; mutual TLS admits only clients its CA signed."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskservice.config import ConfigError
from taskservice.server import Application, build_server
from taskservice.v1 import user_service_pb2, user_service_pb2_grpc
from tests.conftest import make_settings

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Credential:
    """A key and its certificate, as PEM."""

    key: bytes
    cert: bytes


def _issue(
    name: str,
    issuer: Credential | None = None,
    *,
    ca: bool = False,
    server: bool = False,
    names: Sequence[x509.GeneralName] = (),
) -> Credential:
    """A throwaway EC key and certificate, self-signed or signed by `issuer`.

    A server's certificate names localhost; a client's carries `names` (SPIFFE IDs, DNS names).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key = key
    issuer_name = subject
    if issuer is not None:
        signer_key = serialization.load_pem_private_key(issuer.key, password=None)  # type: ignore[assignment]
        issuer_name = x509.load_pem_x509_certificate(issuer.cert).subject
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    elif names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    return Credential(
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert=cert.public_bytes(serialization.Encoding.PEM),
    )


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate it signed, a client it signed, and a stranger's client."""

    ca: Credential
    server: Credential
    client: Credential
    stranger: Credential
    files: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = _issue("test CA", ca=True)
    other_ca = _issue("another CA", ca=True)
    server = _issue("localhost", ca, server=True)
    directory = tmp_path_factory.mktemp("pki")
    files = {}
    for name, data in {"ca": ca.cert, "cert": server.cert, "key": server.key}.items():
        files[name] = directory / f"{name}.pem"
        files[name].write_bytes(data)
    return Pki(ca, server, _issue("client", ca), _issue("stranger", other_ca), files)


async def _served(database_url: str, pki: Pki, mutual: bool) -> Application:
    settings = make_settings(
        database_url,
        tls_cert_file=pki.files["cert"],
        tls_key_file=pki.files["key"],
        tls_client_ca_file=pki.files["ca"] if mutual else None,
    )
    application = await build_server(settings)
    await application.start()
    return application


@pytest.fixture
async def tls_app(sqlite_url: str, pki: Pki) -> AsyncIterator[Application]:
    application = await _served(sqlite_url, pki, mutual=False)
    yield application
    await application.stop(grace=None)


@pytest.fixture
async def mtls_app(sqlite_url: str, pki: Pki) -> AsyncIterator[Application]:
    application = await _served(sqlite_url, pki, mutual=True)
    yield application
    await application.stop(grace=None)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """Transport security does not depend on the database: SQLite is enough here."""
    path = tmp_path / "tls.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite+aiosqlite:///{path}"


async def _check(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return response.status


def _secure(app: Application, pki: Pki, client: Credential | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.aio.secure_channel(f"localhost:{app.port}", credentials)


async def test_tls_serves_clients_that_trust_the_ca(tls_app: Application, pki: Pki) -> None:
    async with _secure(tls_app, pki, None) as channel:
        assert await _check(channel) == SERVING


async def test_tls_refuses_plaintext_clients(tls_app: Application) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_app.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _check(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_admits_clients_signed_by_its_ca(mtls_app: Application, pki: Pki) -> None:
    async with _secure(mtls_app, pki, pki.client) as channel:
        assert await _check(channel) == SERVING


@pytest.mark.parametrize("who", ["no certificate", "stranger"])
async def test_mutual_tls_refuses_other_clients(mtls_app: Application, pki: Pki, who: str) -> None:
    client = None if who == "no certificate" else pki.stranger
    async with _secure(mtls_app, pki, client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _check(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_unusable_tls_files_stop_the_start(sqlite_url: str, pki: Pki, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS_CERT_FILE"):
        await build_server(
            make_settings(sqlite_url, tls_cert_file=bad, tls_key_file=pki.files["key"])
        )
    with pytest.raises(ValueError, match="must be set together"):
        make_settings(sqlite_url, tls_cert_file=pki.files["cert"])


async def test_a_plaintext_health_port_serves_probes_and_nothing_else(
    sqlite_url: str, pki: Pki
) -> None:
    settings = make_settings(
        sqlite_url, tls_cert_file=pki.files["cert"], tls_key_file=pki.files["key"], health_port=0
    )
    application = await build_server(settings)
    await application.start()
    try:
        assert application.health_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{application.health_port}") as channel:
            assert await _check(channel) == SERVING
            readiness = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=5
            )
            assert readiness.status == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await user_service_pb2_grpc.UserServiceStub(channel).GetMe(
                    user_service_pb2.GetMeRequest(), timeout=5
                )
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await application.stop(grace=None)


def _https(
    app: Application, pki: Pki, client: Credential | None, tmp_path: Path
) -> httpx.AsyncClient:
    context = ssl.create_default_context(cadata=pki.ca.cert.decode())
    if client is not None:
        (tmp_path / "client.pem").write_bytes(client.cert + client.key)
        context.load_cert_chain(tmp_path / "client.pem")
    return httpx.AsyncClient(
        base_url=f"https://localhost:{app.http_port}", verify=context, http2=True
    )


_HEALTH = "/grpc.health.v1.Health/Check"


async def test_the_http_edge_serves_tls_too_with_http2_by_alpn(
    tls_app: Application, pki: Pki, tmp_path: Path
) -> None:
    async with _https(tls_app, pki, None, tmp_path) as http:
        response = await http.post(_HEALTH, json={"service": "liveness"})
    assert response.json() == {"status": "SERVING"}
    assert response.http_version == "HTTP/2"
    async with httpx.AsyncClient() as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.post(f"http://127.0.0.1:{tls_app.http_port}{_HEALTH}", json={})


async def test_an_answer_before_the_body_keeps_the_http2_connection_over_tls(
    tls_app: Application, pki: Pki, tmp_path: Path
) -> None:
    """A 401 sent while a browser-like client still sends its body leaves the connection up."""
    async with _https(tls_app, pki, None, tmp_path) as http:
        for _ in range(3):
            connect = await http.post(
                "/taskservice.v1.TaskService/CreateTask", json={"task": {"title": "x" * 200_000}}
            )
            assert (connect.status_code, connect.json()["code"]) == (401, "unauthenticated")
            rest = await http.post("/api/v1/tasks/", json={"title": "x" * 200_000})
            assert (rest.status_code, rest.json()) == (401, {"detail": "Not authenticated"})
        health = await http.post(_HEALTH, json={"service": "liveness"})
    assert health.json() == {"status": "SERVING"}
    assert health.http_version == "HTTP/2"


async def test_the_http_edge_needs_a_client_certificate_under_mutual_tls(
    mtls_app: Application, pki: Pki, tmp_path: Path
) -> None:
    async with _https(mtls_app, pki, pki.client, tmp_path) as http:
        response = await http.post(_HEALTH, json={"service": "liveness"})
    assert response.json() == {"status": "SERVING"}
    for stranger in (None, pki.stranger):
        async with _https(mtls_app, pki, stranger, tmp_path) as http:
            with pytest.raises(httpx.HTTPError):
                await http.post(_HEALTH, json={"service": "liveness"})

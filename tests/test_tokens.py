"""The authentication interceptor: every token fault is UNAUTHENTICATED and says which."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health_pb2

from taskservice.errors import Unauthenticated
from taskservice.security.tokens import LEEWAY_SECONDS, VERIFIED_CACHE_SIZE, TokenCodec
from taskservice.server import Application, build_server
from taskservice.v1 import auth_service_pb2, user_service_pb2
from tests.conftest import TEST_SIGNING_KEY, Stubs, make_settings, stubs_for
from tests.helpers import PASSWORD, bearer, fails, make_admin, register

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
GET_ME = user_service_pb2.GetMeRequest()


def _claims(user_id: int, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(user_id),
        "ver": 0,
        "jti": "test",
        "iat": now,
        "exp": now + 600,
        "iss": "taskservice",
        "aud": "taskservice",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def _get_me_fails(stubs: Stubs, metadata: tuple[tuple[str, str], ...]) -> str:
    failure = await fails(stubs.users.GetMe(GET_ME, metadata=metadata), UNAUTHENTICATED)
    assert "Traceback" not in failure.message
    return failure.reason


async def test_a_forged_token_with_our_own_key_works(stubs: Stubs) -> None:
    """The control for the faults below: a token built by hand, like theirs, is accepted."""
    account = await register(stubs)
    token = jwt.encode(_claims(account.user.id), TEST_SIGNING_KEY, algorithm="HS256")
    me = await stubs.users.GetMe(GET_ME, metadata=bearer(token))
    assert me.user.id == account.user.id


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "TOKEN_MALFORMED"),
        ((("authorization", "Bearer"),), "TOKEN_MALFORMED"),
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_MALFORMED"),
        ((("authorization", "Bearer " + "a" * 5000),), "TOKEN_MALFORMED"),
    ],
)
async def test_missing_and_malformed_credentials(
    stubs: Stubs, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    assert await _get_me_fails(stubs, metadata) == reason


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"exp": int(time.time()) - 60}, TEST_SIGNING_KEY, "TOKEN_EXPIRED"),
        ({}, "another-key-that-is-long-enough-to-be-valid!", "TOKEN_SIGNATURE_INVALID"),
        ({"iss": "someone-else"}, TEST_SIGNING_KEY, "TOKEN_CLAIMS_INVALID"),
        ({"aud": "another-service"}, TEST_SIGNING_KEY, "TOKEN_CLAIMS_INVALID"),
        ({"exp": None}, TEST_SIGNING_KEY, "TOKEN_CLAIMS_INVALID"),
        ({"iat": None}, TEST_SIGNING_KEY, "TOKEN_CLAIMS_INVALID"),
        ({"ver": None}, TEST_SIGNING_KEY, "TOKEN_CLAIMS_INVALID"),
        ({"sub": "admin"}, TEST_SIGNING_KEY, "TOKEN_CLAIMS_INVALID"),
        ({"iat": int(time.time()) + 3600}, TEST_SIGNING_KEY, "TOKEN_NOT_YET_VALID"),
    ],
)
async def test_token_faults_say_which(
    stubs: Stubs, overrides: dict[str, object], key: str, reason: str
) -> None:
    account = await register(stubs)
    token = jwt.encode(_claims(account.user.id, **overrides), key, algorithm="HS256")
    assert await _get_me_fails(stubs, bearer(token)) == reason


async def test_alg_none_is_refused(stubs: Stubs) -> None:
    account = await register(stubs)
    token = jwt.encode(_claims(account.user.id), None, algorithm="none")
    assert await _get_me_fails(stubs, bearer(token)) == "TOKEN_ALGORITHM_NOT_ALLOWED"


async def test_another_hmac_algorithm_is_refused(stubs: Stubs) -> None:
    account = await register(stubs)
    token = jwt.encode(_claims(account.user.id), TEST_SIGNING_KEY, algorithm="HS512")
    assert await _get_me_fails(stubs, bearer(token)) == "TOKEN_ALGORITHM_NOT_ALLOWED"


async def test_a_token_of_a_deleted_user_is_refused(app: Application, stubs: Stubs) -> None:
    admin = await make_admin(app, stubs)
    account = await register(stubs)
    await stubs.users.DeleteUser(
        user_service_pb2.DeleteUserRequest(id=account.user.id), metadata=admin.metadata
    )
    assert await _get_me_fails(stubs, account.metadata) == "TOKEN_REVOKED"


async def test_a_deleted_users_token_never_passes_for_the_next_user(
    app: Application, stubs: Stubs
) -> None:
    """Ids are never reused: a new user (even an admin) does not inherit an old token."""
    admin = await make_admin(app, stubs)
    mallory = await register(stubs)
    await stubs.users.DeleteUser(
        user_service_pb2.DeleteUserRequest(id=mallory.user.id), metadata=admin.metadata
    )
    successor = await make_admin(app, stubs)
    assert successor.user.id > mallory.user.id
    assert await _get_me_fails(stubs, mallory.metadata) == "TOKEN_REVOKED"
    await fails(
        stubs.users.ListUsers(user_service_pb2.ListUsersRequest(), metadata=mallory.metadata),
        UNAUTHENTICATED,
    )


async def test_a_deactivated_users_token_is_refused_on_the_next_call(
    app: Application, stubs: Stubs
) -> None:
    admin = await make_admin(app, stubs)
    account = await register(stubs)
    await stubs.users.UpdateUser(
        user_service_pb2.UpdateUserRequest(
            user={"id": account.user.id, "is_active": False}, update_mask={"paths": ["is_active"]}
        ),
        metadata=admin.metadata,
    )
    assert await _get_me_fails(stubs, account.metadata) == "TOKEN_REVOKED"
    # Reactivation does not revive tokens issued before the deactivation.
    await stubs.users.UpdateUser(
        user_service_pb2.UpdateUserRequest(
            user={"id": account.user.id, "is_active": True}, update_mask={"paths": ["is_active"]}
        ),
        metadata=admin.metadata,
    )
    assert await _get_me_fails(stubs, account.metadata) == "TOKEN_REVOKED"
    await stubs.auth.Login(
        auth_service_pb2.LoginRequest(email=account.user.email, password=PASSWORD)
    )


async def test_a_demoted_admins_older_tokens_are_refused(app: Application, stubs: Stubs) -> None:
    admin = await make_admin(app, stubs)
    other_admin = await make_admin(app, stubs)
    await stubs.users.UpdateUser(
        user_service_pb2.UpdateUserRequest(
            user={"id": other_admin.user.id, "is_admin": False},
            update_mask={"paths": ["is_admin"]},
        ),
        metadata=admin.metadata,
    )
    assert await _get_me_fails(stubs, other_admin.metadata) == "TOKEN_REVOKED"


@pytest.mark.parametrize("service", ["", "taskservice.v1.UserService"])
async def test_health_needs_no_token(stubs: Stubs, service: str) -> None:
    response = await stubs.health.Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def _write_pem(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(params=["RS256", "ES256"])
async def asymmetric_app(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Application, str]]:
    """A server signing with an RSA or EC key from a PEM file."""
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if request.param == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = _write_pem(tmp_path / "jwt.pem", key)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = make_settings(
        database_url, jwt_algorithm=request.param, jwt_private_key_file=pem, bcrypt_rounds=4
    )
    application = await build_server(settings)
    await application.start()
    yield application, public_pem.decode()
    await application.stop(grace=None)


async def test_asymmetric_keys_sign_tokens_and_refuse_algorithm_confusion(
    asymmetric_app: tuple[Application, str],
) -> None:
    application, public_pem = asymmetric_app
    async with stubs_for(application) as stubs:
        account = await register(stubs)
        header = jwt.get_unverified_header(account.token)
        assert header["alg"] == application.settings.jwt_algorithm
        me = await stubs.users.GetMe(GET_ME, metadata=account.metadata)
        assert me.user.id == account.user.id
        # The classic confusion: an HS256 token keyed with the server's *public* key.
        token = _hs256_with_raw_key(_claims(account.user.id), public_pem.encode())
        assert await _get_me_fails(stubs, bearer(token)) == "TOKEN_ALGORITHM_NOT_ALLOWED"


def _hs256_with_raw_key(claims: dict[str, object], key: bytes) -> str:
    """Sign with HMAC over arbitrary bytes, which PyJWT itself refuses for PEM-looking keys."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def _codec(clock: list[float]) -> TokenCodec:
    return TokenCodec(
        algorithm="HS256",
        signing_key=TEST_SIGNING_KEY,
        verifying_key=TEST_SIGNING_KEY,
        issuer="taskservice",
        audience="taskservice",
        lifetime_seconds=60,
        clock=lambda: clock[0],
    )


def test_a_remembered_token_still_expires() -> None:
    """Verified tokens are remembered, but a remembered one past its expiry is refused."""
    clock = [time.time()]
    codec = _codec(clock)
    token = codec.issue(user_id=7, token_version=0).access_token
    assert codec.verify(token).user_id == 7
    assert codec.verify(token).user_id == 7  # from memory
    clock[0] += 60 + LEEWAY_SECONDS + 1
    with pytest.raises(Unauthenticated) as refused:
        codec.verify(token)
    assert refused.value.reason == "TOKEN_EXPIRED"


def test_the_memory_of_verified_tokens_is_bounded() -> None:
    clock = [time.time()]
    codec = _codec(clock)
    tokens = [
        codec.issue(user_id=n, token_version=0).access_token
        for n in range(1, VERIFIED_CACHE_SIZE + 2)
    ]
    for n, token in enumerate(tokens, start=1):
        assert codec.verify(token).user_id == n
    assert len(codec._verified) == VERIFIED_CACHE_SIZE
    assert tokens[0] not in codec._verified
    assert codec.verify(tokens[0]).user_id == 1  # checked again in full, still valid

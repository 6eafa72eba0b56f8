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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from taskservice.errors import Unauthenticated
from taskservice.security.tokens import (
    LEEWAY_SECONDS,
    NUMERIC_DATE_MAX,
    TOKEN_VERSION_MAX,
    USER_ID_MAX,
    VERIFIED_CACHE_SIZE,
    TokenClaims,
    TokenCodec,
)
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


# Validly signed tokens (our key, issuer and audience) whose claims have the wrong type or range.
# Each used to reach INTERNAL (asyncpg's int64 overflow, int("²"), float(10**400) in the cache),
# pass as another user id ("01", an Arabic-Indic "1") or be taken at face value (exp = true).
_HUGE = 10**400
_TIME_FAULTS: list[object] = [
    _HUGE,
    2**63,
    -(2**63),
    1e300,
    float("nan"),
    float("inf"),
    4102444800.0,  # a float, even a whole one in range
    "4102444800",
    "NaN",
    "Infinity",
    "1e400",
    True,
    False,
    [4102444800],
    {"seconds": 4102444800},
]
CLAIM_FAULTS: dict[str, list[object]] = {
    "sub": [
        "99999999999999999999",
        "9223372036854775808",
        "²",
        "-1",
        "0",
        "01",
        " 1",
        "1 ",
        "1\n",
        "1_000",
        "+1",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() and int() both accept it
        "1.0",
        "",
        1,
        [1],
        ["1"],
        {"id": 1},
        True,
        None,
    ],
    "exp": [*_TIME_FAULTS, None],
    "iat": [*_TIME_FAULTS, None],
    "nbf": [*_TIME_FAULTS, None],
    "ver": [-1, 2**31, 2**63, _HUGE, 0.0, "0", True, False, [0], {}, None],
    "jti": [7, 1.5, True, ["a"], {"a": "b"}, None],
}


@pytest.mark.parametrize("claim", sorted(CLAIM_FAULTS))
async def test_signed_tokens_with_odd_claims_are_claims_invalid(stubs: Stubs, claim: str) -> None:
    """Every claim is checked for type and range before use; none of these reach INTERNAL."""
    account = await register(stubs)
    outcomes = {}
    for value in CLAIM_FAULTS[claim]:
        claims = {**_claims(account.user.id), claim: value}
        token = jwt.encode(claims, TEST_SIGNING_KEY, algorithm="HS256")
        outcomes[repr(value)[:40]] = await _refusal(stubs, token)
    wrong = {
        value: outcome for value, outcome in outcomes.items() if outcome != "TOKEN_CLAIMS_INVALID"
    }
    assert not wrong, f"{claim}: expected TOKEN_CLAIMS_INVALID for every value, got {wrong}"


async def _refusal(stubs: Stubs, token: str) -> str:
    """The reason GetMe refuses `token` with, or a line saying what happened instead."""
    try:
        failure = await fails(stubs.users.GetMe(GET_ME, metadata=bearer(token)), UNAUTHENTICATED)
    except (AssertionError, pytest.fail.Exception) as exc:
        return str(exc).splitlines()[0]
    return failure.reason


async def test_the_largest_user_id_is_a_user_id_that_does_not_exist(stubs: Stubs) -> None:
    """2**63 - 1 is a valid subject: it reaches the database (int64 there) and finds nobody."""
    token = jwt.encode(_claims(2**63 - 1), TEST_SIGNING_KEY, algorithm="HS256")
    assert await _get_me_fails(stubs, bearer(token)) == "TOKEN_REVOKED"


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


# The verifier over arbitrary JSON claim values: a token signed with our key, whatever its claims,
# is either accepted as exactly what it says or refused with the reason the rules give; never any
# other exception. The clock is fixed and the examples derandomised, so every run is the same.
NOW = 1_700_000_000
ABSENT = object()  # a claim left out of the token
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_TIME_EDGES = [-1, 0, NUMERIC_DATE_MAX, NUMERIC_DATE_MAX + 1, 2**63, 10**400, float(NOW), str(NOW)]
#: Values at and past the edges of each claim's rule, beside arbitrary JSON.
EDGES: dict[str, list[object]] = {
    "sub": [
        *(str(n) for n in (-1, 0, 1, USER_ID_MAX, USER_ID_MAX + 1, 10**20)),
        *("²", "\u0661", "01", " 1", "1 ", "1_000", "+1", "1.0", ""),
        1,
        True,
    ],
    "ver": [-1, 0, TOKEN_VERSION_MAX, TOKEN_VERSION_MAX + 1, 2**63, 10**400, 0.0, "0", True],
    "iat": _TIME_EDGES,
    "exp": _TIME_EDGES,
    "nbf": _TIME_EDGES,
    "jti": ["", 7, True],
    "iss": ["", "taskservice", ["taskservice"]],
    "aud": ["", [], ["taskservice", 1], [["taskservice"]], {"taskservice": 1}],
}


#: Per claim: arbitrary JSON, the claim's edge values, null, or the claim left out.
ODD_VALUES = {
    claim: JSON_VALUES | st.sampled_from([*edges, ABSENT, None, float("nan"), float("inf"), False])
    for claim, edges in EDGES.items()
}


#: Times around the latest start of validity the clock skew allows.
NEAR_VALID_FROM = st.integers(-1, 1).map(lambda d: NOW + LEEWAY_SECONDS + d)
#: Expiry times around the last moment the clock skew allows.
EXPIRING = st.integers(-1, 1).map(lambda d: NOW - LEEWAY_SECONDS + d)
#: Values a token of ours could carry, some of them already expired or not yet valid.
PLAUSIBLE = {
    "sub": st.integers(1, USER_ID_MAX).map(str),
    "ver": st.integers(0, TOKEN_VERSION_MAX),
    "jti": st.text(max_size=32),
    "iat": st.integers(NOW - 3600, NOW) | NEAR_VALID_FROM,
    "exp": st.integers(NOW, NOW + 3600) | EXPIRING,
    "nbf": st.just(ABSENT) | st.integers(NOW - 3600, NOW) | NEAR_VALID_FROM,
    "iss": st.just("taskservice"),
    "aud": st.sampled_from(["taskservice", ["taskservice"], ["another", "taskservice"]]),
}


@st.composite
def token_claims(draw: st.DrawFn) -> dict[str, object]:
    """Plausible claims with a few of them (possibly none) replaced by arbitrary JSON values."""
    claims = {name: draw(strategy) for name, strategy in PLAUSIBLE.items()}
    for name in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=2, unique=True)):
        claims[name] = draw(ODD_VALUES[name])
    return {name: value for name, value in claims.items() if value is not ABSENT}


def _is_time(value: object) -> bool:
    return type(value) is int and 0 <= value <= NUMERIC_DATE_MAX


def _is_user_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and str(int(value)) == value
        and 1 <= int(value) <= USER_ID_MAX
    )


def _is_our_audience(value: object) -> bool:
    if isinstance(value, list):
        return all(isinstance(a, str) for a in value) and "taskservice" in value
    return value == "taskservice"


def _expected(claims: dict[str, object]) -> TokenClaims | str:
    """What the rules say about these claims at NOW: the claims to accept, or the refusal reason."""
    sub, ver, jti, iat, exp = (claims.get(name) for name in ("sub", "ver", "jti", "iat", "exp"))
    nbf = claims.get("nbf", 0)
    if not (
        isinstance(sub, str)
        and _is_user_id(sub)
        and type(ver) is int
        and 0 <= ver <= TOKEN_VERSION_MAX
        and isinstance(jti, str)
        and type(iat) is int
        and type(exp) is int
        and type(nbf) is int
        and all(_is_time(value) for value in (iat, exp, nbf))
        and claims.get("iss") == "taskservice"
        and _is_our_audience(claims.get("aud"))
    ):
        return "TOKEN_CLAIMS_INVALID"
    if exp + LEEWAY_SECONDS <= NOW:
        return "TOKEN_EXPIRED"
    if max(iat, nbf) > NOW + LEEWAY_SECONDS:
        return "TOKEN_NOT_YET_VALID"
    return TokenClaims(user_id=int(sub), token_version=ver, token_id=jti, issued_at=iat)


def _outcome(codec: TokenCodec, token: str) -> TokenClaims | str:
    try:
        return codec.verify(token)
    except Unauthenticated as refused:
        return refused.reason


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow],  # a timing check; CI's 2 cores are busy
)
@given(claims=token_claims())
def test_the_verifier_accepts_exactly_well_formed_claims_and_never_crashes(
    claims: dict[str, object],
) -> None:
    """Whatever a token signed with our key says, verify() returns what the rules expect."""
    codec = _codec([float(NOW)])
    token = _hs256_with_raw_key(claims, TEST_SIGNING_KEY.encode())
    expected = _expected(claims)
    event("accepted" if isinstance(expected, TokenClaims) else expected)
    assert _outcome(codec, token) == expected
    assert _outcome(codec, token) == expected  # and the same again, remembered or not

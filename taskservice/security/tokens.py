"""JWT access tokens: issued at login, checked on every call.

Decoding pins the one configured algorithm (never the token's own `alg`, so `none` and HS/RS
confusion are refused), requires every claim we rely on, checks issuer and audience, and allows only
a few seconds of clock skew. Each failure becomes an Unauthenticated error whose reason says which
check failed, without echoing the token.

A valid signature proves who made a token, not that its claims are sane: a token signed with our
key may still carry `sub: "99999999999999999999"` or `exp: 1e400`. So every claim is checked for
its exact type and range before anything uses it (`sub` a canonical ASCII decimal user id, `ver`,
`exp`, `iat` and `nbf` integers in range, `jti` a string); any other value is TOKEN_CLAIMS_INVALID.
PyJWT's own time checks are switched off because they coerce with `int()` (accepting "123", true
and 1.5, and reporting a bad `exp` as a malformed token); the time checks here run on the checked
integers, against the codec's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.types import Options

from taskservice.config import ConfigError, Settings
from taskservice.errors import Unauthenticated

#: Clock skew tolerated on `exp` and `iat`, in seconds.
LEEWAY_SECONDS = 5
#: Verified tokens remembered per process, so a client's next calls skip the signature check.
VERIFIED_CACHE_SIZE = 4096
#: Claims a token must carry to be accepted.
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti", "iss", "aud", "ver")
#: Largest user id a token may name: ids are signed 64-bit integers in the database.
USER_ID_MAX = 2**63 - 1
#: Largest token version: users.token_version is a 32-bit INTEGER column.
TOKEN_VERSION_MAX = 2**31 - 1
#: Latest time `exp`, `iat` or `nbf` may name (9999-12-31T23:59:59Z); also exact as a float.
NUMERIC_DATE_MAX = 253_402_300_799
#: PyJWT checks we make ourselves, strictly, in `_checked_claims`.
_DECODE_OPTIONS: Options = {
    "require": list(REQUIRED_CLAIMS),
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_sub": False,
    "verify_jti": False,
}
#: A user id as `issue` writes it: ASCII digits, no sign, spaces, underscores or leading zero.
_CANONICAL_USER_ID = re.compile(r"[1-9][0-9]{0,18}")
TOKEN_TYPE = "Bearer"  # noqa: S105 - a scheme name, not a secret


@dataclass(frozen=True)
class IssuedToken:
    """A freshly signed access token and how long it lives."""

    access_token: str
    expires_in: int
    token_type: str = TOKEN_TYPE


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: whose it is and which credential generation it belongs to."""

    user_id: int
    token_version: int
    token_id: str
    issued_at: int


class TokenCodec:
    """Signs and verifies access tokens with one algorithm and its keys."""

    def __init__(
        self,
        *,
        algorithm: str,
        signing_key: object,
        verifying_key: object,
        issuer: str,
        audience: str,
        lifetime_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.algorithm = algorithm
        self._signing_key = signing_key
        self._verifying_key = verifying_key
        self.issuer = issuer
        self.audience = audience
        self.lifetime_seconds = lifetime_seconds
        self._clock = clock
        # token -> (claims, exp). Only tokens that passed every check get in; a hit still checks
        # expiry, and revocation is checked by the caller on every call, cached or not.
        self._verified: dict[str, tuple[TokenClaims, int]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCodec:
        """Build the codec, loading PEM key files for RS*/ES*/PS* algorithms."""
        if settings.jwt_algorithm.startswith("HS"):
            if settings.jwt_secret_key is None:
                raise ConfigError("JWT_SECRET_KEY: required")
            secret = settings.jwt_secret_key.get_secret_value()
            signing_key: object = secret
            verifying_key: object = secret
        else:
            signing_key, verifying_key = _load_key_pair(
                settings.jwt_private_key_file, settings.jwt_public_key_file
            )
        codec = cls(
            algorithm=settings.jwt_algorithm,
            signing_key=signing_key,
            verifying_key=verifying_key,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            lifetime_seconds=settings.access_token_expire_minutes * 60,
        )
        try:  # a key that does not fit the algorithm must stop the start, not the first login
            codec.verify(codec.issue(user_id=1, token_version=0).access_token)
        except (jwt.PyJWTError, ValueError, TypeError, Unauthenticated) as exc:
            raise ConfigError(
                f"JWT_ALGORITHM: the configured key cannot sign and verify {settings.jwt_algorithm}"
                f" ({exc})"
            ) from None
        return codec

    def derive_key(self, purpose: bytes) -> bytes:
        """A key for another purpose (page tokens), derived from the signing key material.

        Every replica configured alike derives the same key, and no extra secret is stored.
        """
        if isinstance(self._signing_key, str):
            material = self._signing_key.encode()
        else:
            material = self._signing_key.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        return hmac.new(material, b"taskservice:" + purpose, hashlib.sha256).digest()

    def issue(self, user_id: int, token_version: int) -> IssuedToken:
        """Sign a token for `user_id` at its current credential generation."""
        now = int(self._clock())
        claims = {
            "sub": str(user_id),
            "ver": token_version,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.lifetime_seconds,
            "iss": self.issuer,
            "aud": self.audience,
        }
        token = jwt.encode(claims, self._signing_key, algorithm=self.algorithm)  # type: ignore[arg-type]
        return IssuedToken(access_token=token, expires_in=self.lifetime_seconds)

    def verify(self, token: str) -> TokenClaims:
        """Return the claims of a valid token, or raise Unauthenticated saying what is wrong.

        A token seen before is answered from memory while unexpired: clients send the same token
        on every call, and decoding and checking it again was a tenth of a GetTask's CPU.
        """
        cached = self._verified.get(token)
        if cached is not None:
            if not _expired(cached[1], self._clock()):
                return cached[0]
            del self._verified[token]
            raise _token_expired()
        try:
            payload = jwt.decode(
                token,
                self._verifying_key,  # type: ignore[arg-type]
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                options=_DECODE_OPTIONS,
            )
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(
                "TOKEN_ALGORITHM_NOT_ALLOWED",
                f"access token is not signed with {self.algorithm}",
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                "TOKEN_SIGNATURE_INVALID", "access token signature is invalid"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _claims_invalid(f"access token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise _claims_invalid("access token has the wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise _claims_invalid("access token has the wrong audience") from None
        except jwt.DecodeError:
            raise Unauthenticated(
                "TOKEN_MALFORMED", "access token is not a well-formed JWT"
            ) from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("TOKEN_INVALID", "access token is invalid") from None
        verified, expires_at, not_before = _checked_claims(payload)
        now = self._clock()
        if _expired(expires_at, now):
            raise _token_expired()
        if max(verified.issued_at, not_before) > now + LEEWAY_SECONDS:
            raise Unauthenticated("TOKEN_NOT_YET_VALID", "access token is not valid yet")
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (verified, expires_at)
        return verified


def _checked_claims(payload: dict[str, object]) -> tuple[TokenClaims, int, int]:
    """The claims of a signed payload as (claims, exp, nbf or 0), each of its exact type and range.

    `bool` is a subclass of `int` in Python, hence `type(...) is int` rather than isinstance.
    """
    subject = payload["sub"]
    if not (
        isinstance(subject, str)
        and _CANONICAL_USER_ID.fullmatch(subject)
        and int(subject) <= USER_ID_MAX
    ):
        raise _claims_invalid(f"access token claim 'sub' is not a user id in 1..{USER_ID_MAX}")
    version = payload["ver"]
    if not (type(version) is int and 0 <= version <= TOKEN_VERSION_MAX):
        raise _claims_invalid(
            f"access token claim 'ver' is not an integer in 0..{TOKEN_VERSION_MAX}"
        )
    token_id = payload["jti"]
    if not isinstance(token_id, str):
        raise _claims_invalid("access token claim 'jti' is not a string")
    claims = TokenClaims(
        user_id=int(subject),
        token_version=version,
        token_id=token_id,
        issued_at=_time_claim(payload, "iat"),
    )
    return claims, _time_claim(payload, "exp"), _time_claim(payload, "nbf")


def _time_claim(payload: dict[str, object], name: str) -> int:
    """A NumericDate claim in whole seconds (0 when absent; `exp` and `iat` are required)."""
    value = payload.get(name, 0)
    if type(value) is int and 0 <= value <= NUMERIC_DATE_MAX:
        return value
    raise _claims_invalid(
        f"access token claim {name!r} is not a time in whole seconds in 0..{NUMERIC_DATE_MAX}"
    )


def _expired(expires_at: int, now: float) -> bool:
    """Whether a token expiring at `expires_at` is past it, clock skew allowed for."""
    return now >= expires_at + LEEWAY_SECONDS


def _token_expired() -> Unauthenticated:
    return Unauthenticated("TOKEN_EXPIRED", "access token has expired")


def _claims_invalid(message: str) -> Unauthenticated:
    return Unauthenticated("TOKEN_CLAIMS_INVALID", message)


def _load_key_pair(private_file: Path | None, public_file: Path | None) -> tuple[object, object]:
    """Load the PEM private key (to sign) and public key (to verify; derived when not given)."""
    if private_file is None:
        raise ConfigError("JWT_PRIVATE_KEY_FILE: required for asymmetric JWT algorithms")
    try:
        private_key = serialization.load_pem_private_key(private_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"JWT_PRIVATE_KEY_FILE: cannot load a PEM private key ({exc})") from None
    if public_file is None:
        return private_key, private_key.public_key()
    try:
        public_key = serialization.load_pem_public_key(public_file.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY_FILE: cannot load a PEM public key ({exc})") from None
    return private_key, public_key

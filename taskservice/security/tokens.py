"""JWT access tokens: issued at login, checked on every call.

Decoding pins the one configured algorithm (never the token's own `alg`, so `none` and HS/RS
confusion are refused), requires every claim we rely on, checks issuer and audience, and allows only
a few seconds of clock skew. Each failure becomes an Unauthenticated error whose reason says which
check failed, without echoing the token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization

from taskservice.config import ConfigError, Settings
from taskservice.errors import Unauthenticated

#: Clock skew tolerated on `exp` and `iat`, in seconds.
LEEWAY_SECONDS = 5
#: Verified tokens remembered per process, so a client's next calls skip the signature check.
VERIFIED_CACHE_SIZE = 4096
#: Claims a token must carry to be accepted.
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti", "iss", "aud", "ver")
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
        self._verified: dict[str, tuple[TokenClaims, float]] = {}

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
        now = int(time.time())
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
            if self._clock() <= cached[1] + LEEWAY_SECONDS:
                return cached[0]
            del self._verified[token]
            raise Unauthenticated("TOKEN_EXPIRED", "access token has expired")
        try:
            claims = jwt.decode(
                token,
                self._verifying_key,  # type: ignore[arg-type]
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("TOKEN_EXPIRED", "access token has expired") from None
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
            raise Unauthenticated(
                "TOKEN_CLAIMS_INVALID", f"access token lacks the {exc.claim!r} claim"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                "TOKEN_CLAIMS_INVALID", "access token has the wrong issuer"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "TOKEN_CLAIMS_INVALID", "access token has the wrong audience"
            ) from None
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            raise Unauthenticated("TOKEN_NOT_YET_VALID", "access token is not valid yet") from None
        except jwt.DecodeError:
            raise Unauthenticated(
                "TOKEN_MALFORMED", "access token is not a well-formed JWT"
            ) from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("TOKEN_INVALID", "access token is invalid") from None
        subject, version = claims["sub"], claims["ver"]
        if not (isinstance(subject, str) and subject.isdigit()) or type(version) is not int:
            raise Unauthenticated("TOKEN_CLAIMS_INVALID", "access token claims are malformed")
        verified = TokenClaims(
            user_id=int(subject),
            token_version=version,
            token_id=str(claims["jti"]),
            issued_at=int(claims["iat"]),
        )
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (verified, float(claims["exp"]))
        return verified


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

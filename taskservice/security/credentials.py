"""Opaque high-entropy credentials (API keys, refresh tokens): minted, parsed, hashed, checked.

A credential reads `<kind>_<lookup>_<secret>`: `kind` (`tsk` for API keys, `tsr` for refresh
tokens) lets secret scanners recognise it; `lookup` is 64 random bits in hex, not secret, that
finds the stored row without comparing secrets in the database; `secret` is 256 random bits.
Only an HMAC-SHA256 of the whole credential under a server-side key is stored: the secrets are
random, so a fast keyed hash is as good as bcrypt against guessing, costs microseconds per call
instead of a quarter second, and a stolen table is useless without the key. The stored and the
computed hash are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

#: Prefix of API keys.
API_KEY_KIND = "tsk"
#: Prefix of refresh tokens.
REFRESH_TOKEN_KIND = "tsr"  # noqa: S105 - a prefix, not a secret
#: Random bytes in a credential's public lookup id (16 hex characters).
LOOKUP_BYTES = 8
#: Random bytes of a credential's secret (256 bits; 43 URL-safe characters).
SECRET_BYTES = 32
#: Longest credential accepted for parsing; ours are 65 characters.
MAX_CREDENTIAL_LENGTH = 200
_SHAPE = re.compile(r"(tsk|tsr)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class Minted:
    """A new credential: the full text (shown once), its lookup id and its stored hash."""

    text: str
    lookup: str
    secret_hash: str

    @property
    def prefix(self) -> str:
        """The non-secret start of the credential (`tsk_<lookup>`)."""
        return self.text[: len(API_KEY_KIND) + 1 + 2 * LOOKUP_BYTES]


@dataclass(frozen=True)
class Presented:
    """A credential as a caller sent it, split into its parts."""

    text: str
    kind: str
    lookup: str


class CredentialHasher:
    """Mints credentials and checks presented ones against stored hashes, under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def mint(self, kind: str) -> Minted:
        """A fresh credential of `kind`."""
        lookup = secrets.token_hex(LOOKUP_BYTES)
        text = f"{kind}_{lookup}_{secrets.token_urlsafe(SECRET_BYTES)}"
        return Minted(text, lookup, self.hash(text))

    def hash(self, text: str) -> str:
        """The stored form of a credential: HMAC-SHA256 under the server's key, in hex."""
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def matches(self, presented: Presented, stored_hash: str | None) -> bool:
        """Whether `presented` is the credential `stored_hash` was made from (constant time).

        A None hash (no such row) is compared against a stand-in, so a miss costs what a hit does.
        """
        computed = self.hash(presented.text)
        return hmac.compare_digest(computed, stored_hash or "0" * len(computed)) and (
            stored_hash is not None
        )


def parse(text: str, kind: str) -> Presented | None:
    """The parts of a credential of `kind`, or None when `text` is not one in shape."""
    if len(text) > MAX_CREDENTIAL_LENGTH:
        return None
    match = _SHAPE.fullmatch(text)
    if match is None or match.group(1) != kind:
        return None
    return Presented(text, kind, match.group(2))


def looks_like_api_key(token: str) -> bool:
    """Whether a bearer value claims to be an API key (rather than a JWT)."""
    return token.startswith(API_KEY_KIND + "_")

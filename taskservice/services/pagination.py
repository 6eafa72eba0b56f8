"""Page sizes and opaque keyset page tokens.

A token names the last row a page returned (the key the next query seeks past) and, by a digest,
the scope it was issued for (list kind, caller, filters), sealed with an HMAC so clients can
neither forge nor edit it. It grants nothing by itself: the caller is authorised again on every
page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import TypeVar

from taskservice.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: A page ends before its rows' approximate encoded size passes this, whatever page_size says.
MAX_PAGE_BYTES = 1024 * 1024
#: Longest page token accepted, in characters. The longest this server issues carries a title
#: as its sort key: 200 characters, each up to 12 in JSON (an astral character is two \uXXXX
#: escapes), about 3,300 once encoded. The scope is bound by a digest, never copied in, so a
#: long filter does not lengthen the token.
MAX_PAGE_TOKEN_LENGTH = 4096
_MAC_BYTES = 16

_Row = TypeVar("_Row")
#: What a token seeks past: an id, or for orderings on other columns the last row's sort key
#: values and id (JSON scalars; the list decides what each means).
PageKey = int | list[int | str | None]


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is clamped; negative is refused."""
    if (violation := page_size_violation(requested)) is not None:
        raise InvalidArgument([violation])
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def page_size_violation(requested: int) -> FieldViolation | None:
    """Why `page_size` is refused (it is negative), or None."""
    return FieldViolation("page_size", "must not be negative") if requested < 0 else None


class PageTokens:
    """Seals and opens page tokens with a server-side key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def seal(self, scope: Mapping[str, object], after: PageKey) -> str:
        """A token for the page after key `after`, valid only for `scope`."""
        payload = {"d": _scope_digest(scope), "a": after}
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def open(self, token: str, scope: Mapping[str, object]) -> int | None:
        """The id to seek past, or None for an empty token (the first page)."""
        after = self._open(token, scope)
        if after is None:
            return None
        if type(after) is not int:
            raise _invalid_token()
        return after

    def open_key(self, token: str, scope: Mapping[str, object]) -> list[int | str | None] | None:
        """The sort key values to seek past, or None for an empty token (the first page).

        The caller checks the list's length and types: the MAC proves the server wrote it, not
        that this version of the server reads it the same way.
        """
        after = self._open(token, scope)
        if after is None:
            return None
        if not isinstance(after, list) or not all(
            value is None or type(value) in (int, str) for value in after
        ):
            raise _invalid_token()
        return after

    def _open(self, token: str, scope: Mapping[str, object]) -> object:
        if not token:
            return None
        if len(token) > MAX_PAGE_TOKEN_LENGTH or token.count(".") != 1:
            raise _invalid_token()
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            raise _invalid_token() from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise _invalid_token()
        payload = json.loads(body)
        if "d" in payload:
            bound = payload["d"] == _scope_digest(scope)
        else:  # sealed before scopes were digested: the scope itself is in the token
            bound = payload.get("s") == json.loads(json.dumps(scope))
        if not bound or payload.get("a") is None:
            raise _invalid_token()
        return payload["a"]

    def page(
        self,
        rows: list[_Row],
        size: int,
        scope: Mapping[str, object],
        key: Callable[[_Row], PageKey],
        weight: Callable[[_Row], int] | None = None,
    ) -> tuple[list[_Row], str]:
        """Cut rows fetched with `limit(size + 1)` to one page and seal the next page's token.

        The extra row only tells that more follow; the token is empty on the last page. With a
        `weight` (a row's approximate encoded size), the page also ends before it would pass
        MAX_PAGE_BYTES, so a page of large rows stays under every client's default 4 MiB limit;
        it always holds at least one row.
        """
        if weight is not None:
            total = 0
            for index, row in enumerate(rows[:size]):
                total += weight(row)
                if total > MAX_PAGE_BYTES and index > 0:
                    return rows[:index], self.seal(scope, key(rows[index - 1]))
        if len(rows) <= size:
            return rows, ""
        rows = rows[:size]
        return rows, self.seal(scope, key(rows[-1]))

    def _mac(self, body: bytes) -> bytes:
        # hmac.digest: the same HMAC-SHA256 as hmac.new(...).digest(), in one C call.
        return hmac.digest(self._key, body, "sha256")[:_MAC_BYTES]


def _scope_digest(scope: Mapping[str, object]) -> str:
    """What binds a token to its scope: a digest of the scope's canonical JSON."""
    canonical = json.dumps(scope, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


def _invalid_token() -> InvalidArgument:
    return InvalidArgument.field(
        "page_token", "not a page token this server issued for this request"
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None

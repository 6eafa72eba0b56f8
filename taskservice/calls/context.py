"""What every layer of either edge may need to know about the call in progress."""

from __future__ import annotations

import itertools
import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

#: Metadata key of the request id: taken from the caller when valid, returned in trailers.
REQUEST_ID_KEY = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class CallInfo:
    """The call's request id, and its user once authenticated (for the access log).

    An edge whose servicers get no transport context of their own (the HTTP edge) also notes the
    peer's IP and the `x-forwarded-for` values here, for per-address throttling.
    """

    request_id: str
    user_id: int | None = None
    peer_ip: str | None = None
    forwarded_for: tuple[str, ...] = ()
    #: The permission the call was refused for, if it was (for the denials metric).
    denied_permission: str | None = None
    #: Whether that refusal was PERMISSION_MISSING (the credential lacked it: audited).
    permission_missing: bool = False


#: Generated request ids: a random per-process prefix and a counter, unique without a syscall.
_PROCESS_PREFIX = secrets.token_hex(6)
_sequence = itertools.count(1)

_current: ContextVar[CallInfo | None] = ContextVar("taskservice_call", default=None)


def begin_call(caller_request_id: str | None) -> CallInfo:
    """Start a call's context, keeping the caller's request id if it is a sane one."""
    request_id = caller_request_id
    if request_id is None or not _VALID_REQUEST_ID.fullmatch(request_id):
        request_id = f"{_PROCESS_PREFIX}-{next(_sequence):x}"
    info = CallInfo(request_id)
    _current.set(info)
    return info


def current_call() -> CallInfo | None:
    """The call in progress, if any."""
    return _current.get()

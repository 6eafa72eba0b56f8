"""Small helpers that keep tests about behaviour: users, tokens, and reading rich errors."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from taskservice.server import Application
from taskservice.services.users import ensure_admin
from taskservice.v1 import auth_service_pb2, user_pb2
from tests.conftest import Stubs

PASSWORD = "correct horse battery"
_emails = itertools.count(1)


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Account:
    """A registered user and a valid token for them."""

    user: user_pb2.User
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        """Call metadata authenticating as this user."""
        return bearer(self.token)


def unique_email(prefix: str = "user") -> str:
    """An address no other test user has."""
    return f"{prefix}{next(_emails)}@example.com"


async def register(stubs: Stubs, email: str | None = None, password: str = PASSWORD) -> Account:
    """Register a regular user."""
    response = await stubs.auth.Register(
        auth_service_pb2.RegisterRequest(email=email or unique_email(), password=password)
    )
    return Account(response.user, response.access_token)


async def make_admin(app: Application, stubs: Stubs, email: str | None = None) -> Account:
    """Bootstrap an admin the way `taskservice create-admin` does, then log in as them."""
    email = email or unique_email("admin")
    await ensure_admin(app.database, app.hasher, app.auth_states, email, lambda: PASSWORD)
    response = await stubs.auth.Login(auth_service_pb2.LoginRequest(email=email, password=PASSWORD))
    return Account(response.user, response.access_token)


@dataclass(frozen=True)
class RpcFailure:
    """What a failed call told the caller: code, message and the rich error details."""

    code: grpc.StatusCode
    message: str
    reason: str
    fields: dict[str, str]
    error_metadata: dict[str, str]


async def fails(call: Awaitable[Any], code: grpc.StatusCode) -> RpcFailure:
    """Await a call that must fail with `code`; return what it said."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    reason, fields, error_metadata = "", {}, {}
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == code.value[0]
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                assert info.domain == "taskservice"
                reason, error_metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad_request):
                fields = {v.field: v.description for v in bad_request.field_violations}
    assert reason, "every error carries an ErrorInfo with a reason"
    return RpcFailure(code, error.details() or "", reason, fields, error_metadata)

"""Bugs are reported as bugs: logged once with what they are, never passed off as a client error.

A decoder that fails for a reason other than a malformed body, and a stored password hash bcrypt
cannot read, are faults of the server or its data; the operator must hear of them.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from connectrpc.errors import ConnectError
from google.protobuf import empty_pb2
from sqlalchemy import update

from taskservice.db.models import User
from taskservice.http.codecs import SafeCodec, safe_codecs
from taskservice.server import Application
from taskservice.v1 import auth_service_pb2
from tests.conftest import Stubs
from tests.helpers import PASSWORD, fails, register


class _FailingDecoder:
    """A codec whose decoder has a bug (it raises what no malformed body makes it raise)."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Any) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        raise KeyError("a bug in the decoder")


def test_a_decoder_bug_is_internal_and_logged_but_a_bad_body_is_invalid_argument(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(ConnectError) as bug:
        SafeCodec(_FailingDecoder()).decode(b"", empty_pb2.Empty)  # type: ignore[arg-type]
    assert bug.value.code.name.lower() == "internal"
    assert [record.exc_info is not None for record in caplog.records] == [True]
    caplog.clear()
    for codec in safe_codecs():
        with caplog.at_level(logging.ERROR), pytest.raises(ConnectError) as malformed:
            codec.decode(b"\xff\xfe not a message {", auth_service_pb2.LoginRequest)
        assert malformed.value.code.name.lower() == "invalid_argument"
    assert not caplog.records  # a client's mistake is no error of ours


async def test_a_corrupt_stored_password_hash_fails_the_login_and_is_logged(
    app: Application, stubs: Stubs, caplog: pytest.LogCaptureFixture
) -> None:
    account = await register(stubs)
    async with app.database.write() as session:
        await session.execute(
            update(User).where(User.id == account.user.id).values(password_hash="corrupt")
        )
    app.auth_states.forget_all()
    login = auth_service_pb2.LoginRequest(email=account.user.email, password=PASSWORD)
    with caplog.at_level(logging.ERROR, logger="taskservice.security.passwords"):
        failure = await fails(stubs.auth.Login(login), grpc.StatusCode.UNAUTHENTICATED)
    assert failure.reason == "LOGIN_FAILED"  # as for a wrong password
    assert "not a valid bcrypt hash" in caplog.text
    assert "corrupt" not in caplog.text.replace("is not a valid", "")  # the hash is not logged

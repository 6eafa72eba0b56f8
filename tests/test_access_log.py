"""Observability: one JSON line per call with the fields operators need, and no secrets."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import re
from collections.abc import Iterator

import grpc
import pytest

from taskservice.calls.context import begin_call
from taskservice.log import (
    ACCESS_LINES_BATCH,
    ACCESS_LINES_DELAY_SECONDS,
    JsonFormatter,
    configure_logging,
    info_fields,
)
from taskservice.v1 import auth_service_pb2, user_service_pb2
from tests.conftest import Stubs
from tests.helpers import PASSWORD, fails, register


class _FlushedFirst(io.StringIO):
    """A log stream whose value includes the lines the handlers still hold for this iteration."""

    def getvalue(self) -> str:
        for handler in logging.getLogger().handlers:
            handler.flush()
        return super().getvalue()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything logged, with the production set-up at LOG_LEVEL=DEBUG, JSON format."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    names = ("sqlalchemy.engine", "sqlalchemy.pool", "sqlalchemy.orm", "aiosqlite")
    saved_levels = {name: logging.getLogger(name).level for name in names}
    stream = _FlushedFirst()
    configure_logging("DEBUG", "json", stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def _access_lines(stream: io.StringIO) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [entry for entry in entries if entry["logger"] == "taskservice.access"]


async def test_one_json_line_per_call_with_request_ids_and_no_secrets(
    stubs: Stubs, log_lines: io.StringIO
) -> None:
    account = await register(stubs)
    login = stubs.auth.Login(
        auth_service_pb2.LoginRequest(email=account.user.email, password=PASSWORD),
        metadata=(("x-request-id", "from-the-caller-42"),),
    )
    response = await login
    assert dict(await login.trailing_metadata())["x-request-id"] == "from-the-caller-42"
    me = stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)
    await me
    generated = dict(await me.trailing_metadata())["x-request-id"]
    failure = await fails(
        stubs.auth.Login(auth_service_pb2.LoginRequest(email=account.user.email, password="nope")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert failure.reason == "LOGIN_FAILED"

    lines = _access_lines(log_lines)
    assert [(e["grpc_method"], e["grpc_code"]) for e in lines] == [
        ("Register", "OK"),
        ("Login", "OK"),
        ("GetMe", "OK"),
        ("Login", "UNAUTHENTICATED"),
    ]
    for entry in lines:
        assert entry["grpc_service"] in {"taskservice.v1.AuthService", "taskservice.v1.UserService"}
        assert isinstance(entry["duration_ms"], float)
        assert str(entry["peer"]).startswith("ipv4:127.0.0.1:")
        assert entry["request_id"]
    assert lines[1]["request_id"] == "from-the-caller-42"
    assert lines[2]["request_id"] == generated
    assert lines[2]["user_id"] == account.user.id
    assert lines[0]["user_id"] is None  # anonymous

    everything = log_lines.getvalue()
    for secret in (PASSWORD, "nope", account.token, response.access_token, "$2b$"):
        assert secret not in everything


async def test_errors_carry_the_request_id_in_trailers(stubs: Stubs) -> None:
    call = stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=(("x-request-id", "r-1"),))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert dict(error.value.trailing_metadata())["x-request-id"] == "r-1"


async def test_unusable_request_ids_are_replaced(stubs: Stubs) -> None:
    account = await register(stubs)
    call = stubs.users.GetMe(
        user_service_pb2.GetMeRequest(),
        metadata=(*account.metadata, ("x-request-id", "bad id with spaces" * 20)),
    )
    await call
    request_id = dict(await call.trailing_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", request_id)
    second = stubs.users.GetMe(user_service_pb2.GetMeRequest(), metadata=account.metadata)
    await second
    assert dict(await second.trailing_metadata())["x-request-id"] != request_id


def test_the_direct_access_line_is_the_line_logging_writes(
    log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`info_fields` writes straight to the JSON handler when nothing else listens.

    The line must be the one logging would have written (time aside); with any other handler
    on the root logger (here pytest's, which captures records), records go through logging.
    """
    root = logging.getLogger()
    (json_handler,) = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
    logger = logging.getLogger("taskservice.access")
    fields = {"grpc_code": "OK", "peer": 'ipv4:"quoted"\n', "user_id": None, "duration_ms": 1.5}
    others = [h for h in root.handlers if h is not json_handler]
    for handler in others:
        root.removeHandler(handler)
    made = []
    make_record = logging.Logger.makeRecord
    monkeypatch.setattr(
        logging.Logger, "makeRecord", lambda *a, **k: made.append(1) or make_record(*a, **k)
    )
    try:
        info_fields(logger, "/taskservice.v1.X/Y OK", fields)  # the direct path
        assert not made, "no LogRecord on the direct path"
    finally:
        for handler in others:
            root.addHandler(handler)
    logger.info("%s", "/taskservice.v1.X/Y OK", extra=fields)  # through logging
    if not others:  # no capture handler here: force the logging path by adding one
        root.addHandler(logging.NullHandler())
    try:
        info_fields(logger, "/taskservice.v1.X/Y OK", fields)  # falls back to logging
    finally:
        root.handlers[:] = [h for h in root.handlers if not isinstance(h, logging.NullHandler)]
    direct, logged, fallback = (json.loads(line) for line in log_lines.getvalue().splitlines())
    for entry in (direct, logged, fallback):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", str(entry.pop("time")))
    assert direct == logged == fallback
    assert list(direct) == ["level", "logger", "message", *fields]


async def test_access_lines_are_written_in_batches_in_order() -> None:
    """Lines made on a loop wait a moment and are written together, in the order made.

    A record logged meanwhile (a warning, say) comes after the lines made before it; a full
    batch is written at once, and so is a line made off a loop.
    """
    written = asyncio.Event()

    class Signalling(io.StringIO):
        def write(self, text: str) -> int:
            written.set()
            return super().write(text)

    stream = Signalling()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    configure_logging("INFO", "json", stream)
    logger = logging.getLogger("taskservice.access")

    def messages() -> list[str]:
        return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]

    try:
        info_fields(logger, "first", {})
        info_fields(logger, "second", {})
        assert stream.getvalue() == "", "held for the batch, not written per line"
        logger.warning("a record between")
        info_fields(logger, "third", {})
        assert messages() == ["first", "second", "a record between"]
        written.clear()
        async with asyncio.timeout(5 + ACCESS_LINES_DELAY_SECONDS):
            await written.wait()  # the batch's delay passes: the pending line is written
        assert messages()[3:] == ["third"]
        for n in range(ACCESS_LINES_BATCH):
            info_fields(logger, f"batch {n}", {})
        assert messages()[-1] == f"batch {ACCESS_LINES_BATCH - 1}", "a full batch at once"
        await asyncio.to_thread(info_fields, logger, "off the loop", {})
        assert messages()[-1] == "off the loop"
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_text_lines_made_during_a_call_end_with_its_request_id() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    logger = logging.getLogger("taskservice.test")
    try:

        def during_a_call() -> None:
            begin_call("text-call-7")
            logger.info("inside")

        contextvars.copy_context().run(during_a_call)
        logger.info("outside")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    inside, outside = stream.getvalue().splitlines()
    assert inside.endswith("taskservice.test: inside [request_id=text-call-7]")
    assert outside.endswith("taskservice.test: outside")

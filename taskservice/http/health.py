"""`grpc.health.v1.Health/Check` over Connect (POST and GET) and gRPC-Web, for HTTP probes.

An HTTP load balancer or a Kubernetes `httpGet` probe judges by the HTTP status alone, so here
a name that is not SERVING is answered `unavailable` (HTTP 503, reason NOT_SERVING) instead of
200 with NOT_SERVING in the body; SERVING is 200 with `{"status": "SERVING"}`. The statuses
are the gRPC health servicer's own, so both edges always agree.

    GET /grpc.health.v1.Health/Check?encoding=json&message={"service":"readiness"}

(URL-encode the message). Unknown names are NOT_FOUND, as on gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from connectrpc.codec import Codec
from connectrpc.interceptor import Interceptor
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2

from taskservice import errors
from taskservice.api.health import HealthServicer
from taskservice.calls.errors import rich_status
from taskservice.http.errors import connect_error

SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

_CHECK = MethodInfo(
    name="Check",
    service_name=SERVICE_NAME,
    input=health_pb2.HealthCheckRequest,
    output=health_pb2.HealthCheckResponse,
    idempotency_level=IdempotencyLevel.NO_SIDE_EFFECTS,
    stream_type=StreamType.UNARY,
)


class HealthCheck:
    """Answers Check from the gRPC health servicer's statuses."""

    def __init__(self, servicer: HealthServicer) -> None:
        self._servicer = servicer

    async def check(
        self, request: health_pb2.HealthCheckRequest, ctx: RequestContext
    ) -> health_pb2.HealthCheckResponse:
        """SERVING, or an error an HTTP probe sees as a failure."""
        status = self._servicer.status_of(request.service)
        if status is None:
            raise errors.NotFound("SERVICE_UNKNOWN", f"unknown service {request.service!r}")
        if status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            raise connect_error(
                rich_status(code_pb2.UNAVAILABLE, f"{request.service!r} is {name}", name)
            )
        return health_pb2.HealthCheckResponse(status=status)


class HealthASGIApplication(ConnectASGIApplication[HealthCheck]):
    """Check alone: List and Watch stay gRPC-only (probes need neither)."""

    def __init__(
        self,
        check: HealthCheck,
        *,
        interceptors: Iterable[Interceptor],
        read_max_bytes: int,
        codecs: Iterable[Codec[Any, Any]],
    ) -> None:
        super().__init__(
            service=check,
            endpoints=_endpoints,
            interceptors=interceptors,
            read_max_bytes=read_max_bytes,
            codecs=codecs,
        )

    @property
    def path(self) -> str:
        """The service's URL prefix."""
        return f"/{SERVICE_NAME}"


def _endpoints(check: HealthCheck) -> Mapping[str, Endpoint[Any, Any]]:
    return {f"/{SERVICE_NAME}/Check": Endpoint.unary(method=_CHECK, function=check.check)}

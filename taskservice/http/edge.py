"""Builds the HTTP edge from the same parts as the gRPC server: one function, used by server.py.

Every RPC of every taskservice.v1 service (server streams included: connectrpc
serves them over Connect and gRPC-Web), and health Check, each through the interceptors of
`taskservice.http.calls`, routed by path; every other path goes to the original REST routes
(`taskservice.http.rest`), over the same services; all behind CORS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import Tracer

from taskservice.api.health import HealthMonitor
from taskservice.calls.certificates import CertificateIdentities
from taskservice.calls.limits import UnaryCallLimit
from taskservice.calls.observe import CallMetrics
from taskservice.calls.refusals import RefusalAudit
from taskservice.calls.spans import server_address
from taskservice.config import Settings
from taskservice.http.app import (
    ASGIApp,
    Router,
    ServicerMethods,
    connect_options,
    with_cors,
)
from taskservice.http.calls import (
    ConcurrencyLimit,
    GateAndAuthenticate,
    ObserveAndMapErrors,
)
from taskservice.http.health import HealthASGIApplication, HealthCheck
from taskservice.http.rest.calls import RestCalls
from taskservice.http.rest.routes import RestServices, build_rest_app
from taskservice.http.server import HttpServer, bind_socket
from taskservice.services.auth import AuthService
from taskservice.v1 import (
    api_key_service_connect,
    api_key_service_pb2,
    audit_service_connect,
    audit_service_pb2,
    auth_service_connect,
    auth_service_pb2,
    task_list_service_connect,
    task_list_service_pb2,
    task_service_connect,
    task_service_pb2,
    user_service_connect,
    user_service_pb2,
)

#: Each service: its generated Connect application and its descriptor, by short name.
SERVICES: Mapping[str, tuple[Any, Any]] = {
    "AuthService": (
        auth_service_connect.AuthServiceASGIApplication,
        auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
    ),
    "ApiKeyService": (
        api_key_service_connect.ApiKeyServiceASGIApplication,
        api_key_service_pb2.DESCRIPTOR.services_by_name["ApiKeyService"],
    ),
    "AuditService": (
        audit_service_connect.AuditServiceASGIApplication,
        audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
    ),
    "UserService": (
        user_service_connect.UserServiceASGIApplication,
        user_service_pb2.DESCRIPTOR.services_by_name["UserService"],
    ),
    "TaskService": (
        task_service_connect.TaskServiceASGIApplication,
        task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
    ),
    "TaskListService": (
        task_list_service_connect.TaskListServiceASGIApplication,
        task_list_service_pb2.DESCRIPTOR.services_by_name["TaskListService"],
    ),
}


def build_http_app(
    settings: Settings,
    servicers: Mapping[str, object],
    *,
    auth: AuthService,
    health: HealthMonitor,
    metrics: CallMetrics,
    rest: RestServices,
    refusals: RefusalAudit | None = None,
    tracer: Tracer | None = None,
) -> ASGIApp:
    """The ASGI application: every servicer over Connect and gRPC-Web, and the REST routes.

    Both share the port's MAX_CONCURRENT_RPCS, its outage gate and its CORS policy, and are
    traced with `tracer` (None: not traced).
    """
    in_flight = UnaryCallLimit(settings.max_concurrent_rpcs)
    identities = CertificateIdentities(settings.mtls_identity_accounts)
    address = server_address(settings.http_host)
    interceptors = (
        ObserveAndMapErrors(
            metrics,
            on_database_error=health.suspect,
            refusals=refusals,
            tracer=tracer,
            server_address=address,
        ),
        ConcurrencyLimit(in_flight),
        GateAndAuthenticate(auth, is_ready=lambda: health.ready, identities=identities),
    )
    options = connect_options(interceptors, settings.max_message_bytes)
    apps: list[Any] = [
        application(ServicerMethods(servicers[name], descriptor), **options)
        for name, (application, descriptor) in SERVICES.items()
    ]
    apps.append(HealthASGIApplication(HealthCheck(health.servicer), **options))
    calls = RestCalls(
        auth,
        metrics,
        in_flight,
        is_ready=lambda: health.ready,
        on_database_error=health.suspect,
        trusted_proxies=settings.trusted_proxy_networks,
        max_body_bytes=settings.max_message_bytes,
        identities=identities,
        refusals=refusals,
        tracer=tracer,
        server_address=address,
    )
    return with_cors(Router(apps, build_rest_app(calls, rest)), settings.cors_origins)


def build_http_server(
    settings: Settings,
    servicers: Mapping[str, object],
    *,
    auth: AuthService,
    health: HealthMonitor,
    metrics: CallMetrics,
    rest: RestServices,
    reuse_port: bool = False,
    refusals: RefusalAudit | None = None,
    tracer: Tracer | None = None,
) -> HttpServer:
    """The HTTP edge, bound to HTTP_HOST:HTTP_PORT but not yet serving."""
    assert settings.http_port is not None  # noqa: S101 - callers check HTTP_PORT is on
    app = build_http_app(
        settings,
        servicers,
        auth=auth,
        health=health,
        metrics=metrics,
        rest=rest,
        refusals=refusals,
        tracer=tracer,
    )
    sock = bind_socket(settings.http_host, settings.http_port, reuse_port=reuse_port)
    return HttpServer(app, settings, sock)

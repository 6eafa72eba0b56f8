"""Builds the HTTP edge from the same parts as the gRPC server: one function, used by server.py.

Every RPC of every taskservice.v1 service (server streams included: connectrpc
serves them over Connect and gRPC-Web), and health Check, each through the interceptors of
`taskservice.http.calls`, routed by path, behind CORS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskservice.api.health import HealthMonitor
from taskservice.calls.limits import UnaryCallLimit
from taskservice.calls.observe import CallMetrics
from taskservice.config import Settings
from taskservice.http.app import (
    ASGIApp,
    Router,
    ServicerMethods,
    connect_options,
    with_cors,
)
from taskservice.http.calls import ConcurrencyLimit, GateAndAuthenticate, ObserveAndMapErrors
from taskservice.http.health import HealthASGIApplication, HealthCheck
from taskservice.http.server import HttpServer, bind_socket
from taskservice.services.auth import AuthService
from taskservice.v1 import (
    api_key_service_connect,
    api_key_service_pb2,
    audit_service_connect,
    audit_service_pb2,
    auth_service_connect,
    auth_service_pb2,
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
}


def build_http_app(
    settings: Settings,
    servicers: Mapping[str, object],
    *,
    auth: AuthService,
    health: HealthMonitor,
    metrics: CallMetrics,
) -> ASGIApp:
    """The ASGI application serving every service's servicer over Connect and gRPC-Web."""
    interceptors = (
        ObserveAndMapErrors(metrics, on_database_error=health.suspect),
        ConcurrencyLimit(UnaryCallLimit(settings.max_concurrent_rpcs)),
        GateAndAuthenticate(auth, is_ready=lambda: health.ready),
    )
    options = connect_options(interceptors, settings.max_message_bytes)
    apps: list[Any] = [
        application(ServicerMethods(servicers[name], descriptor), **options)
        for name, (application, descriptor) in SERVICES.items()
    ]
    apps.append(HealthASGIApplication(HealthCheck(health.servicer), **options))
    return with_cors(Router(apps), settings.cors_origins)


def build_http_server(
    settings: Settings,
    servicers: Mapping[str, object],
    *,
    auth: AuthService,
    health: HealthMonitor,
    metrics: CallMetrics,
    reuse_port: bool = False,
) -> HttpServer:
    """The HTTP edge, bound to HTTP_HOST:HTTP_PORT but not yet serving."""
    assert settings.http_port is not None  # noqa: S101 - callers check HTTP_PORT is on
    app = build_http_app(settings, servicers, auth=auth, health=health, metrics=metrics)
    sock = bind_socket(settings.http_host, settings.http_port, reuse_port=reuse_port)
    return HttpServer(app, settings, sock)

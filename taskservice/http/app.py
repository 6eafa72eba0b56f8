"""The HTTP edge's ASGI application: every service's Connect app, routed, behind CORS.

Each generated `*ServiceASGIApplication` is given the gRPC servicer itself, seen through
`ServicerMethods`: Connect's `list_tasks(request, ctx)` is the servicer's
`ListTasks(request, context)`, so both edges run the very same conversion and service call.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from starlette.middleware.cors import CORSMiddleware

from taskservice.http.codecs import safe_codecs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Request headers Connect and gRPC-Web clients send (after connectrpc/cors-go), and ours
#: (REST clients send `authorization` and `content-type`).
ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "content-encoding",
    "accept-encoding",
    "grpc-timeout",
    "grpc-accept-encoding",
    "x-grpc-web",
    "x-user-agent",
    "x-request-id",
)
#: Response headers browser code may read: statuses, details, the request id (a header only, on
#: every protocol), and the REST answers' Retry-After and WWW-Authenticate.
EXPOSED_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
    "retry-after",
    "www-authenticate",
)
#: Methods a cross-origin page may use: Connect's and gRPC-Web's POST and GET, and the REST
#: routes' PUT, PATCH and DELETE.
ALLOWED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: How long browsers may cache a preflight answer, in seconds.
PREFLIGHT_MAX_AGE_SECONDS = 600


def snake_case(name: str) -> str:
    """The Python method name connectrpc's generator gives an RPC (`GetMe` -> `get_me`)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class ServicerMethods:
    """A gRPC servicer's methods under the names the generated Connect application calls.

    The servicer methods get no gRPC context (None): they take the caller from
    `@authenticated` and everything else from the request, so they need none.
    """

    def __init__(self, servicer: object, service: ServiceDescriptor) -> None:
        for method in service.methods:
            rpc = getattr(servicer, method.name)
            setattr(self, snake_case(method.name), _without_context(rpc))


def _without_context(rpc: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def call(request: Any, ctx: Any) -> Any:
        return rpc(request, None)

    return call


class Router:
    """Sends each request to the service application its path names, or else to `fallback`.

    The fallback (the REST routes) answers every other path, 404 included; without one, other
    paths are 404.
    """

    def __init__(self, apps: Iterable[Any], fallback: ASGIApp | None = None) -> None:
        self._apps = {f"{app.path}/": app for app in apps}
        self._fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route by `/package.Service/` prefix; answer lifespan events ourselves."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path: str = scope.get("path", "")
        app = self._apps.get(path[: path.rfind("/") + 1])
        if app is None and self._fallback is not None and scope["type"] == "http":
            await self._fallback(scope, receive, send)
            return
        if app is None or scope["type"] != "http":
            await _plain(send, 404, b"not found\n")
            return
        if _refused_content_type(scope):
            await _plain(send, 415, UNSERVED_CONTENT_TYPE_TEXT)
            return
        await app(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


#: What a refused content type is told: where native gRPC is served, and which gRPC-Web form.
UNSERVED_CONTENT_TYPE_TEXT = (
    b"native gRPC is served on GRPC_PORT, and gRPC-Web here only in binary form "
    b"(application/grpc-web+proto); use Connect (application/json, application/proto) or those\n"
)


def _refused_content_type(scope: Scope) -> bool:
    """Native gRPC and gRPC-Web text, which this edge does not serve.

    connectrpc would take native gRPC (and, mistaking it for that, gRPC-Web text) and, over
    HTTP/1.1, fail with an error whose text names its internals; both are refused up front.
    """
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media.startswith(b"application/grpc") and not (
                media == b"application/grpc-web" or media.startswith(b"application/grpc-web+")
            )
    return False


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def with_cors(app: ASGIApp, origins: Iterable[str]) -> ASGIApp:
    """`app` answering preflights and marking responses for the allowed origins only.

    No origin listed means no cross-origin call is allowed: preflights are refused (400) and
    responses carry no Access-Control-Allow-Origin, so browsers keep them from page code.
    """
    return CORSMiddleware(
        app,
        allow_origins=tuple(origins),
        allow_methods=ALLOWED_METHODS,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=PREFLIGHT_MAX_AGE_SECONDS,
    )


def connect_options(interceptors: Iterable[Any], max_message_bytes: int) -> dict[str, Any]:
    """The options every service application is built with."""
    return {
        "interceptors": tuple(interceptors),
        "read_max_bytes": max_message_bytes,
        "codecs": safe_codecs(),
    }

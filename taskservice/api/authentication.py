"""Authentication: one interceptor checks the bearer token of every call outside an allow-list.

The bearer value may be a JWT access token or an API key (`tsk_...`); telling them apart is the
transport-neutral `AuthService.authenticate`'s business, so every edge accepts both alike.

The interceptor resolves the token to a Principal and hands it to the servicer method, which
declares it as a parameter through `@authenticated` (or `@optionally_authenticated`), so every
handler states whether it needs a caller and receives that caller explicitly.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc

from taskservice.api.call_context import current_call
from taskservice.api.handlers import (
    HandlerInterceptor,
    StreamBehavior,
    UnaryBehavior,
    replace_behavior,
    wrap_unary_stream,
    wrap_unary_unary,
)
from taskservice.errors import Unauthenticated
from taskservice.services.auth import AuthService
from taskservice.services.principal import Principal

#: Methods anyone may call without a token (a refresh token is a credential of its own).
PUBLIC_METHODS = frozenset(
    {
        "/taskservice.v1.AuthService/Login",
        "/taskservice.v1.AuthService/RefreshToken",
        "/taskservice.v1.AuthService/Logout",
    }
)
#: Services anyone may call: health probes and reflection.
PUBLIC_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
#: Methods that work anonymously but use a token when one is sent (an admin creating an admin).
OPTIONAL_AUTH_METHODS = frozenset({"/taskservice.v1.AuthService/Register"})
#: Longest authorization value accepted; our tokens are a few hundred bytes.
MAX_AUTHORIZATION_LENGTH = 4096

_principal: ContextVar[Principal | None] = ContextVar("taskservice_principal", default=None)
#: For a stream: checks the call's token again (expired? revoked?) and returns the caller now.
_recheck: ContextVar[Callable[[], Awaitable[Principal]] | None] = ContextVar(
    "taskservice_recheck", default=None
)

_S = TypeVar("_S")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class AuthInterceptor(HandlerInterceptor):
    """Resolves `authorization: Bearer <token>` to a Principal before the handler runs."""

    def __init__(self, auth: AuthService) -> None:
        super().__init__()
        self._auth = auth

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Let public methods through; make every other one authenticate first."""
        if method in PUBLIC_METHODS or method.startswith(PUBLIC_SERVICE_PREFIXES):
            return handler
        if handler.unary_stream is not None:
            return wrap_unary_stream(handler, self._authenticating_stream)
        if handler.unary_unary is None:  # fail closed: client streams cannot authenticate yet
            return replace_behavior(handler, _refuse_streaming)
        optional = method in OPTIONAL_AUTH_METHODS
        return wrap_unary_unary(handler, lambda inner: self._authenticating(inner, optional))

    def _authenticating_stream(self, inner: StreamBehavior) -> StreamBehavior:
        """Authenticate a server stream when it starts, and let it re-check its token later.

        A stream outlives the checks made when it began: `recheck()` gives the handler the
        means to ask again (token expiry, revocation) as often as it must.
        """

        async def behavior(
            request: object, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[object]:
            token = bearer_token(context.invocation_metadata() or ())
            if token is None:
                raise Unauthenticated(
                    "TOKEN_MISSING",
                    "missing access token: send the metadata 'authorization: Bearer <token>'",
                )
            principal = await self._auth.authenticate(token)
            if (call := current_call()) is not None:
                call.user_id = principal.user_id
            # Not reset afterwards: each call runs in a task (and context) of its own, and a
            # stream gRPC abandons is finalized in another context, where a reset would fail.
            _principal.set(principal)
            _recheck.set(lambda: self._auth.authenticate(token))
            async for response in inner(request, context):
                yield response

        return behavior

    def _authenticating(self, inner: UnaryBehavior, optional: bool) -> UnaryBehavior:
        async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
            token = bearer_token(context.invocation_metadata() or ())
            if token is None and not optional:
                raise Unauthenticated(
                    "TOKEN_MISSING",
                    "missing access token: send the metadata 'authorization: Bearer <token>'",
                )
            principal = None if token is None else await self._auth.authenticate(token)
            if principal is not None and (call := current_call()) is not None:
                call.user_id = principal.user_id
            reset = _principal.set(principal)
            try:
                return await inner(request, context)
            finally:
                _principal.reset(reset)

        return behavior


def bearer_token(metadata: Sequence[Any]) -> str | None:
    """The token of the single `authorization: Bearer` entry, None when there is none."""
    values = [entry.value for entry in metadata if entry.key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise _malformed("send exactly one authorization entry")
    value = values[0]
    if not isinstance(value, str) or len(value) > MAX_AUTHORIZATION_LENGTH:
        raise _malformed("authorization value is not a bearer token")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _malformed("authorization must be 'Bearer <token>'")
    return token.strip()


def _malformed(message: str) -> Unauthenticated:
    return Unauthenticated("TOKEN_MALFORMED", message)


async def _refuse_streaming(_request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "client-streaming calls cannot authenticate"
    )


def recheck() -> Callable[[], Awaitable[Principal]]:
    """For a server stream: a function that authenticates its token again.

    It raises Unauthenticated once the token has expired or been revoked. Outside an
    authenticated stream it always refuses (fail closed).
    """
    check = _recheck.get()
    if check is None:
        return _never_authenticated
    return check


async def _never_authenticated() -> Principal:
    raise Unauthenticated("TOKEN_MISSING", "this stream has no access token to check")


def authenticated(
    method: Callable[[_S, _Req, grpc.aio.ServicerContext, Principal], Awaitable[_Resp]],
) -> Callable[[_S, _Req, grpc.aio.ServicerContext], Awaitable[_Resp]]:
    """Give a servicer method the authenticated caller as its `principal` argument."""

    @functools.wraps(method)
    async def handler(self: _S, request: _Req, context: grpc.aio.ServicerContext) -> _Resp:
        principal = _principal.get()
        if principal is None:  # the interceptor was not installed: refuse rather than guess
            raise Unauthenticated("TOKEN_MISSING", "this method needs an access token")
        return await method(self, request, context, principal)

    return handler


def optionally_authenticated(
    method: Callable[[_S, _Req, grpc.aio.ServicerContext, Principal | None], Awaitable[_Resp]],
) -> Callable[[_S, _Req, grpc.aio.ServicerContext], Awaitable[_Resp]]:
    """Give a servicer method the caller, or None for an anonymous call."""

    @functools.wraps(method)
    async def handler(self: _S, request: _Req, context: grpc.aio.ServicerContext) -> _Resp:
        return await method(self, request, context, _principal.get())

    return handler


def authenticated_stream(
    method: Callable[[_S, _Req, grpc.aio.ServicerContext, Principal], AsyncIterator[_Resp]],
) -> Callable[[_S, _Req, grpc.aio.ServicerContext], AsyncIterator[_Resp]]:
    """`authenticated` for a server-streaming servicer method (an async generator)."""

    @functools.wraps(method)
    async def handler(
        self: _S, request: _Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[_Resp]:
        principal = _principal.get()
        if principal is None:  # the interceptor was not installed: refuse rather than guess
            raise Unauthenticated("TOKEN_MISSING", "this method needs an access token")
        async for response in method(self, request, context, principal):
            yield response

    return handler

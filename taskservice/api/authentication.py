"""Authentication: one interceptor checks the bearer token of every call outside an allow-list.

The bearer value may be a JWT access token or an API key (`tsk_...`); telling them apart is the
transport-neutral `AuthService.authenticate`'s business, so every edge accepts both alike.

The interceptor resolves the token to a Principal and hands it to the servicer method, which
declares it as a parameter through `@authenticated` (or `@optionally_authenticated`), so every
handler states whether it needs a caller and receives that caller explicitly.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from taskservice.api.handlers import (
    HandlerInterceptor,
    StreamBehavior,
    UnaryBehavior,
    replace_behavior,
    wrap_unary_stream,
    wrap_unary_unary,
)
from taskservice.calls.authentication import (
    OPTIONAL_AUTH_METHODS,
    authenticate,
    authenticate_stream,
    is_public,
    parse_authorization,
)
from taskservice.calls.authentication import current_principal as _principal
from taskservice.calls.authentication import recheck as recheck
from taskservice.calls.certificates import CertificateIdentities
from taskservice.errors import Unauthenticated
from taskservice.services.auth import AuthService
from taskservice.services.principal import Principal

_S = TypeVar("_S")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class AuthInterceptor(HandlerInterceptor):
    """Resolves `authorization: Bearer <token>` to a Principal before the handler runs.

    Under mutual TLS a call without a token may be authenticated by its client certificate,
    when `identities` maps it (MTLS_IDENTITIES).
    """

    def __init__(self, auth: AuthService, identities: CertificateIdentities | None = None) -> None:
        super().__init__()
        self._auth = auth
        self._identities = identities or CertificateIdentities({})

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Let public methods through; make every other one authenticate first."""
        if is_public(method):
            return handler
        if handler.unary_stream is not None:
            return wrap_unary_stream(
                handler, lambda inner: self._authenticating_stream(inner, method)
            )
        if handler.unary_unary is None:  # fail closed: client streams cannot authenticate yet
            return replace_behavior(handler, _refuse_streaming)
        optional = method in OPTIONAL_AUTH_METHODS
        return wrap_unary_unary(
            handler, lambda inner: self._authenticating(inner, method, optional)
        )

    def _authenticating_stream(self, inner: StreamBehavior, method: str) -> StreamBehavior:
        """Authenticate a server stream when it starts; `recheck()` lets it ask again later."""

        async def behavior(
            request: object, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[object]:
            token = bearer_token(context.invocation_metadata() or ())
            account = self._certificate_account(context, token)
            await authenticate_stream(self._auth, token, method, account)
            async with contextlib.aclosing(inner(request, context)) as responses:
                async for response in responses:
                    yield response

        return behavior

    def _authenticating(self, inner: UnaryBehavior, method: str, optional: bool) -> UnaryBehavior:
        async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
            token = bearer_token(context.invocation_metadata() or ())
            principal = await authenticate(
                self._auth,
                token,
                method,
                optional=optional,
                certificate_account=self._certificate_account(context, token),
            )
            reset = _principal.set(principal)
            try:
                return await inner(request, context)
            finally:
                _principal.reset(reset)

        return behavior

    def _certificate_account(
        self, context: grpc.aio.ServicerContext, token: str | None
    ) -> int | None:
        """The account the peer's certificate maps to, read only when it could matter."""
        if token is not None or not self._identities:
            return None
        certificates = context.auth_context().get("x509_pem_cert") or [None]
        return self._identities.account_of(certificates[0])


def bearer_token(metadata: Sequence[Any]) -> str | None:
    """The token of the single `authorization: Bearer` entry, None when there is none."""
    return parse_authorization([entry.value for entry in metadata if entry.key == "authorization"])


async def _refuse_streaming(_request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "client-streaming calls cannot authenticate"
    )


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

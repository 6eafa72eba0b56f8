"""Who is calling: the bearer token of a call resolved to a Principal, the same on every edge.

Each edge reads the `authorization` values of its call (gRPC metadata, HTTP headers), and under
mutual TLS the account its client certificate maps to (`taskservice.calls.certificates`), and
hands them here; a bearer token, when sent, wins over the certificate. The Principal found is
put in `current_principal` for the handler, which receives it through
`taskservice.api.authentication.authenticated`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from taskservice.calls.authorization import PUBLIC_METHODS, authorize_method
from taskservice.calls.context import current_call
from taskservice.errors import Unauthenticated
from taskservice.services.auth import AuthService
from taskservice.services.principal import Principal

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

#: The authenticated caller of the call in progress (None: anonymous or not yet known).
current_principal: ContextVar[Principal | None] = ContextVar("taskservice_principal", default=None)
#: For a stream: checks the call's token again (expired? revoked?) and returns the caller now.
current_recheck: ContextVar[Callable[[], Awaitable[Principal]] | None] = ContextVar(
    "taskservice_recheck", default=None
)


def is_public(method: str) -> bool:
    """Whether `method` (`/package.Service/Method`) needs no token at all.

    The contract's public methods (declared `PERMISSION_PUBLIC`; a refresh token is a credential
    of its own) but those that use a token when one is sent, and health and reflection.
    """
    if method in OPTIONAL_AUTH_METHODS:
        return False
    return method in PUBLIC_METHODS or method.startswith(PUBLIC_SERVICE_PREFIXES)


def parse_authorization(values: Sequence[object]) -> str | None:
    """The token of the single `Bearer` authorization value, None when there is none."""
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


async def authenticate(
    auth: AuthService,
    token: str | None,
    method: str,
    *,
    optional: bool,
    certificate_account: int | None = None,
) -> Principal | None:
    """The caller for `token` (else the certificate's account), allowed to call `method`.

    Unauthenticated when a needed credential is missing or bad; PermissionDenied when the
    caller lacks the permission the method declares. The user found is noted on the call for
    the access log.
    """
    check = _credential(auth, token, certificate_account)
    if check is None:
        if optional:
            return None
        raise missing_token()
    principal = await _resolve(check)
    authorize_method(principal, method)
    return principal


@dataclass(frozen=True, slots=True, eq=False)
class Credential:
    """What a call authenticated with (a bearer value, or a certificate's account), to ask again.

    Calling it authenticates the credential anew. `key` names the credential itself, so that
    the streams of one client, which all present the same token, share one check of it
    (`taskservice.watch.credentials`) rather than each asking on its own.
    """

    auth: AuthService
    #: The bearer value (a str), or the account a client certificate maps to (an int).
    key: str | int

    async def __call__(self) -> Principal:
        """The caller this credential stands for now; Unauthenticated once it no longer works."""
        if isinstance(self.key, str):
            return await self.auth.authenticate(self.key)
        return await self.auth.authenticate_certificate(self.key)


def _credential(
    auth: AuthService, token: str | None, certificate_account: int | None
) -> Credential | None:
    """How to authenticate the call (again, for a stream); None when it sent no credential."""
    if token is not None:
        return Credential(auth, token)
    if certificate_account is not None:
        return Credential(auth, certificate_account)
    return None


async def _resolve(check: Callable[[], Awaitable[Principal]]) -> Principal:
    principal = await check()
    if (call := current_call()) is not None:
        call.user_id = principal.user_id
    return principal


def missing_token() -> Unauthenticated:
    """The error for a call that needs a token and sent none."""
    return Unauthenticated(
        "TOKEN_MISSING", "missing access token: send the metadata 'authorization: Bearer <token>'"
    )


async def authenticate_stream(
    auth: AuthService, token: str | None, method: str, certificate_account: int | None = None
) -> Principal:
    """Authenticate a server stream as it starts, and let it re-check its credential later.

    A stream outlives the checks made when it began: the handler gets, through `recheck()`, the
    means to ask again (token expiry, revocation) as often as it must. The context variables are
    not reset: each stream runs in a task (and context) of its own, and a stream abandoned by
    its transport may be finalized in another context, where a reset would fail.
    """
    check = _credential(auth, token, certificate_account)
    if check is None:
        raise missing_token()
    principal = await _resolve(check)
    authorize_method(principal, method)
    current_principal.set(principal)
    current_recheck.set(check)
    return principal


def stream_recheck(
    auth: AuthService, token: str | None, certificate_account: int | None
) -> Credential | None:
    """For an edge that authenticates a stream itself: how the stream checks its caller again."""
    return _credential(auth, token, certificate_account)


def recheck() -> Callable[[], Awaitable[Principal]]:
    """For a server stream: a function that authenticates its token again.

    It raises Unauthenticated once the token has expired or been revoked. Outside an
    authenticated stream it always refuses (fail closed).
    """
    check = current_recheck.get()
    if check is None:
        return _never_authenticated
    return check


async def _never_authenticated() -> Principal:
    raise Unauthenticated("TOKEN_MISSING", "this stream has no access token to check")


def _malformed(message: str) -> Unauthenticated:
    return Unauthenticated("TOKEN_MALFORMED", message)

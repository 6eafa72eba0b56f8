"""What every HTTP call needs, as connectrpc metadata interceptors over `taskservice.calls`.

Leading metadata interceptors run before the request body is read, so a call is numbered,
refused while the database is down and authenticated before any body is parsed, exactly in the
gRPC edge's order; and their `on_end` sees every outcome (library errors such as an oversize
body or a passed deadline included), so each call gets one access-log line and its metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import Token
from dataclasses import dataclass

from connectrpc.errors import ConnectError
from connectrpc.method import StreamType
from connectrpc.request import RequestContext
from opentelemetry.trace import Tracer

from taskservice import errors
from taskservice.api.peer import FORWARDED_FOR_KEY
from taskservice.calls.authentication import (
    OPTIONAL_AUTH_METHODS,
    PUBLIC_SERVICE_PREFIXES,
    authenticate,
    current_principal,
    current_recheck,
    is_public,
    parse_authorization,
    stream_recheck,
)
from taskservice.calls.certificates import CertificateIdentities
from taskservice.calls.context import REQUEST_ID_KEY
from taskservice.calls.errors import database_unavailable, status_of, to_status
from taskservice.calls.limits import UnaryCallLimit
from taskservice.calls.observe import CallMetrics, MethodObserver, Observation
from taskservice.calls.refusals import RefusalAudit
from taskservice.http.errors import code_name, connect_error
from taskservice.http.peer_certificate import certificate_account
from taskservice.services.auth import AuthService
from taskservice.services.principal import Principal

#: Protocol names as access logs and metrics spell them, by request content type (native gRPC
#: is refused on this edge before it gets here: see `taskservice.http.app`).
GRPC_WEB = "grpc-web"
CONNECT = "connect"

_CALL_TYPES = {StreamType.UNARY: "unary", StreamType.SERVER_STREAM: "server_stream"}


def protocol_of(ctx: RequestContext) -> str:
    """Which protocol the call speaks: `connect` or `grpc-web`."""
    content_type = ctx.request_headers.get("content-type", "")
    return GRPC_WEB if content_type.startswith("application/grpc-web") else CONNECT


def method_path(ctx: RequestContext) -> str:
    """The gRPC-style method name, `/package.Service/Method`, as both edges name methods."""
    return f"/{ctx.method.service_name}/{ctx.method.name}"


@dataclass
class _Started:
    observation: Observation
    observer: MethodObserver


class ObserveAndMapErrors:
    """Outermost: request id, the access log and metrics, and every error's one status.

    The request id (the caller's `x-request-id` when sane) is returned once, as an
    `x-request-id` response header, never also as a trailer: Connect and gRPC-Web clients merge
    headers and trailers into an error's metadata, so a copy in each reads back as "id, id".
    Headers suit every protocol: `on_start` runs before anything is sent, so the id is in the
    first (or only) response headers of unary calls and streams alike, ahead of any message.
    (Native gRPC, on its own port, sends it as a trailer: see `taskservice.api.access_log`.)
    Domain errors and unexpected exceptions become the status `taskservice.calls.errors` gives
    them; a library error (a ConnectError) is kept.
    """

    def __init__(
        self,
        metrics: CallMetrics,
        on_database_error: Callable[[], None],
        refusals: RefusalAudit | None = None,
        tracer: Tracer | None = None,
        server_address: str | None = None,
    ) -> None:
        self._metrics = metrics
        self._on_database_error = on_database_error
        self._refusals = refusals
        self._tracer = tracer
        self._server_address = server_address
        self._observers: dict[tuple[str, str, str], MethodObserver] = {}

    async def on_start(self, ctx: RequestContext) -> _Started:
        """Number the call and start observing it."""
        observer = self._observer(ctx)
        headers = ctx.request_headers
        observation = observer.begin(headers.get(REQUEST_ID_KEY), headers)
        if ctx.client_address is not None:  # "address:port", the address maybe IPv6
            observation.info.peer_ip = ctx.client_address.rpartition(":")[0]
        observation.info.forwarded_for = tuple(ctx.request_headers.getall(FORWARDED_FOR_KEY))
        ctx.response_headers[REQUEST_ID_KEY] = observation.info.request_id
        return _Started(observation, observer)

    async def on_end(self, started: _Started, ctx: RequestContext, error: Exception | None) -> None:
        """Log and measure the call; raise the status an error maps to."""
        code = "OK"
        try:
            if error is None:
                return
            mapped = self._mapped(error, method_path(ctx))
            if self._refusals is not None:
                await self._refusals.after_call(method_path(ctx))
            code = code_name(mapped.code) if isinstance(mapped, ConnectError) else "UNKNOWN"
            raise mapped from None
        finally:
            started.observer.end(started.observation, code, ctx.client_address)

    def _mapped(self, error: Exception, method: str) -> Exception:
        if isinstance(error, ConnectError):
            return error
        return connect_error(status_of(error, method, self._on_database_error))

    def _observer(self, ctx: RequestContext) -> MethodObserver:
        method = method_path(ctx)
        call_type = _CALL_TYPES.get(ctx.method.stream_type, "unknown")
        key = (method, call_type, protocol_of(ctx))
        observer = self._observers.get(key)
        if observer is None:
            observer = MethodObserver(
                self._metrics, method, call_type, key[2], self._tracer, self._server_address
            )
            self._observers[key] = observer
        return observer


class ConcurrencyLimit:
    """At most MAX_CONCURRENT_RPCS unary calls in progress on the HTTP edge, as on the gRPC edge.

    A unary call over the limit is refused at once with RESOURCE_EXHAUSTED (reason
    TOO_MANY_CALLS), before its body is read, instead of queueing behind the others. Server
    streams are not counted: WATCH_MAX_STREAMS bounds them (see `taskservice.calls.limits`).
    """

    def __init__(self, limit: UnaryCallLimit) -> None:
        self._limit = limit

    async def on_start(self, ctx: RequestContext) -> bool:
        """Count a unary call in, or refuse it; return whether it was counted."""
        if ctx.method.stream_type != StreamType.UNARY:
            return False
        try:
            self._limit.enter()
        except errors.ResourceExhausted as refused:
            raise connect_error(to_status(refused)) from None
        return True

    async def on_end(self, counted: bool, ctx: RequestContext, error: Exception | None) -> None:
        """Count the call out."""
        if counted:
            self._limit.leave()


class GateAndAuthenticate:
    """Refuse calls while the database is down, then resolve the bearer token to a Principal.

    The Principal goes where `@authenticated` servicer methods read it; health stays
    answerable during an outage, as on the gRPC edge. Without a token, a client certificate
    that `identities` maps authenticates the call.
    """

    def __init__(
        self,
        auth: AuthService,
        is_ready: Callable[[], bool],
        identities: CertificateIdentities | None = None,
    ) -> None:
        self._auth = auth
        self._is_ready = is_ready
        self._identities = identities or CertificateIdentities({})

    async def on_start(self, ctx: RequestContext) -> _Authenticated | None:
        """Gate and authenticate; raise a domain error to refuse the call."""
        method = method_path(ctx)
        if not method.startswith(PUBLIC_SERVICE_PREFIXES) and not self._is_ready():
            raise database_unavailable()
        if is_public(method):
            return None
        token = parse_authorization(ctx.request_headers.getall("authorization"))
        account = certificate_account(self._identities, token)
        principal = await authenticate(
            self._auth,
            token,
            method,
            optional=method in OPTIONAL_AUTH_METHODS,
            certificate_account=account,
        )
        recheck_reset = None
        check = stream_recheck(self._auth, token, account)
        if check is not None and ctx.method.stream_type == StreamType.SERVER_STREAM:
            # A stream outlives this check: it asks again (expiry, revocation) as it goes.
            recheck_reset = current_recheck.set(check)
        return _Authenticated(current_principal.set(principal), recheck_reset)

    async def on_end(
        self, resets: _Authenticated | None, ctx: RequestContext, error: Exception | None
    ) -> None:
        """Forget the caller."""
        if resets is not None:
            current_principal.reset(resets.principal)
            if resets.recheck is not None:
                current_recheck.reset(resets.recheck)


@dataclass
class _Authenticated:
    principal: Token[Principal | None]
    recheck: Token[Callable[[], Awaitable[Principal]] | None] | None

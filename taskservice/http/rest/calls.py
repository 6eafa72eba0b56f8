"""What every REST call needs, from `taskservice.calls`, and the one error mapping to HTTP.

Each route is observed under the name of the RPC it stands for (`GET /api/v1/tasks/` is
`/taskservice.v1.TaskService/ListTasks`) with protocol `rest`, so the access log and the
metrics show one method whichever edge served it. In the gRPC edge's order, a call is numbered
(request id: the caller's `x-request-id` when sane, returned as a response header), counted
against MAX_CONCURRENT_RPCS with the port's Connect and gRPC-Web calls, refused while the
database is down, and authenticated by the same bearer tokens and API keys, before any body
is read.

Errors: a domain error's google.rpc code becomes an HTTP status after AIP-193 and the
conventions (`STATUS_OF_CODE`), with FastAPI's body: `{"detail": "message"}`, or for
a request pydantic refuses FastAPI's 422 list; a service rule's violation 422 with one line naming
each field (`title: ...`), as text, which the original frontend can show (else 400);
401 carries `WWW-Authenticate: Bearer`, 429 `Retry-After`. Where the original API answered
the same situation, its detail text is kept (`ORIGINAL_DETAILS`), for clients that show or
match it. Anything else goes through `unexpected_status`: a database outage is 503, a bug 500
with only a request id.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from google.rpc import code_pb2
from opentelemetry.trace import Tracer
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from taskservice import errors
from taskservice.calls.authentication import authenticate, parse_authorization
from taskservice.calls.certificates import CertificateIdentities
from taskservice.calls.context import REQUEST_ID_KEY
from taskservice.calls.errors import (
    database_unavailable,
    note_refusal,
    status_code,
    unexpected_status,
)
from taskservice.calls.limits import UnaryCallLimit
from taskservice.calls.observe import CallMetrics, MethodObserver
from taskservice.calls.refusals import RefusalAudit
from taskservice.config import IPNetwork
from taskservice.http.peer_certificate import certificate_account
from taskservice.http.rest.bodies import RequestInvalid, from_validation_error, invalid
from taskservice.services.auth import AuthService
from taskservice.services.client_address import client_address
from taskservice.services.principal import Principal

#: The protocol label of REST calls in the access log and the metrics.
PROTOCOL = "rest"

#: HTTP status of each google.rpc code (AIP-193; ALREADY_EXISTS and FAILED_PRECONDITION are
#: 400 as the original answered a taken email and an admin deleting themself).
STATUS_OF_CODE: Mapping[int, int] = {
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ALREADY_EXISTS: 400,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ABORTED: 409,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.CANCELLED: 499,
    code_pb2.INTERNAL: 500,
    code_pb2.UNKNOWN: 500,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DEADLINE_EXCEEDED: 504,
}

#: The original API's detail text for the situations it knew, by our error reason.
ORIGINAL_DETAILS: Mapping[str, str] = {
    "TOKEN_MISSING": "Not authenticated",
    "LOGIN_FAILED": "Incorrect email or password",
    "EMAIL_TAKEN": "Email already registered",
    "ADMIN_REQUIRED": "Insufficient permissions",
    "TASK_NOT_FOUND": "Task not found",
    "USER_NOT_FOUND": "User not found",
}
#: Every other refused credential, as the original words it.
BAD_CREDENTIALS = "Could not validate credentials"
#: Reasons of a task in the trash, which the REST surface no longer shows: 404 like a missing one.
TRASHED_REASONS = frozenset({"TASK_DELETED"})
#: Retry-After for a refusal that names no delay (too many calls in progress), in seconds.
DEFAULT_RETRY_AFTER_SECONDS = 1
#: Largest id a path may name: ids are signed 64-bit integers.
ID_MAX = 2**63 - 1

_INT = TypeAdapter(int)
_Model = TypeVar("_Model", bound=BaseModel)


class BodyTooLarge(Exception):
    """A request body over MAX_MESSAGE_BYTES: 413, read no further."""


@dataclass
class RestCall:
    """One REST request as a route sees it: the request, its caller and its client address."""

    request: Request
    principal: Principal | None
    client_address: str | None
    max_body_bytes: int

    @property
    def caller(self) -> Principal:
        """The authenticated caller (routes that require a token always have one)."""
        if self.principal is None:  # pragma: no cover - the route declared auth="required"
            raise errors.Unauthenticated("TOKEN_MISSING", "missing access token")
        return self.principal

    async def body(self, limit: int | None = None) -> bytes:
        """The request body, refused past MAX_MESSAGE_BYTES (or `limit`) without reading on."""
        most = self.max_body_bytes if limit is None else min(limit, self.max_body_bytes)
        declared = self.request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > most:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > most:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(self, model: type[_Model]) -> _Model:
        """The JSON body as `model`, or RequestInvalid as FastAPI would word it."""
        raw = await self.body()
        media = self.request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media and not (media == "application/json" or media.endswith("+json")):
            raise invalid(
                ["body"],
                "Input should be a valid dictionary or object to extract fields from",
                "model_attributes_type",
            )
        if not raw:
            raise invalid(["body"], "Field required", "missing")
        try:
            document = json.loads(raw)
            if b"\\u" in raw:  # an escaped lone surrogate loads, but is no text to store
                json.dumps(document, ensure_ascii=False).encode()
        except (ValueError, UnicodeError, RecursionError) as exc:
            # RecursionError: nesting deeper than the parser's stack (JSON bombs).
            position = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
            raise invalid(["body", position], "JSON decode error", "json_invalid") from None
        return validated(model, document, ["body"])

    def path_id(self, name: str, not_found: Callable[[], errors.NotFound]) -> int:
        """A path id: 422 when not an integer; NOT_FOUND when no row can have it."""
        value = self.request.path_params[name]
        try:
            number = _INT.validate_python(value)
        except ValidationError as exc:
            raise from_validation_error(exc, ["path", name]) from None
        if not 1 <= number <= ID_MAX:
            raise not_found()
        return number

    def query_int(self, name: str, default: int, maximum: int) -> int:
        """An integer query parameter within 0..maximum, or 422 worded as FastAPI words it."""
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        try:
            number = _INT.validate_python(raw)
        except ValidationError as exc:
            raise from_validation_error(exc, ["query", name]) from None
        if number < 0:
            raise invalid(
                ["query", name], "Input should be greater than or equal to 0", "greater_than_equal"
            )
        if number > maximum:
            raise invalid(
                ["query", name],
                f"Input should be less than or equal to {maximum}",
                "less_than_equal",
            )
        return number


def validated(model: type[_Model], document: object, prefix: Sequence[str]) -> _Model:
    """`document` as `model`, or RequestInvalid with pydantic's items under `prefix`."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix) from None


Handler = Callable[[RestCall], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
#: `lenient`: like `optional`, but a token that fails to authenticate counts as none (the
#: original's registration ignored tokens, and its frontend sends a stale one along).
Auth = Literal["required", "optional", "lenient", "none"]


class RestCalls:
    """Makes Starlette endpoints of route handlers, each observed, limited and authenticated."""

    def __init__(
        self,
        auth: AuthService,
        metrics: CallMetrics,
        in_flight: UnaryCallLimit,
        *,
        is_ready: Callable[[], bool],
        on_database_error: Callable[[], None],
        trusted_proxies: Sequence[IPNetwork],
        max_body_bytes: int,
        identities: CertificateIdentities | None = None,
        refusals: RefusalAudit | None = None,
        tracer: Tracer | None = None,
        server_address: str | None = None,
    ) -> None:
        self._refusals = refusals
        self._auth = auth
        self._identities = identities or CertificateIdentities({})
        self._metrics = metrics
        self._in_flight = in_flight
        self._is_ready = is_ready
        self._on_database_error = on_database_error
        self._trusted = tuple(trusted_proxies)
        self._max_body_bytes = max_body_bytes
        self._tracer = tracer
        self._server_address = server_address

    def endpoint(
        self,
        rpc: str,
        handler: Handler,
        *,
        auth: Auth = "required",
        gated: bool = True,
        locations: Mapping[str, Sequence[str]] | None = None,
        details: Mapping[str, str] | None = None,
    ) -> Endpoint:
        """`handler` as the RPC `rpc` (`/package.Service/Method`) over REST.

        `locations` maps a service's field names (`task.title`) to where the field is in the
        request (`["body", "title"]`), for 422 items; `details` overrides `ORIGINAL_DETAILS`
        for this route. An ungated route (health) is answered while the database is down.
        """
        observer = MethodObserver(
            self._metrics, rpc, "unary", PROTOCOL, self._tracer, self._server_address
        )
        where = dict(locations or {})
        texts = {**ORIGINAL_DETAILS, **(details or {})}

        async def run(request: Request) -> Response:
            observation = observer.begin(request.headers.get(REQUEST_ID_KEY), request.headers)
            info = observation.info
            peer = None
            if request.client is not None:
                info.peer_ip = request.client.host
                peer = f"{request.client.host}:{request.client.port}"
            info.forwarded_for = tuple(request.headers.getlist("x-forwarded-for"))
            code = "OK"
            try:
                try:
                    response = await self._call(request, rpc, handler, auth, gated)
                except Exception as exc:  # every failure is answered; a bug is also logged
                    code, response = self._failure(exc, rpc, where, texts)
                    if self._refusals is not None:
                        await self._refusals.after_call(rpc)
                response.headers[REQUEST_ID_KEY] = info.request_id
                return response
            except asyncio.CancelledError:  # the client went away: logged as on the other edges
                code = "CANCELLED"
                raise
            finally:
                observer.end(observation, code, peer)

        return run

    async def _call(
        self, request: Request, rpc: str, handler: Handler, auth: Auth, gated: bool
    ) -> Response:
        self._in_flight.enter()
        try:
            if gated and not self._is_ready():
                raise database_unavailable()
            principal = None
            if auth != "none":
                token = parse_authorization(request.headers.getlist("authorization"))
                try:
                    principal = await authenticate(
                        self._auth,
                        token,
                        rpc,
                        optional=auth != "required",
                        certificate_account=certificate_account(self._identities, token),
                    )
                except errors.Unauthenticated:
                    if auth != "lenient":
                        raise
            address = client_address(
                request.client.host if request.client else None,
                request.headers.getlist("x-forwarded-for"),
                self._trusted,
            )
            call = RestCall(request, principal, address, self._max_body_bytes)
            return await handler(call)
        finally:
            self._in_flight.leave()

    def _failure(
        self,
        exc: Exception,
        rpc: str,
        locations: Mapping[str, Sequence[str]],
        texts: Mapping[str, str],
    ) -> tuple[str, Response]:
        """The access-log code and the response for an exception a call ended with."""
        if isinstance(exc, RequestInvalid):
            return "INVALID_ARGUMENT", JSONResponse({"detail": exc.items}, status_code=422)
        if isinstance(exc, BodyTooLarge):
            return "RESOURCE_EXHAUSTED", _detail(413, "request body too large")
        if isinstance(exc, errors.DomainError):
            note_refusal(exc)
            return _domain_failure(exc, locations, texts)
        status = unexpected_status(exc, rpc, self._on_database_error)
        code = code_pb2.Code.Name(status.code)
        return code, _detail(STATUS_OF_CODE.get(status.code, 500), status.message)


def _domain_failure(
    error: errors.DomainError,
    locations: Mapping[str, Sequence[str]],
    texts: Mapping[str, str],
) -> tuple[str, Response]:
    code = status_code(error)
    name = code_pb2.Code.Name(code)
    if isinstance(error, errors.InvalidArgument) and all(
        v.field in locations for v in error.violations
    ):
        # The services' own rules, which the original did not have: 422 with one line of text
        # naming each field (`title: 1 to 200 characters after trimming`), not pydantic's list.
        # The original frontend renders `detail` as text wherever it had a rule of its own (a
        # list there crashes its task form); its schema checks still answer FastAPI's list.
        text = "; ".join(f"{locations[v.field][-1]}: {v.description}" for v in error.violations)
        return name, _detail(422, text)
    if error.reason in TRASHED_REASONS:
        return name, _detail(404, texts["TASK_NOT_FOUND"])
    status = STATUS_OF_CODE.get(code, 500)
    headers: dict[str, str] = {}
    text = texts.get(error.reason, error.message)
    if code == code_pb2.UNAUTHENTICATED:
        headers["www-authenticate"] = "Bearer"
        text = texts.get(error.reason, BAD_CREDENTIALS)
    if code == code_pb2.RESOURCE_EXHAUSTED:
        delay = error.retry_after if isinstance(error, errors.ResourceExhausted) else None
        seconds = math.ceil(delay.total_seconds()) if delay else DEFAULT_RETRY_AFTER_SECONDS
        headers["retry-after"] = str(max(seconds, 1))
    return name, _detail(status, text, headers)


def _detail(status: int, text: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": text}, status_code=status, headers=dict(headers or {}))


def json_response(content: Any) -> Response:
    """A 200 JSON answer (creates are 200 too, as the original answers them)."""
    return JSONResponse(content)

"""The original REST routes, each a thin adapter: JSON in, one service call, JSON out.

Paths, methods, bodies and statuses are the original FastAPI application's (creates answer
200; DELETE answers a message; PUT changes only the fields sent, as the original's did). The
differences are deliberate and listed in docs/rest.md: another user's task is 404 like a
missing one, DELETE moves a task to the trash, self-registration never grants admin, and
`skip` and `limit` are bounded (`MAX_SKIP`, `MAX_LIMIT`).

Routing is Starlette's, as FastAPI's is: `/api/v1/tasks` answers 307 to `/api/v1/tasks/`,
an unknown path `{"detail": "Not Found"}` and a wrong method 405 `{"detail": "Method Not
Allowed"}`. A request that names a route and one of its methods exactly is dispatched to it
directly (`RestApp`), without going through Starlette's middleware and route-by-route matching.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl

from grpc_health.v1 import health_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from taskservice.api.health import LIVENESS, HealthServicer
from taskservice.db.models import TaskStatus
from taskservice.db.records import TaskRecord, UserRecord
from taskservice.errors import NotFound
from taskservice.http.rest.bodies import (
    LoginForm,
    Owner,
    RegisterBody,
    TaskCreateBody,
    TaskUpdateBody,
    UserUpdateBody,
    invalid,
    task_out,
    token_out,
    user_out,
)
from taskservice.http.rest.calls import RestCall, RestCalls, json_response, validated
from taskservice.http.rest.openapi import documentation_routes
from taskservice.services.auth import AuthService
from taskservice.services.authorization import ADMIN_ROLE, may_grant
from taskservice.services.pagination import MAX_PAGE_SIZE
from taskservice.services.principal import Principal
from taskservice.services.tasks import TaskService, TaskValues
from taskservice.services.users import UserChanges, UserService

#: Default `limit` of the lists, as the original's.
DEFAULT_LIMIT = 100
#: Largest `limit`: one page of the services' lists (page_size's maximum).
MAX_LIMIT = MAX_PAGE_SIZE
#: Largest `skip`. An offset is served by walking keyset pages from the start, MAX_PAGE_SIZE
#: rows per statement, so its cost grows with `skip`: past this, 422 (use ListTasks' page
#: tokens over Connect or gRPC, which cost the same at any depth).
MAX_SKIP = 10_000
#: The original's answer to GET /health.
HEALTH_BODY = {"status": "ok", "service": "backend"}
#: The login form holds two short fields (and OAuth 2's optional `grant_type`, `scope`,
#: `client_id`, `client_secret`): room for those, nothing an anonymous caller could make costly.
LOGIN_FORM_MAX_BYTES = 16 * 1024
LOGIN_FORM_MAX_FIELDS = 16

AUTH = "/taskservice.v1.AuthService"
USERS = "/taskservice.v1.UserService"
TASKS = "/taskservice.v1.TaskService"
HEALTH = "/grpc.health.v1.Health/Check"

#: Where each field a service may refuse is in the request, for 422 items.
TASK_FIELDS = {
    "id": ("path", "task_id"),
    "task.id": ("path", "task_id"),
    "task.title": ("body", "title"),
    "task.description": ("body", "description"),
    "task.status": ("body", "status"),
}
USER_FIELDS = {
    "id": ("path", "user_id"),
    "user.id": ("path", "user_id"),
    "user.email": ("body", "email"),
}
REGISTER_FIELDS = {"email": ("body", "email"), "password": ("body", "password")}
LOGIN_FIELDS = {"email": ("body", "username"), "password": ("body", "password")}

_Row = TypeVar("_Row")


@dataclass(frozen=True)
class RestServices:
    """The services the routes call: the very objects the other edges' servicers call."""

    auth: AuthService
    users: UserService
    tasks: TaskService
    health: HealthServicer


@dataclass(frozen=True)
class _CallerAsOwner:
    """The authenticated caller as a task's owner: authentication only admits active users."""

    id: int
    email: str
    is_active: bool
    is_admin: bool


def _task_not_found() -> NotFound:
    return NotFound("TASK_NOT_FOUND", "no task has this id")


def _user_not_found() -> NotFound:
    return NotFound("USER_NOT_FOUND", "no user has this id")


async def offset_window(
    fetch: Callable[[int, str], Awaitable[tuple[list[_Row], str]]], skip: int, limit: int
) -> list[_Row]:
    """Rows `skip` to `skip + limit` of a keyset-paged list, fetched page after page.

    `fetch(size, token)` returns a page and the next page's token (empty on the last page).
    At least one page is fetched, even for `limit` 0, so the list's authorization always runs.
    """
    wanted = skip + limit
    rows: list[_Row] = []
    token = ""
    while True:
        page, token = await fetch(max(1, min(MAX_PAGE_SIZE, wanted - len(rows))), token)
        rows.extend(page)
        if len(rows) >= wanted or not token:
            return rows[skip:wanted]


class Routes:
    """The handlers, over the services."""

    def __init__(self, services: RestServices) -> None:
        self._auth = services.auth
        self._users = services.users
        self._tasks = services.tasks
        self._health = services.health

    # --- auth -----------------------------------------------------------------------------

    async def register(self, call: RestCall) -> Response:
        """Create an account; `is_admin` is honoured for an admin's token only (see docs)."""
        body = await call.json_body(RegisterBody)
        caller = call.principal
        # The original let anyone self-register as admin; here the flag is dropped silently
        # (its frontend sends the checkbox) unless the caller could make an admin anyway.
        make_admin = bool(body.is_admin) and caller is not None and may_grant(caller, ADMIN_ROLE)
        signed_in = await self._auth.register(
            caller, body.email, body.password, make_admin, call.client_address
        )
        return json_response(token_out(signed_in.token, signed_in.user))

    async def login(self, call: RestCall) -> Response:
        """OAuth 2's password form: `username` is the email."""
        raw = await call.body(limit=LOGIN_FORM_MAX_BYTES)
        # As FastAPI reads forms: the last of repeated fields; an empty value counts as missing.
        # Anyone may send this form: a bounded body and field count keep its parsing cheap.
        try:
            pairs = parse_qsl(
                raw.decode("utf-8", "replace"),
                keep_blank_values=True,
                max_num_fields=LOGIN_FORM_MAX_FIELDS,
            )
        except ValueError:
            raise invalid(["body"], "Too many form fields", "value_error") from None
        fields = {key: value for key, value in pairs if value != ""}
        form = validated(LoginForm, fields, ["body"])
        signed_in = await self._auth.login(form.username, form.password, call.client_address)
        return json_response(token_out(signed_in.token, signed_in.user))

    # --- users ----------------------------------------------------------------------------

    async def list_users(self, call: RestCall) -> Response:
        """Users oldest first, an admin's `skip`/`limit` window."""
        skip = call.query_int("skip", 0, MAX_SKIP)
        limit = call.query_int("limit", DEFAULT_LIMIT, MAX_LIMIT)

        async def fetch(size: int, token: str) -> tuple[list[UserRecord], str]:
            page = await self._users.list_users(call.caller, size, token)
            return list(page.users), page.next_page_token

        users = await offset_window(fetch, skip, limit)
        return json_response([user_out(user) for user in users])

    async def me(self, call: RestCall) -> Response:
        """The caller."""
        return json_response(user_out(await self._users.get_me(call.caller)))

    async def get_user(self, call: RestCall) -> Response:
        """Any user, for an admin."""
        user_id = call.path_id("user_id", _user_not_found)
        return json_response(user_out(await self._users.get_user(call.caller, user_id)))

    async def update_user(self, call: RestCall) -> Response:
        """Change the fields sent, for an admin."""
        user_id = call.path_id("user_id", _user_not_found)
        body = await call.json_body(UserUpdateBody)
        paths = frozenset(
            name for name in ("email", "is_active", "is_admin") if getattr(body, name) is not None
        )
        if not paths:
            return json_response(user_out(await self._users.get_user(call.caller, user_id)))
        changes = UserChanges(
            paths=paths,
            email=body.email or "",
            is_active=bool(body.is_active),
            is_admin=bool(body.is_admin),
        )
        user = await self._users.update_user(call.caller, user_id, changes)
        return json_response(user_out(user))

    async def delete_user(self, call: RestCall) -> Response:
        """Delete a user and their tasks, for an admin (never themself: 400)."""
        user_id = call.path_id("user_id", _user_not_found)
        await self._users.delete_user(call.caller, user_id)
        return json_response({"message": "User deleted successfully"})

    # --- tasks ----------------------------------------------------------------------------

    async def list_tasks(self, call: RestCall) -> Response:
        """The caller's tasks (an admin's: everyone's), oldest first, a `skip`/`limit` window."""
        skip = call.query_int("skip", 0, MAX_SKIP)
        limit = call.query_int("limit", DEFAULT_LIMIT, MAX_LIMIT)

        async def fetch(size: int, token: str) -> tuple[list[TaskRecord], str]:
            page = await self._tasks.list_tasks(
                call.caller, size, token, None, None, order_by="create_time"
            )
            return list(page.tasks), page.next_page_token

        tasks = await offset_window(fetch, skip, limit)
        return json_response(await self._with_owners(call.caller, tasks))

    async def create_task(self, call: RestCall) -> Response:
        """Create a task for the caller; 200, as the original answers."""
        body = await call.json_body(TaskCreateBody)
        values = TaskValues(
            title=body.title,
            description=body.description or "",
            status=body.status or TaskStatus.TODO,
        )
        task = await self._tasks.create_task(call.caller, values, 0, "")
        return json_response((await self._with_owners(call.caller, [task]))[0])

    async def get_task(self, call: RestCall) -> Response:
        """A task the caller may see and that is not in the trash."""
        task_id = call.path_id("task_id", _task_not_found)
        task, _ = await self._tasks.get_task(call.caller, task_id)
        if task.delete_time is not None:
            raise _task_not_found()
        return json_response((await self._with_owners(call.caller, [task]))[0])

    async def update_task(self, call: RestCall) -> Response:
        """PUT and PATCH alike: change the fields sent (null description: cleared)."""
        task_id = call.path_id("task_id", _task_not_found)
        body = await call.json_body(TaskUpdateBody)
        sent = body.model_fields_set
        paths = frozenset(
            name
            for name in ("title", "description", "status")
            if name in sent and (name == "description" or getattr(body, name) is not None)
        )
        if not paths:
            task, _ = await self._tasks.get_task(call.caller, task_id)
            if task.delete_time is not None:
                raise _task_not_found()
        else:
            values = TaskValues(
                title=body.title or "",
                description=body.description or "",
                status=body.status,
            )
            task = await self._tasks.patch_task(call.caller, task_id, paths, values, "")
        return json_response((await self._with_owners(call.caller, [task]))[0])

    async def delete_task(self, call: RestCall) -> Response:
        """Move the task to the trash: gone from this API, still listed to gRPC callers."""
        task_id = call.path_id("task_id", _task_not_found)
        await self._tasks.delete_task(call.caller, task_id, "")
        return json_response({"message": "Task deleted successfully"})

    async def _with_owners(
        self, caller: Principal, tasks: Sequence[TaskRecord]
    ) -> list[dict[str, object]]:
        """Each task's JSON with its owner: the caller as authenticated, others' in one read.

        The caller's own user is what authentication just read (active, its current role and
        email, kept fresh by the same invalidation): reading it again cost a statement per call.
        """
        owner_ids = {task.owner_id for task in tasks}
        if owner_ids <= {caller.user_id}:
            owners: dict[int, Owner] = {}
            if owner_ids:
                owners[caller.user_id] = (
                    _CallerAsOwner(caller.user_id, caller.email, True, caller.is_admin)
                    if caller.email is not None
                    else await self._users.get_me(caller)
                )
        else:
            owners = await self._users.batch_get_users(caller, owner_ids)
        # A task whose owner was deleted meanwhile went with them (the foreign key cascades).
        return [task_out(task, owners[task.owner_id]) for task in tasks if task.owner_id in owners]

    # --- health ---------------------------------------------------------------------------

    async def health(self, call: RestCall) -> Response:
        """The original's liveness answer; 503 once the server is draining."""
        if self._health.status_of(LIVENESS) != health_pb2.HealthCheckResponse.SERVING:
            return JSONResponse({"detail": "shutting down"}, status_code=503)
        return json_response(HEALTH_BODY)


def build_routes(calls: RestCalls, services: RestServices) -> list[BaseRoute]:
    """Every REST route, each observed as the RPC it stands for."""
    routes = Routes(services)
    task_write = {"locations": TASK_FIELDS}
    user_write = {"locations": USER_FIELDS}

    def route(path: str, methods: Iterable[str], endpoint: Callable[..., object]) -> Route:
        return Route(path, endpoint, methods=list(methods))  # type: ignore[arg-type]

    return [
        route(
            "/api/v1/auth/register",
            ["POST"],
            calls.endpoint(
                f"{AUTH}/Register", routes.register, auth="lenient", locations=REGISTER_FIELDS
            ),
        ),
        route(
            "/api/v1/auth/login",
            ["POST"],
            calls.endpoint(f"{AUTH}/Login", routes.login, auth="none", locations=LOGIN_FIELDS),
        ),
        route("/api/v1/users/", ["GET"], calls.endpoint(f"{USERS}/ListUsers", routes.list_users)),
        route("/api/v1/users/me", ["GET"], calls.endpoint(f"{USERS}/GetMe", routes.me)),
        route(
            "/api/v1/users/{user_id}",
            ["GET"],
            calls.endpoint(f"{USERS}/GetUser", routes.get_user, **user_write),
        ),
        route(
            "/api/v1/users/{user_id}",
            ["PATCH"],
            calls.endpoint(f"{USERS}/UpdateUser", routes.update_user, **user_write),
        ),
        route(
            "/api/v1/users/{user_id}",
            ["DELETE"],
            calls.endpoint(
                f"{USERS}/DeleteUser",
                routes.delete_user,
                details={"SELF_LOCKOUT": "Cannot delete yourself"},
                **user_write,
            ),
        ),
        route(
            "/api/v1/tasks/",
            ["GET"],
            calls.endpoint(f"{TASKS}/ListTasks", routes.list_tasks, **task_write),
        ),
        route(
            "/api/v1/tasks/",
            ["POST"],
            calls.endpoint(f"{TASKS}/CreateTask", routes.create_task, **task_write),
        ),
        route(
            "/api/v1/tasks/{task_id}",
            ["GET"],
            calls.endpoint(f"{TASKS}/GetTask", routes.get_task, **task_write),
        ),
        route(
            "/api/v1/tasks/{task_id}",
            ["PUT", "PATCH"],
            calls.endpoint(f"{TASKS}/PatchTask", routes.update_task, **task_write),
        ),
        route(
            "/api/v1/tasks/{task_id}",
            ["DELETE"],
            calls.endpoint(f"{TASKS}/DeleteTask", routes.delete_task, **task_write),
        ),
        route("/health", ["GET"], calls.endpoint(HEALTH, routes.health, auth="none", gated=False)),
        *documentation_routes(MAX_SKIP, MAX_LIMIT, DEFAULT_LIMIT),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path, wrong method) in FastAPI's shape."""
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for HTTPException only
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=dict(exc.headers or {})
    )


Endpoint = Callable[[Request], Awaitable[Response]]


class RestApp:
    """The REST routes as an ASGI application: exact matches directly, the rest by Starlette.

    A call that names a route's path and one of its methods goes straight to that route's
    endpoint. Starlette's application would get there through its error and exception
    middleware and by trying each route's regular expression in turn, which cost about a fifth
    of a REST GetTask's server CPU (py-spy). A known path with a method it lacks is answered
    405 here; every other request (a path missing its trailing slash, an unknown path, HEAD,
    the documentation's files) goes to `fallback`, the Starlette application of the same
    routes, which answers it as FastAPI does. Endpoints
    answer every exception themselves (`RestCalls.endpoint`), so nothing is lost by skipping
    Starlette's error middleware on the direct path.
    """

    def __init__(self, routes: Iterable[BaseRoute], fallback: Starlette) -> None:
        self._exact: dict[str, dict[str, Endpoint]] = {}
        templated: dict[tuple[str, str], dict[str, Endpoint]] = {}
        for route in routes:
            if not isinstance(route, Route) or route.methods is None:
                continue
            endpoints = {method: route.endpoint for method in route.methods if method != "HEAD"}
            prefix, brace, name = route.path.partition("{")
            if not brace:
                self._exact.setdefault(route.path, {}).update(endpoints)
            elif "{" not in name and name.endswith("}") and prefix.endswith("/"):
                templated.setdefault((prefix, name[:-1]), {}).update(endpoints)
            # Any other shape of path is left to Starlette.
        #: Paths of one parameter as the final segment: (prefix, parameter name, endpoints).
        self._templated = [(prefix, name, found) for (prefix, name), found in templated.items()]
        self._fallback = fallback

    def _match(self, scope: Scope) -> Endpoint | set[str]:
        """The endpoint for the request's path and method, or else the path's methods."""
        path: str = scope["path"]
        method: str = scope["method"]
        allowed: set[str] = set()
        endpoints = self._exact.get(path)
        if endpoints is not None:
            if (endpoint := endpoints.get(method)) is not None:
                return endpoint
            allowed.update(endpoints)
        for prefix, name, endpoints in self._templated:
            if path.startswith(prefix):
                value = path[len(prefix) :]
                if value and "/" not in value:
                    if (endpoint := endpoints.get(method)) is not None:
                        scope["path_params"] = {name: value}
                        return endpoint
                    allowed.update(endpoints)
        return allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch an exact match to its endpoint; hand anything else to Starlette.

        A wrong method is answered here, because Starlette's 405 names only the methods of
        the first route with that path, where HTTP wants every method the path takes.
        """
        match = self._match(scope) if scope["type"] == "http" else set()
        if isinstance(match, set):
            if match and scope["method"] != "HEAD":
                methods = sorted(match | {"HEAD"} if "GET" in match else match)
                response: Response = JSONResponse(
                    {"detail": "Method Not Allowed"},
                    status_code=405,
                    headers={"allow": ", ".join(methods)},
                )
                await response(scope, receive, send)
                return
            await self._fallback(scope, receive, send)
            return
        request = Request(scope, receive, send)
        response = await match(request)
        await response(scope, receive, send)


def build_rest_app(calls: RestCalls, services: RestServices) -> RestApp:
    """The REST application: the routes, with FastAPI's 404, 405 and trailing-slash redirects."""
    routes = build_routes(calls, services)
    fallback = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return RestApp(routes, fallback)

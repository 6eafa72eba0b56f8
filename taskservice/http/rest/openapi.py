"""The REST surface described: an OpenAPI 3.1 document at `/openapi.json`, Swagger UI at `/docs`.

The schemas are the JSON Schemas of the very pydantic models the routes validate and answer
with (`bodies`), so the document says what is served. Swagger UI's files come from the
`openapi-ui-bundles` package and are served from `/docs/assets/`: the page loads nothing from
another origin, and a small script of ours (no inline script, so a strict CSP can allow it)
points it at `/openapi.json` and turns off its online validator badge (which would send the
document to another site).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from openapi_ui_bundles import swagger_ui
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from taskservice.http.rest.bodies import (
    HealthOut,
    HTTPError,
    HTTPValidationError,
    LoginForm,
    MessageOut,
    RegisterBody,
    TaskCreateBody,
    TaskOut,
    TaskUpdateBody,
    TokenOut,
    UserOut,
    UserUpdateBody,
)

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

_REF = "#/components/schemas/{model}"
_MODELS: tuple[type[BaseModel], ...] = (
    RegisterBody,
    LoginForm,
    TaskCreateBody,
    TaskUpdateBody,
    UserUpdateBody,
    UserOut,
    TaskOut,
    TokenOut,
    MessageOut,
    HealthOut,
    HTTPError,
    HTTPValidationError,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref(HTTPError))}


#: What any call may also be answered, besides its own statuses.
_COMMON_ERRORS = {
    "429": _error("Throttled or too many calls in progress; see Retry-After"),
    "503": _error("The database is unavailable; retry with backoff"),
}
_AUTH_ERRORS = {"401": _error("Missing, malformed, expired or revoked token")}
_INVALID = {"422": {"description": "Invalid request", **_json(_ref(HTTPValidationError))}}


def _operation(
    summary: str,
    tag: str,
    ok: dict[str, Any],
    *,
    body: type[BaseModel] | None = None,
    form: bool = False,
    secured: bool = True,
    parameters: list[dict[str, Any]] | None = None,
    errors: dict[str, str] | None = None,
    description: str = "",
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "Successful Response", **_json(ok)}}
    for status, text in (errors or {}).items():
        responses[status] = _error(text)
    if secured:
        responses.update(_AUTH_ERRORS)
    if body is not None or parameters:
        responses.update(_INVALID)
    responses.update(_COMMON_ERRORS)
    operation: dict[str, Any] = {"tags": [tag], "summary": summary, "responses": responses}
    if description:
        operation["description"] = description
    if secured:
        operation["security"] = [{"bearer": []}]
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        media = "application/x-www-form-urlencoded" if form else "application/json"
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": _ref(body)}},
        }
    return operation


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}


def _window(max_skip: int, max_limit: int, default_limit: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "skip",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": max_skip, "default": 0},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {
                "type": "integer",
                "minimum": 0,
                "maximum": max_limit,
                "default": default_limit,
            },
        },
    ]


@functools.cache
def openapi_document(max_skip: int, max_limit: int, default_limit: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the REST routes, with the lists' bounds (built once)."""
    _, definitions = models_json_schema(
        [(model, "validation") for model in _MODELS], ref_template=_REF
    )
    window = _window(max_skip, max_limit, default_limit)
    task_id = [_path_id("task_id")]
    user_id = [_path_id("user_id")]
    task = _ref(TaskOut)
    user = _ref(UserOut)
    admin = {"403": "Not an administrator"}
    missing_task = {"404": "No such task, another user's, or in the trash"}
    missing_user = {"403": "Not an administrator", "404": "No such user"}
    paths = {
        "/api/v1/auth/register": {
            "post": _operation(
                "Register",
                "authentication",
                _ref(TokenOut),
                body=RegisterBody,
                secured=False,
                errors={"400": "Email already registered"},
                description=(
                    "Creates a regular user. `is_admin: true` creates an administrator only "
                    "when the call carries an administrator's token; otherwise it is ignored "
                    "and the answer says `is_admin: false`."
                ),
            )
        },
        "/api/v1/auth/login": {
            "post": _operation(
                "Login",
                "authentication",
                _ref(TokenOut),
                body=LoginForm,
                form=True,
                secured=False,
                errors={"401": "Incorrect email or password"},
                description="OAuth 2's password form; `username` is the email.",
            )
        },
        "/api/v1/users/": {
            "get": _operation(
                "List users",
                "users",
                {"type": "array", "items": user},
                parameters=window,
                errors=admin,
            )
        },
        "/api/v1/users/me": {"get": _operation("The caller", "users", user)},
        "/api/v1/users/{user_id}": {
            "get": _operation("Get a user", "users", user, parameters=user_id, errors=missing_user),
            "patch": _operation(
                "Update a user",
                "users",
                user,
                parameters=user_id,
                body=UserUpdateBody,
                errors={**missing_user, "400": "Email taken, or the last admin or yourself"},
            ),
            "delete": _operation(
                "Delete a user and their tasks",
                "users",
                _ref(MessageOut),
                parameters=user_id,
                errors={**missing_user, "400": "Cannot delete yourself"},
            ),
        },
        "/api/v1/tasks/": {
            "get": _operation(
                "List tasks (an administrator's: everyone's), oldest first",
                "tasks",
                {"type": "array", "items": task},
                parameters=window,
            ),
            "post": _operation("Create a task", "tasks", task, body=TaskCreateBody),
        },
        "/api/v1/tasks/{task_id}": {
            "get": _operation("Get a task", "tasks", task, parameters=task_id, errors=missing_task),
            "put": _operation(
                "Update a task (the fields sent)",
                "tasks",
                task,
                parameters=task_id,
                body=TaskUpdateBody,
                errors=missing_task,
            ),
            "patch": _operation(
                "Update a task (the fields sent)",
                "tasks",
                task,
                parameters=task_id,
                body=TaskUpdateBody,
                errors=missing_task,
            ),
            "delete": _operation(
                "Move a task to the trash",
                "tasks",
                _ref(MessageOut),
                parameters=task_id,
                errors=missing_task,
            ),
        },
        "/health": {"get": _operation("Liveness", "health", _ref(HealthOut), secured=False)},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Task Management API",
            "version": "1.0.0",
            "description": (
                "The original REST API, served by taskservice beside gRPC, Connect and "
                "gRPC-Web. New clients should use those (see docs/rest.md)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


#: The page: Swagger UI's files and our initializer, all from this server.
DOCS_HTML = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>taskservice REST API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{DOCS_PATH}/init.js"></script>
</body>
</html>
"""
INIT_JS = f"""window.ui = SwaggerUIBundle({{
  url: {json.dumps(OPENAPI_PATH)},
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
}});
"""


async def _docs(request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)


async def _init(request: Request) -> Response:
    return Response(INIT_JS, media_type="text/javascript")


def documentation_routes(max_skip: int, max_limit: int, default_limit: int) -> list[BaseRoute]:
    """`/openapi.json`, `/docs`, its initializer and Swagger UI's packaged files."""
    body = json.dumps(
        openapi_document(max_skip, max_limit, default_limit), separators=(",", ":")
    ).encode()

    async def _openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return [
        Route(OPENAPI_PATH, _openapi, methods=["GET"]),
        Route(DOCS_PATH, _docs, methods=["GET"]),
        Route(f"{DOCS_PATH}/init.js", _init, methods=["GET"]),
        Mount(ASSETS_PATH, app=StaticFiles(directory=swagger_ui.static_path)),
    ]

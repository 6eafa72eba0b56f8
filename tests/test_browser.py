"""A real browser (Debian's chromium, driven by Playwright) uses the API through the HTTP edge.

The page (web/src/main.ts, `@connectrpc/connect-web`, bundled by esbuild) is served from an
origin of its own, which the server's CORS_ALLOWED_ORIGINS lists: it registers, logs in, watches
(WatchTasks), creates and lists tasks, reads a request id from headers and trailers and an
error's code and metadata, over Connect, JSON and binary (GET for the read-only calls), and over
gRPC-Web; and it runs the original frontend's REST flows (web/src/rest.ts) with fetch, preflights
and all. The test reads the page's result.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from taskservice.server import Application, build_server
from tests.conftest import IN_CI, make_settings

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
#: Seconds the page may take to finish its calls.
PAGE_TIMEOUT_MS = 30_000


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (the browser test is mandatory when CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if path is None:
        _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def page_bundle() -> Path:
    """web/dist/app.js, built now by `make web` (protoc-gen-es, then esbuild)."""
    if not (ROOT / "node_modules" / ".bin" / "esbuild").exists():
        _unavailable("node tools are not installed (npm ci)")
    subprocess.run(["make", "--no-print-directory", "web"], cwd=ROOT, check=True)  # noqa: S607
    bundle = WEB / "dist" / "app.js"
    assert bundle.is_file()
    return bundle


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the static server's lines out of the test output."""


@pytest.fixture(scope="session")
def page_origin(page_bundle: Path) -> Iterator[str]:
    """The page's own origin: a static file server for web/."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(WEB)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def browser_app(database_url: str, page_origin: str) -> AsyncIterator[Application]:
    app = await build_server(make_settings(database_url, cors_allowed_origins=page_origin))
    await app.start()
    yield app
    await app.stop(grace=None)


async def _run_page(
    app: Application, page_origin: str, chromium: str, protocol: str
) -> tuple[str | None, dict[str, Any], list[tuple[str, str]]]:
    """Open the page for `protocol`; its end state, its result and the requests it made."""
    from playwright.async_api import async_playwright

    api = f"http://127.0.0.1:{app.http_port}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            methods: list[tuple[str, str]] = []
            page.on("request", lambda r: methods.append((r.method, r.url.split("?")[0])))
            await page.goto(f"{page_origin}/index.html?api={api}&protocol={protocol}")
            await page.wait_for_selector(
                "body:not([data-state=running])", state="attached", timeout=PAGE_TIMEOUT_MS
            )
            state = await page.get_attribute("body", "data-state")
            result = json.loads(await page.text_content("#result") or "{}")
        finally:
            await browser.close()
    return state, result, methods


@pytest.mark.parametrize("protocol", ["connect", "connect-proto", "grpc-web"])
async def test_a_browser_page_registers_logs_in_creates_and_lists_tasks(
    browser_app: Application, page_origin: str, chromium: str, protocol: str
) -> None:
    state, result, methods = await _run_page(browser_app, page_origin, chromium, protocol)
    assert state == "done", result
    assert result["protocol"] == protocol
    assert result["email"].startswith(f"browser-{protocol}-")
    assert result["titles"] == ["second from the browser", "first from the browser"]
    # WatchTasks, opened before the creates: both arrive, in order, at the next two revisions.
    assert result["watched"] == ["first from the browser", "second from the browser"]
    assert result["watchedRevisions"] == ["1", "2"]
    # The request id is a header only: clients merge headers and trailers into an error's
    # metadata, where a copy in each would read "id, id".
    assert result["unauthenticated"] == "Unauthenticated"
    assert result["unauthenticatedRequestId"] == f"page-error-{protocol}"
    assert result["notFound"] == "NotFound"
    assert result["errorRequestId"]
    assert "," not in result["errorRequestId"]
    assert result["requestId"] == f"page-{protocol}"
    assert result["trailerRequestId"] == ""
    list_calls = {m for m, url in methods if url.endswith("TaskService/ListTasks")}
    assert list_calls == ({"POST"} if protocol == "grpc-web" else {"GET"})


async def test_a_browser_page_runs_the_original_frontends_rest_flows_from_another_origin(
    browser_app: Application, page_origin: str, chromium: str
) -> None:
    state, result, methods = await _run_page(browser_app, page_origin, chromium, "rest")
    assert state == "done", result
    assert result["registeredAdmin"] is False  # the checkbox does not make anyone an admin
    assert result["loginUserId"] == result["userId"]
    assert result["owner"] == result["email"]
    assert result["edited"] == {"title": "edited over REST", "status": "done"}
    assert result["titles"] == ["edited over REST", "to delete"]
    assert result["deleted"] == "Task deleted successfully"
    assert result["titlesAfter"] == ["edited over REST"]
    assert result["notFound"] == {"status": 404, "detail": "Task not found"}
    assert result["unauthenticated"] == 401
    assert result["errorRequestId"]
    # A JSON body, PUT, DELETE and Authorization each need a preflight: the browser made these
    # calls (it would have refused them on a refused preflight), cross-origin.
    api = f"http://127.0.0.1:{browser_app.http_port}"
    assert {method for method, url in methods if url.startswith(api)} >= {"PUT", "DELETE"}


async def test_the_docs_page_renders_every_rest_operation_with_nothing_from_elsewhere(
    browser_app: Application, chromium: str
) -> None:
    from playwright.async_api import Route, async_playwright

    api = f"http://127.0.0.1:{browser_app.http_port}"
    elsewhere: list[str] = []

    async def only_this_server(route: Route) -> None:
        if route.request.url.startswith(api):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.route("**/*", only_this_server)
            await page.goto(f"{api}/docs")
            await page.wait_for_selector(".opblock-summary-path", timeout=PAGE_TIMEOUT_MS)
            operations = await page.locator(".opblock").count()
            title = await page.text_content(".info .title")
        finally:
            await browser.close()
    assert elsewhere == []
    assert operations == 14
    assert title is not None
    assert "Task Management API" in title

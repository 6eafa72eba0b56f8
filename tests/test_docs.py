"""The documents describe the software as it is: every setting in its table, every command run.

- docs/configuration.md's table holds exactly the fields of `Settings`, each with its default;
  `.env.example` mentions every one too.
- Every fenced shell block of README.md and docs/*.md runs, as bash with `-euo pipefail`, against
  a real `taskservice serve` (migrated, on a fresh SQLite database per document, on free ports
  that replace 50051 and 8080 in the commands). Blocks of one document run in order against its
  server. The README starts from an empty database; each docs/*.md starts where the README's
  first example leaves a reader: you@example.com (password `correct horse battery`) owns task 1,
  and `$TOKEN` is an access token of theirs. A block fails when it exits non-zero or prints a
  Connect error.
- `<!-- runs until stopped -->` just above a block: it is started, must reach health SERVING when
  it starts a server (else stay up for a few seconds), and is then stopped with SIGTERM.
- `<!-- not-run: REASON -->` just above a block: not run. REASON must be one of NOT_RUN, and every
  command of the block must be of the kind that reason names.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from bench.processes import TaskService, free_port
from bench.run import STORM, migrate, server_environment
from bench.run import _arguments as _bench_arguments
from bench.scenarios import SCENARIOS
from taskservice.config import Settings, normalize_database_url
from taskservice.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell"}
BASH = shutil.which("bash") or "/bin/bash"

#: The only reasons a shell block may give for not running, and the command every one of its
#: lines must then start with (after any VAR=value prefixes).
NOT_RUN = {
    "needs a Kubernetes cluster": ("kubectl", "grpcurl"),
    "needs Docker and its registry": ("docker",),
    "runs the whole test suite": ("make test",),
    "a benchmark: minutes of load on the machine": ("make bench",),
}
RUNS_UNTIL_STOPPED = "runs until stopped"

#: The account the documents' examples use, made by the fixture, and its first task (id 1).
EMAIL, PASSWORD = "you@example.com", "correct horse battery"

BLOCK_TIMEOUT = 180.0


# --- settings -------------------------------------------------------------------------------


def _configuration_table() -> dict[str, str]:
    """docs/configuration.md's settings table: variable -> default, as written."""
    rows = {}
    for line in (ROOT / "docs/configuration.md").read_text().splitlines():
        match = re.match(r"\| `([A-Z0-9_]+)` \| ([^|]*) \|", line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} has two rows"
            rows[match.group(1)] = match.group(2).strip().strip("`")
    return rows


def _default_as_documented(default: Any) -> set[str]:
    """How a field's default is spelled in the table."""
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if default is None:
        return {"unset", "derived"}
    if default == "":
        return {"empty"}
    if isinstance(default, bool):
        return {str(default).lower()}
    if isinstance(default, float) and default.is_integer():
        return {str(int(default))}
    return {str(default)}


def test_the_configuration_table_names_every_setting_and_nothing_else() -> None:
    documented = set(_configuration_table())
    fields = {name.upper() for name in Settings.model_fields}
    assert not fields - documented, f"docs/configuration.md lacks {sorted(fields - documented)}"
    assert not documented - fields, f"no such setting: {sorted(documented - fields)}"


def test_the_configuration_table_gives_every_default() -> None:
    table = _configuration_table()
    wrong = {
        name.upper(): (table[name.upper()], field.default)
        for name, field in Settings.model_fields.items()
        if table.get(name.upper()) not in _default_as_documented(field.default)
    }
    assert not wrong, f"documented default differs from Settings: {wrong}"


def test_env_example_mentions_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in text]
    assert not missing, f".env.example does not mention {missing}"


# --- shell blocks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block and the marker comment just above it, if any."""

    document: str
    line: int
    language: str
    text: str
    marker: str | None

    @property
    def commands(self) -> list[str]:
        """Its command lines (continuations joined), without comments or blank lines."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def blocks(document: str) -> list[Block]:
    lines = (ROOT / document).read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        above = lines[index - 1].strip() if index else ""
        marker = re.fullmatch(r"<!-- (.+) -->", above)
        found.append(
            Block(
                document=document,
                line=index + 1,
                language=opening.group(1),
                text="\n".join(lines[index + 1 : end]),
                marker=marker.group(1) if marker else None,
            )
        )
        index = end + 1
    return found


SHELL_BLOCKS = [block for document in DOCUMENTS for block in blocks(document)]
SHELL_BLOCKS = [block for block in SHELL_BLOCKS if block.language in SHELL]


def _not_run_reason(block: Block) -> str | None:
    if block.marker and block.marker.startswith("not-run:"):
        return block.marker.removeprefix("not-run:").strip()
    return None


def _program(command: str) -> str:
    """A command line without its leading VAR=value assignments."""
    return re.sub(r"^(\s*[A-Z_][A-Z0-9_]*=(\"[^\"]*\"|'[^']*'|\S*)\s+)+", "", command).strip()


def test_shell_blocks_run_or_say_why() -> None:
    """Markers are the known ones, on shell blocks; a not-run reason fits every command."""
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.marker is None:
                continue
            assert block.language in SHELL, f"{block}: a marker on a {block.language} block"
            reason = _not_run_reason(block)
            if reason is None:
                assert block.marker == RUNS_UNTIL_STOPPED, f"{block}: unknown marker"
                continue
            assert reason in NOT_RUN, f"{block}: not-run reason {reason!r} is not in {NOT_RUN}"
            for command in block.commands:
                assert _program(command).startswith(NOT_RUN[reason]), (
                    f"{block}: {command!r} does not fit the reason {reason!r}"
                )
    skipped = [block for block in SHELL_BLOCKS if _not_run_reason(block)]
    assert len(skipped) <= len(SHELL_BLOCKS) // 3, "most shell blocks must run"


def test_benchmark_commands_take_real_options() -> None:
    """`make bench` blocks are not run, but their BENCH_ARGS must parse and name real scenarios."""
    names = {scenario.name for scenario in SCENARIOS} | {STORM}
    checked = 0
    for block in SHELL_BLOCKS:
        for command in block.commands:
            if not _program(command).startswith("make bench") or "make bench-watch" in command:
                continue
            arguments = re.search(r'BENCH_ARGS="([^"]*)"', command)
            options = _bench_arguments(shlex.split(arguments.group(1)) if arguments else [])
            assert set(options.only or ()) <= names, f"{block}: no such scenario in {command!r}"
            checked += 1
    assert checked, "the documents show how to run `make bench`"


@dataclass
class DocServer:
    """A document's server, its environment, and the access token of you@example.com."""

    service: TaskService
    environment: dict[str, str]
    token: str


def _tool_path() -> str:
    """PATH with this environment's grpcurl and uv, and buf from node_modules, in front."""
    extra = [str(Path(sys.executable).parent), str(ROOT / "node_modules/.bin")]
    extra.append(str(ROOT / ".cache/uv-bootstrap/bin"))
    return os.pathsep.join([*extra, os.environ.get("PATH", "")])


async def _your_account(target: str) -> str:
    """Register you@example.com and create task 1; return the access token."""
    async with grpc.aio.insecure_channel(target) as channel:
        auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        registered = await auth.Register(
            auth_service_pb2.RegisterRequest(email=EMAIL, password=PASSWORD)
        )
        token = registered.access_token
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        created = await tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(title="Write the docs", labels=["home"])
            ),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        assert created.task.id == 1
        return token


@pytest.fixture(scope="module")
def doc_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DocServer]]:
    """One server per document, started when the document's first block needs it."""
    servers: dict[str, DocServer] = {}

    def start(document: str) -> DocServer:
        if document not in servers:
            workdir = tmp_path_factory.mktemp("docs")
            url = f"sqlite+aiosqlite:///{workdir / 'taskservice.db'}"
            environment = {
                **server_environment(normalize_database_url(url), bcrypt_rounds=4),
                "PATH": _tool_path(),
                "LOG_LEVEL": "WARNING",
            }
            migrate(environment)
            service = TaskService(environment, workers=1, log=workdir / "server.log")
            service.wait_ready()
            starts_empty = document == "README.md"
            token = "" if starts_empty else asyncio.run(_your_account(service.target))
            servers[document] = DocServer(service, environment, token)
        return servers[document]

    servers_by_document: Any = start
    try:
        yield servers_by_document
    finally:
        for server in servers.values():
            server.service.stop()


def _with_ports(text: str, grpc_port: int, http_port: int) -> str:
    text = re.sub(r"\b(localhost|127\.0\.0\.1):50051\b", f"127.0.0.1:{grpc_port}", text)
    return re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", f"127.0.0.1:{http_port}", text)


def _needs(block: Block) -> None:
    """Skip (fail under CI) when a tool the block calls is not installed."""
    text = "\n".join(block.commands)
    for tool in ("grpcurl", "buf", "jq", "curl", "make", "uv"):
        called = re.search(rf"(^|[\s|(;&]){tool}\s", text, re.MULTILINE)
        if called and shutil.which(tool, path=_tool_path()) is None:
            message = f"{block} calls {tool}, which is not installed"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)


@pytest.mark.parametrize("block", [b for b in SHELL_BLOCKS if not _not_run_reason(b)], ids=str)
def test_shell_block_runs(block: Block, doc_servers: Any) -> None:
    _needs(block)
    server: DocServer = doc_servers(block.document)
    port, http_port = server.service.port, server.service.http_port
    environment = dict(server.environment)
    if server.token:
        environment["TOKEN"] = server.token
    script = _with_ports(block.text, port, http_port)
    if block.marker == RUNS_UNTIL_STOPPED:
        _run_until_stopped(block, script, environment)
        return
    completed = subprocess.run(  # noqa: S603 - the documents' own commands
        [BASH, "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"{block} exited {completed.returncode}:\n{output}"
    assert not re.search(r'\{"code":\s*"', completed.stdout), f"{block}: a Connect error\n{output}"


def _run_until_stopped(block: Block, script: str, environment: dict[str, str]) -> None:
    """Start the block; a server must become SERVING, a client must keep running; then stop it."""
    grpc_port = free_port()
    serves = any("make run" in c or "taskservice serve" in c for c in block.commands)
    database = Path(tempfile.gettempdir()) / f"taskservice-docs-{grpc_port}.db"
    environment = {
        **environment,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(grpc_port),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(free_port()),
    }
    if serves:
        environment["DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"
    process = subprocess.Popen(  # noqa: S603 - the documents' own commands
        [BASH, "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        if serves:
            _wait_serving(process, f"127.0.0.1:{grpc_port}")
        else:
            time.sleep(5)
        assert process.poll() is None, f"{block} stopped on its own:\n{_output(process)}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)


def _output(process: subprocess.Popen[str]) -> str:
    if process.poll() is None or process.stdout is None:
        return ""
    return process.stdout.read()


def _wait_serving(process: subprocess.Popen[str], target: str) -> None:
    deadline = time.monotonic() + BLOCK_TIMEOUT
    request = health_pb2.HealthCheckRequest(service="readiness")
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, f"exited {process.returncode}:\n{_output(process)}"
            try:
                if (
                    health.Check(request, timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    pytest.fail(f"{target} never reported SERVING")

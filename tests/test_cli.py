"""The `taskservice` command as an operator runs it: real processes, real signals, real ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from alembic.script import ScriptDirectory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import NullPool, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.db.migrations import alembic_config, downgrade
from taskservice.v1 import auth_service_pb2, auth_service_pb2_grpc
from taskservice.workers import reserve_port
from tests.helpers import PASSWORD
from tests.proxy import TcpProxy
from tests.test_config import ENV_NAMES

SERVING_LINE = re.compile(rb"serving gRPC on [^:]+:(\d+)")
HTTP_SERVING_LINE = re.compile(rb"serving HTTP \(Connect, gRPC-Web\) on port (\d+)")
#: Generous bound for a process to start or stop on a loaded 2-core CI machine.
PROCESS_TIMEOUT = 30.0


def _environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["HTTP_PORT"] = "0"  # the HTTP edge on an ephemeral port, never a fixed one
    env.update(values)
    return env


async def _run(cwd: Path, *args: str, stdin: bytes = b"", **env: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskservice",
        *args,
        cwd=cwd,
        env=_environment(**env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(stdin), PROCESS_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, output.decode()


@asynccontextmanager
async def _serving(cwd: Path, **env: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Start `taskservice serve` on an ephemeral port; yield the process once it logs its port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskservice",
        "serve",
        cwd=cwd,
        env=_environment(
            **{"GRPC_HOST": "127.0.0.1", "GRPC_PORT": "0", "BCRYPT_ROUNDS": "4", **env}
        ),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        port = None
        async with asyncio.timeout(PROCESS_TIMEOUT):
            while port is None:
                line = await process.stderr.readline()
                if not line:
                    pytest.fail("server exited before serving")
                if match := SERVING_LINE.search(line):
                    port = int(match.group(1))
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_help_lists_every_subcommand(tmp_path: Path) -> None:
    code, output = await _run(tmp_path, "--help")
    assert code == 0
    for command in ("serve", "migrate", "create-admin"):
        assert command in output


async def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    code, output = await _run(tmp_path, "serve", GRPC_PORT="eighty")
    assert code == 2
    assert output.strip().splitlines() == [output.strip()], f"expected one line, got: {output!r}"
    assert output.startswith("taskservice: configuration error: GRPC_PORT:")


async def test_postgresql_without_a_signing_key_refuses_to_serve(tmp_path: Path) -> None:
    code, output = await _run(tmp_path, "serve", DB_HOST="127.0.0.1")
    assert code == 2
    assert "JWT_SECRET_KEY: required" in output


async def test_migrate_then_serve_answers_health_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    code, output = await _run(tmp_path, "migrate")
    assert code == 0, output
    assert (tmp_path / "taskservice.db").is_file()

    async with _serving(tmp_path) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0
    assert (tmp_path / ".taskservice-dev-jwt-key").is_file()


async def test_a_second_server_on_a_busy_port_fails_fast(tmp_path: Path) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    async with _serving(tmp_path) as (process, port):
        for workers in ("1", "2"):  # a lone server, and a supervisor of workers
            code, output = await _run(
                tmp_path, "serve", GRPC_HOST="127.0.0.1", GRPC_PORT=str(port), WORKERS=workers
            )
            assert code == 1
            assert f"cannot listen on 127.0.0.1:{port}" in output
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0


async def test_workers_share_the_http_port_and_each_answers_on_it(tmp_path: Path) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    process = await _start_supervisor(
        tmp_path, GRPC_HOST="127.0.0.1", GRPC_PORT="0", HTTP_HOST="127.0.0.1", WORKERS="2"
    )
    assert process.stderr is not None
    try:
        ports: list[int] = []
        async with asyncio.timeout(PROCESS_TIMEOUT):
            while len(ports) < 2:  # one line per worker, each bound to the same port
                line = await process.stderr.readline()
                if not line:
                    pytest.fail("server exited before serving")
                if match := HTTP_SERVING_LINE.search(line):
                    ports.append(int(match.group(1)))
        assert ports[0] == ports[1]
        url = f"http://127.0.0.1:{ports[0]}/grpc.health.v1.Health/Check"
        for _ in range(4):  # fresh connections, spread over the workers by the kernel
            async with httpx.AsyncClient() as http:
                response = await http.post(url, json={"service": "liveness"}, timeout=10)
            assert response.json() == {"status": "SERVING"}
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0
    finally:
        if process.returncode is None:
            await _kill_group(process)


async def test_create_admin_creates_then_promotes_and_the_admin_can_log_in(
    tmp_path: Path,
) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    code, output = await _run(
        tmp_path,
        "create-admin",
        "--email",
        "Root@Example.com",
        "--password-stdin",
        stdin=b"an admin passphrase\n",
        BCRYPT_ROUNDS="4",
    )
    assert (code, output.strip().splitlines()[-1]) == (0, "created admin root@example.com")
    code, output = await _run(tmp_path, "create-admin", "--email", "root@example.com")
    assert (code, output.strip().splitlines()[-1]) == (0, "promoted admin root@example.com")

    async with _serving(tmp_path) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            login = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(
                auth_service_pb2.LoginRequest(
                    email="root@example.com", password="an admin passphrase"
                ),
                timeout=10,
            )
        assert login.user.is_admin
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0


async def test_create_admin_refuses_a_short_password(tmp_path: Path) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    code, output = await _run(
        tmp_path, "create-admin", "--email", "a@example.com", "--password-stdin", stdin=b"short\n"
    )
    assert code == 1
    assert "password: at least 8 characters" in output


async def test_sigterm_under_load_finishes_calls_in_flight_and_exits_0(tmp_path: Path) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    async with _serving(tmp_path, BCRYPT_ROUNDS="12") as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            auth = auth_service_pb2_grpc.AuthServiceStub(channel)
            await auth.Register(
                auth_service_pb2.RegisterRequest(email="load@example.com", password=PASSWORD),
                timeout=10,
            )
            login = auth_service_pb2.LoginRequest(email="load@example.com", password=PASSWORD)
            in_flight = [asyncio.ensure_future(auth.Login(login, timeout=20)) for _ in range(12)]
            # Once one login is done the others are hashing: stop the server under that load.
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            process.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*in_flight)
            assert all(r.access_token for r in responses)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0


async def _read_until(stream: asyncio.StreamReader, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(PROCESS_TIMEOUT):
            while True:
                line = await stream.readline()
                if not line:
                    pytest.fail(f"stream ended before {pattern.pattern!r}; last lines: {seen[-8:]}")
                seen.append(line)
                if match := pattern.search(line):
                    return match
    except TimeoutError:
        pytest.fail(f"no {pattern.pattern!r} within {PROCESS_TIMEOUT} s; last lines: {seen[-8:]}")


async def _start_supervisor(cwd: Path, *args: str, **env: str) -> asyncio.subprocess.Process:
    """`taskservice serve` with workers, its stderr piped, in a session of its own.

    Its workers join its process group, so `_kill_group` can end them all.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskservice",
        "serve",
        *args,
        cwd=cwd,
        env=_environment(**env),
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill a supervisor started in a session of its own, with every worker it started.

    Killing the supervisor alone would leave its workers running with its stderr open, and
    asyncio's `Process.wait()` (Python 3.11) waits for every pipe to close: the test would hang
    instead of failing.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT)


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return response.status


async def test_workers_share_the_port_and_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    process = await _start_supervisor(
        tmp_path, "--workers", "2", GRPC_HOST="127.0.0.1", GRPC_PORT="0", BCRYPT_ROUNDS="4"
    )
    assert process.stderr is not None
    worker_started = re.compile(rb"worker started \(pid (\d+)\)")
    serving = re.compile(rb"serving gRPC on")
    try:
        port = int((await _read_until(process.stderr, re.compile(rb"workers on [^:]+:(\d+)")))[1])
        pids = [int((await _read_until(process.stderr, worker_started))[1]) for _ in range(2)]
        for _ in range(2):
            await _read_until(process.stderr, serving)
        assert await _health(port) == health_pb2.HealthCheckResponse.SERVING

        os.kill(pids[0], signal.SIGKILL)
        await _read_until(process.stderr, re.compile(rb"worker pid %d exited" % pids[0]))
        replacement = int((await _read_until(process.stderr, worker_started))[1])
        assert replacement not in pids
        await _read_until(process.stderr, serving)
        assert await _health(port) == health_pb2.HealthCheckResponse.SERVING

        process.send_signal(signal.SIGTERM)
        await _read_until(process.stderr, re.compile(rb"all workers stopped"))
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0
        for pid in (pids[1], replacement):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if process.returncode is None:
            await _kill_group(process)


async def _exited(pidfd: int) -> None:
    """Wait until the process of `pidfd` has exited (its pidfd becomes readable).

    A pidfd tells of any process's exit, not only a child's: a worker whose supervisor died is
    adopted (and maybe never reaped) by another process.
    """
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(pidfd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(pidfd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits for exits with pidfds (Linux)")
async def test_workers_drain_and_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    process = await _start_supervisor(
        tmp_path,
        GRPC_HOST="127.0.0.1",
        GRPC_PORT="0",
        HTTP_HOST="127.0.0.1",
        WORKERS="2",
        BCRYPT_ROUNDS="4",
        SHUTDOWN_GRACE_SECONDS="1",
    )
    assert process.stderr is not None
    worker_started = re.compile(rb"worker started \(pid (\d+)\)")
    pidfds: list[int] = []
    try:
        port = int((await _read_until(process.stderr, re.compile(rb"workers on [^:]+:(\d+)")))[1])
        pids = [int((await _read_until(process.stderr, worker_started))[1]) for _ in range(2)]
        pidfds = [os.pidfd_open(pid) for pid in pids]
        for _ in range(2):
            await _read_until(process.stderr, SERVING_LINE)
        assert await _health(port) == health_pb2.HealthCheckResponse.SERVING

        process.kill()  # SIGKILL: the supervisor can neither pass on a signal nor clean up
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == -signal.SIGKILL
        # Each worker notices and drains as on SIGTERM (their log lines, in either order).
        for _ in range(2):
            await _read_until(process.stderr, re.compile(rb"supervisor gone: draining"))
        await asyncio.wait_for(asyncio.gather(*map(_exited, pidfds)), PROCESS_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # nothing serves on the port
            await _health(port)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for pidfd in pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        if process.returncode is None:
            await _kill_group(process)


def test_workers_reserve_the_port_given_in_grpcs_bracketed_ipv6_form() -> None:
    """GRPC_HOST=[::] is how gRPC spells every IPv6 address; the workers' reservation takes it."""
    with reserve_port("[::]", 0) as port:
        assert port > 0


@pytest.fixture
def empty_pg_database_url(pg_database_url: str) -> str:
    """A fresh PostgreSQL database without a single table, for `migrate` to fill."""
    downgrade(pg_database_url, "base")
    return pg_database_url


def _bound_but_not_listening() -> socket.socket:
    """A port nothing listens on, held so nothing else takes it: connections are refused."""
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    return reserved


async def _schema_revision(database_url: str) -> str | None:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return (
                await connection.exec_driver_sql("SELECT version_num FROM alembic_version")
            ).scalar_one_or_none()
    finally:
        await engine.dispose()


async def test_migrate_waits_for_postgresql_to_accept_connections(
    tmp_path: Path, empty_pg_database_url: str
) -> None:
    """As in docker compose: migrate starts before PostgreSQL listens on TCP, and still succeeds."""
    target = make_url(empty_pg_database_url)
    head = ScriptDirectory.from_config(alembic_config(empty_pg_database_url)).get_current_head()
    reserved = _bound_but_not_listening()
    port = reserved.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskservice",
        "migrate",
        "--wait-seconds",
        str(PROCESS_TIMEOUT),
        cwd=tmp_path,
        env=_environment(
            DATABASE_URL=target.set(host="127.0.0.1", port=port).render_as_string(
                hide_password=False
            )
        ),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    try:
        await _read_until(process.stderr, re.compile(rb"not accepting connections yet"))
        reserved.close()
        proxy.port = port
        await proxy.start()  # the database "comes up" on the port migrate keeps trying
        rest = await asyncio.wait_for(process.stderr.read(), PROCESS_TIMEOUT)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0, rest.decode()
    finally:
        reserved.close()
        await proxy.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert b"accepts connections" in rest
    assert await _schema_revision(empty_pg_database_url) == head


@pytest.mark.parametrize(
    ("wait_seconds", "gives_up"),
    [("0", "did not accept connections: "), ("1.5", "did not accept connections within 1.5 s: ")],
)
async def test_migrate_gives_up_after_wait_seconds_with_one_line_and_exit_1(
    tmp_path: Path, wait_seconds: str, gives_up: str
) -> None:
    with _bound_but_not_listening() as reserved:
        port = reserved.getsockname()[1]
        started = time.monotonic()
        code, output = await _run(
            tmp_path,
            "migrate",
            "--wait-seconds",
            wait_seconds,
            DATABASE_URL=f"postgresql://taskservice:hunter2-password@127.0.0.1:{port}/taskservice",
        )
        elapsed = time.monotonic() - started
    assert code == 1, output
    messages = [line for line in output.splitlines() if line.startswith("taskservice: ")]
    assert messages == output.splitlines()[-1:], "one message line, last"
    assert messages[0].startswith(
        f"taskservice: the database at postgresql+asyncpg://taskservice:***@127.0.0.1:{port}"
        f"/taskservice {gives_up}ConnectionRefusedError: "
    )
    assert elapsed >= float(wait_seconds)
    assert "hunter2-password" not in output
    assert not (tmp_path / "taskservice.db").exists()


async def test_migrate_does_not_wait_out_an_error_waiting_cannot_cure(
    tmp_path: Path, pg_database_url: str
) -> None:
    """A missing database (or bad credentials) fails at once, however long the wait allowed."""
    missing = make_url(pg_database_url).set(database="taskservice_no_such_database")
    code, output = await _run(
        tmp_path,
        "migrate",
        "--wait-seconds",
        str(PROCESS_TIMEOUT * 10),
        DATABASE_URL=missing.render_as_string(hide_password=False),
    )
    assert code == 1, output
    assert output.splitlines()[-1].startswith(
        f"taskservice: cannot use the database at {missing.render_as_string()}: "
        'InvalidCatalogNameError: database "taskservice_no_such_database" does not exist'
    )
    assert "not accepting connections yet" not in output


@pytest.mark.parametrize("wait_seconds", ["-1", "soon", "nan", "3601"])
async def test_migrate_refuses_a_bad_wait_with_exit_2(tmp_path: Path, wait_seconds: str) -> None:
    code, output = await _run(tmp_path, "migrate", "--wait-seconds", wait_seconds)
    assert code == 2
    assert "argument --wait-seconds:" in output


async def test_create_admin_refuses_a_password_with_nul(tmp_path: Path) -> None:
    """The rule Register and ChangePassword apply (bcrypt would take "abc" for this password)."""
    assert (await _run(tmp_path, "migrate"))[0] == 0
    code, output = await _run(
        tmp_path,
        "create-admin",
        "--email",
        "a@example.com",
        "--password-stdin",
        stdin=b"abc\x00abc\x00abc\n",
    )
    assert code == 1
    assert "password: must not contain NUL" in output


async def test_purge_deletes_the_tasks_whose_purge_time_has_come(tmp_path: Path) -> None:
    """`taskservice purge` for operators: what each server's sweep does, on demand."""
    assert (await _run(tmp_path, "migrate"))[0] == 0
    with sqlite3.connect(tmp_path / "taskservice.db") as connection:
        connection.execute(
            "INSERT INTO users (id, email, password_hash, is_active, is_admin, token_version, "
            "create_time, update_time) VALUES (1, 'a@example.com', 'x', 1, 0, 0, "
            "'2026-01-01', '2026-01-01')"
        )
        for task_id, purge_time in ((1, "2026-01-02 00:00:00"), (2, "2999-01-01 00:00:00")):
            connection.execute(
                "INSERT INTO tasks (id, owner_id, title, description, status, version, "
                "create_time, update_time, delete_time, purge_time, trash_root_id) VALUES "
                "(?, 1, 't', '', 'todo', 1, '2026-01-01', '2026-01-01', '2026-01-01', ?, ?)",
                (task_id, purge_time, task_id),
            )
    code, output = await _run(tmp_path, "purge")
    assert (code, output.strip().splitlines()[-1]) == (0, "purged 1 task(s) from the trash")
    with sqlite3.connect(tmp_path / "taskservice.db") as connection:
        assert connection.execute("SELECT id FROM tasks").fetchall() == [(2,)]

"""The `taskservice` command as an operator runs it: real processes, real signals, real ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskservice.v1 import auth_service_pb2, auth_service_pb2_grpc
from taskservice.workers import reserve_port
from tests.helpers import PASSWORD
from tests.test_config import ENV_NAMES

SERVING_LINE = re.compile(rb"serving gRPC on [^:]+:(\d+)")
#: Generous bound for a process to start or stop on a loaded 2-core CI machine.
PROCESS_TIMEOUT = 30.0


def _environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
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
    async with asyncio.timeout(PROCESS_TIMEOUT):
        while True:
            line = await stream.readline()
            if not line:
                pytest.fail(f"stream ended before {pattern.pattern!r}")
            if match := pattern.search(line):
                return match


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return response.status


async def test_workers_share_the_port_and_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    assert (await _run(tmp_path, "migrate"))[0] == 0
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskservice",
        "serve",
        "--workers",
        "2",
        cwd=tmp_path,
        env=_environment(GRPC_HOST="127.0.0.1", GRPC_PORT="0", BCRYPT_ROUNDS="4"),
        stderr=asyncio.subprocess.PIPE,
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
            process.kill()
            await process.wait()


def test_workers_reserve_the_port_given_in_grpcs_bracketed_ipv6_form() -> None:
    """GRPC_HOST=[::] is how gRPC spells every IPv6 address; the workers' reservation takes it."""
    with reserve_port("[::]", 0) as port:
        assert port > 0


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

"""taskservice as production runs it: `python -m taskservice serve` in a child process.

The process is watched: if it exits during the drill, the exit is recorded (a failed check)
and the server is started again on the same port so that the rest of the drill still measures
something.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.ha.cluster import HarnessError
from tests.ports import free_port

#: The server's shutdown grace (SHUTDOWN_GRACE_SECONDS, default 10) plus slack: a server still
#: running after a SIGTERM this long is stuck, and is killed.
DRAIN_SECONDS = 15.0

#: The URL forms the harness knows: SQLAlchemy's repeated `host=` query parameters, and libpq's
#: comma-separated host list.
URL_FORMS = ("query", "libpq")


def database_url(form: str, ports: list[int], database: str = "taskservice") -> str:
    """A multi-host URL that only ever connects to the read-write member."""
    if form == "query":
        hosts = "&".join(f"host={quote(f'127.0.0.1:{port}')}" for port in ports)
        return f"postgresql+asyncpg://postgres@/{database}?{hosts}&target_session_attrs=read-write"
    if form == "libpq":
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"
    raise ValueError(f"unknown URL form {form!r}")


def migrate(url: str, log: Path, timeout: float = 120.0) -> None:
    """`taskservice migrate` against `url`; HarnessError with the tail of its output on failure."""
    with tempfile.TemporaryDirectory(prefix="taskservice-ha-migrate-") as cwd:
        result = subprocess.run(
            [sys.executable, "-m", "taskservice", "migrate", "--wait-seconds", "30"],
            env={**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json"},
            cwd=cwd,  # no stray .env is read
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise HarnessError(f"migrate failed: {(result.stdout + result.stderr).strip()[-500:]}")


@dataclass
class TaskServer:
    """One `taskservice serve` process, logging JSON to `log`, restarted if it exits."""

    url: str
    log: Path
    port: int = field(default_factory=free_port)
    exits: list[tuple[float, int]] = field(default_factory=list)  # (drill time, exit status)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log_file: IO[bytes] | None = field(default=None, init=False)
    _cwd: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="taskservice-ha-server-"),
        init=False,
    )
    _secret: str = field(default_factory=lambda: secrets.token_hex(32), init=False)  # 64 chars
    _watcher: asyncio.Task[None] | None = field(default=None, init=False)
    _planned: bool = field(default=False, init=False)

    @property
    def target(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process (again)."""
        if self._log_file is None:
            self._log_file = self.log.open("ab")
        env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.port),
            "HTTP_PORT": "off",
            "JWT_SECRET_KEY": self._secret,
            "LOG_FORMAT": "json",
            "BCRYPT_ROUNDS": "4",  # one login; the drill is about the database, not hashing
            "ACCESS_TOKEN_EXPIRE_MINUTES": "120",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskservice", "serve"],
            env=env,
            cwd=self._cwd.name,  # no stray .env is read
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches the harness, not the server
        )

    async def wait_ready(self, within: float) -> None:
        """Wait until readiness is SERVING; HarnessError if the process exits or time runs out."""
        deadline = time.monotonic() + within
        request = health_pb2.HealthCheckRequest(service="readiness")
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process is None or self.process.poll() is not None:
                    status = None if self.process is None else self.process.returncode
                    raise HarnessError(f"taskservice exited {status} at start (see {self.log})")
                try:
                    reply = await health.Check(request, timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise HarnessError(f"taskservice not ready after {within:.0f}s")
                await asyncio.sleep(0.1)

    def supervise(self, clock: Callable[[], float]) -> None:
        """From now on, record every exit (at `clock()` drill time) and start the server again.

        Restarts are at least a second apart, so a server that exits at once cannot turn the
        drill into a fork loop on a shared machine.
        """

        async def watch() -> None:
            last_start = time.monotonic()
            while True:
                await asyncio.sleep(0.1)
                if self._planned or self.process is None or self.process.poll() is None:
                    continue
                self.exits.append((round(clock(), 2), self.process.returncode))
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - last_start)))
                if not self._planned:
                    self.spawn()
                    last_start = time.monotonic()

        self._watcher = asyncio.create_task(watch())

    async def restart(self, grace: float = DRAIN_SECONDS) -> tuple[float, bool]:
        """A planned restart (SIGTERM, wait, start again), not counted as an exit.

        Returns how long the old process took to exit and whether it had to be SIGKILLed.
        """
        self._planned = True
        try:
            drained = await self.terminate(grace)
            self.spawn()
        finally:
            self._planned = False
        return drained

    async def terminate(self, grace: float) -> tuple[float, bool]:
        """SIGTERM (the graceful drain), SIGKILL after `grace` s; waits off the event loop.

        Returns the seconds until the process exited and whether SIGKILL was needed.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return 0.0, False
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, grace)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10)
            return round(time.monotonic() - began, 2), True
        return round(time.monotonic() - began, 2), False

    async def stop(self) -> None:
        """Stop supervising, SIGTERM then SIGKILL the server, close the log."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await self.terminate(DRAIN_SECONDS)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._cwd.cleanup()

    def kill_now(self) -> None:
        """SIGKILL the server and reap it (teardown after a failure). Safe to repeat."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

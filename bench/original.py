"""The original FastAPI backend, measured beside taskservice's REST API (`--original PATH`).

Optional and never required: PATH is a checkout of the original application's `backend`
directory (github.com/devopsforger/SimpleTasks), with its dependencies installed in a Python of
its own (`--original-python`, default PATH/.venv/bin/python); nothing of it is part of this
repository. It runs as its README starts it (uvicorn, one process, its access log on) against a
database of its own on the same PostgreSQL server, made by its own alembic migration and seeded
with as many users and tasks as taskservice's.

Its locked dependencies carry no bcrypt backend for passlib, so it can neither register nor log
anyone in: the seeded users get an unusable password hash, and the token is made by its own
`create_access_token`, which is what its login would return. GetTask and CreateTask need no
password check, only the token, which it verifies on every call and then reads the user.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL

from bench.processes import free_port
from bench.seed import recreate_postgres_database

#: The seeded users' password hash: none matches it, and no scenario logs in.
UNUSABLE_HASH = "!"


class OriginalService:
    """The original backend under uvicorn, on its own freshly seeded database."""

    def __init__(self, backend: Path, python: Path, url: URL, log: Path) -> None:
        self.backend = backend
        self.python = python
        self.url = url
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._log_path = log
        self._process: subprocess.Popen[bytes] | None = None
        self.environment = {
            **os.environ,
            "DB_HOST": url.host or "127.0.0.1",
            "DB_PORT": str(url.port or 5432),
            "DB_NAME": url.database or "",
            "DB_USER": url.username or "postgres",
            "DB_PASSWORD": url.password or "",
            "JWT_SECRET_KEY": os.urandom(24).hex(),
            "ACCESS_TOKEN_EXPIRE_MINUTES": "180",
            "DEBUG": "false",
        }

    def prepare(self, users: int, tasks_per_user: int) -> None:
        """Recreate its database, migrate it with its alembic, seed it, and settle it."""
        asyncio.run(recreate_postgres_database(self.url))
        self._python(["-m", "alembic", "upgrade", "head"])
        asyncio.run(self._seed(users, tasks_per_user))

    async def _seed(self, users: int, tasks_per_user: int) -> None:
        """Users and tasks in bulk: taskservice's counts, plain rows as the original keeps them."""
        connection = await asyncpg.connect(
            host=self.url.host,
            port=self.url.port or 5432,
            user=self.url.username,
            password=self.url.password,
            database=self.url.database,
        )
        try:
            await connection.execute(
                "INSERT INTO users (email, hashed_password, is_active, is_admin) "
                "SELECT 'user' || n || '@bench.example', $1, true, false "
                "FROM generate_series(0, $2 - 1) AS n",
                UNUSABLE_HASH,
                users,
            )
            await connection.execute(
                "INSERT INTO tasks (title, description, status, owner_id) "
                "SELECT 'Task ' || n, 'Seeded by the benchmark', 'TODO', u.id "
                "FROM users AS u, generate_series(1, $1) AS n ORDER BY n, u.id",
                tasks_per_user,
            )
            await connection.execute("VACUUM ANALYZE")
        finally:
            await connection.close()

    async def _fixture(self) -> tuple[int, int]:
        """The first user's id and the middle one of their tasks, as taskservice's fixture."""
        connection = await asyncpg.connect(
            host=self.url.host,
            port=self.url.port or 5432,
            user=self.url.username,
            password=self.url.password,
            database=self.url.database,
        )
        try:
            user_id = await connection.fetchval("SELECT min(id) FROM users")
            ids = await connection.fetch(
                "SELECT id FROM tasks WHERE owner_id = $1 ORDER BY id", user_id
            )
        finally:
            await connection.close()
        return int(user_id), int(ids[len(ids) // 2]["id"])

    def fixture(self) -> tuple[str, int]:
        """The first user's bearer token, made by the original's own code, and a task of theirs."""
        user_id, task_id = asyncio.run(self._fixture())
        token = self._python(
            [
                "-c",
                "import sys; from datetime import timedelta; "
                "from app.auth.jwt import create_access_token; "
                "print(create_access_token({'sub': sys.argv[1]}, timedelta(minutes=180)))",
                str(user_id),
            ]
        ).strip()
        return token, task_id

    def start(self, timeout: float = 60.0) -> None:
        """uvicorn, one process, as its `start` script runs it; wait until /health answers."""
        log = self._log_path.open("wb")
        self._process = subprocess.Popen(  # noqa: S603 - our own arguments
            [
                str(self.python),
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=self.backend,
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the original exited {self._process.returncode} at start: "
                    f"{self._log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.target}/health", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the original did not answer /health")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """The one uvicorn process serving calls."""
        if self._process is None:
            raise RuntimeError("the original is not running")
        return [self._process.pid]

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _python(self, arguments: list[str]) -> str:
        """Run the original's Python in its directory with its settings; its stdout."""
        done = subprocess.run(  # noqa: S603 - our own arguments
            [str(self.python), *arguments],
            cwd=self.backend,
            env=self.environment,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"the original's {' '.join(arguments[:3])} failed:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

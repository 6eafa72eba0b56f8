"""The original FastAPI backend, measured beside taskservice's REST API (`--original PATH`).

Optional and never required: PATH is a checkout of the original application's `backend`
directory (github.com/devopsforger/SimpleTasks), with its dependencies installed in a Python of
its own (`--original-python`, default PATH/.venv/bin/python); nothing of it is part of this
repository. It runs as its `start` script starts it (uvicorn, one process, its access log on)
against a database of its own on the same PostgreSQL server, made by its own alembic migration
and seeded in bulk with as many users and tasks as taskservice's (registering 100 users and
creating 100,000 tasks through its API would take longer than the measurement). The token is
the one its own login answers, for the same password as taskservice's seeded users.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import asyncpg
import bcrypt
from sqlalchemy.engine import URL

from bench.ports import free_port
from bench.seed import PASSWORD, recreate_postgres_database

#: The seeded users' emails: user<n>@ this domain.
EMAIL_DOMAIN = "bench.example"
#: The user the scenarios call as, as taskservice's first seeded user.
FIRST_USER = f"user0@{EMAIL_DOMAIN}"


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

    def prepare(self, users: int, tasks_per_user: int, bcrypt_rounds: int) -> None:
        """Recreate its database, migrate it with its alembic, seed it, and settle it."""
        asyncio.run(recreate_postgres_database(self.url))
        self._python(["-m", "alembic", "upgrade", "head"])
        asyncio.run(self._seed(users, tasks_per_user, bcrypt_rounds))

    async def _seed(self, users: int, tasks_per_user: int, bcrypt_rounds: int) -> None:
        """Users and tasks in bulk: taskservice's counts, plain rows as the original keeps them.

        Every user shares one bcrypt hash of PASSWORD, which the original's passlib verifies.
        """
        password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(bcrypt_rounds)).decode()
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
                "SELECT 'user' || n || '@' || $3, $1, true, false "
                "FROM generate_series(0, $2 - 1) AS n",
                password_hash,
                users,
                EMAIL_DOMAIN,
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

    async def _task_id(self) -> int:
        """The middle one of the first user's tasks, as taskservice's fixture picks."""
        connection = await asyncpg.connect(
            host=self.url.host,
            port=self.url.port or 5432,
            user=self.url.username,
            password=self.url.password,
            database=self.url.database,
        )
        try:
            ids = await connection.fetch(
                "SELECT tasks.id FROM tasks JOIN users ON users.id = tasks.owner_id "
                "WHERE users.email = $1 ORDER BY tasks.id",
                FIRST_USER,
            )
        finally:
            await connection.close()
        return int(ids[len(ids) // 2]["id"])

    def fixture(self) -> tuple[str, int]:
        """The first user's bearer token from the original's login, and a task of theirs."""
        task_id = asyncio.run(self._task_id())
        form = urllib.parse.urlencode({"username": FIRST_USER, "password": PASSWORD})
        request = urllib.request.Request(
            f"http://{self.target}/api/v1/auth/login",
            data=form.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
            return str(json.loads(reply.read())["access_token"]), task_id

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

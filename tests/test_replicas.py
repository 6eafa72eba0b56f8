"""Replicas that survive a kill: the documented client configuration, shown to work.

docs/operations.md's "Scaling out" tells clients to balance per call (`round_robin` over every
replica) and to retry UNAVAILABLE for the calls that are safe to repeat. This test takes that very
service config from docs/operations.md, so what users copy is what is tested. Three real
`taskservice serve` processes share one PostgreSQL database; one channel spreads mixed load over
them; one replica is frozen (SIGSTOP) while calls pile up on it, then SIGKILLed. The freeze makes
the kill hit calls in flight on every run: round robin keeps handing the frozen replica every
third call, so once calls started after the freeze complete on the others, some are stuck on it.

What must hold: no call fails for the client, every CreateTask request id made exactly one task
(checked in the database), and every created task reads back through the survivors.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import NullPool, text
from sqlalchemy.ext.asyncio import create_async_engine

from taskservice.v1 import task_pb2, task_service_pb2, user_service_pb2
from tests.conftest import TEST_SIGNING_KEY, Stubs
from tests.helpers import Account, register
from tests.test_cli import PROCESS_TIMEOUT, SERVING_LINE
from tests.test_config import ENV_NAMES

ROOT = Path(__file__).resolve().parents[1]
REPLICAS = 3
#: Concurrent client coroutines: enough that calls pile up on a frozen replica while the others
#: keep completing (each worker stalls only when round robin hands it the frozen one).
WORKERS = 24
#: Calls the load makes in all (not counting the read-back afterwards).
TOTAL_CALLS = 900
#: The victim is frozen once this many calls have completed, a third of the way through.
FREEZE_AFTER = TOTAL_CALLS // 3
#: Calls started after the freeze that must complete before the kill. Round robin hands every
#: third pick to the frozen replica, so between three picks of the others there is always one of
#: it: three calls done elsewhere since the freeze mean at least one is stuck on it.
PILED_UP = 3
#: Calls the test itself starts at the freeze, so the pile-up completes even when every worker
#: happens to be waiting on the frozen replica (a replica starved of CPU gathers them all).
PROBES = 9
#: Deadline of each call, retries included: generous for a loaded 2-core CI machine.
CALL_TIMEOUT = 20.0


def documented_service_config() -> str:
    """The first JSON block of docs/operations.md's "Scaling out", as the client's config."""
    document = (ROOT / "docs/operations.md").read_text()
    section = document.split("\n## Scaling out\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```json\n(.*?)\n```", section, re.DOTALL)
    assert match, "docs/operations.md's Scaling out shows the service config as a json block"
    config = json.loads(match.group(1))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    return json.dumps(config)


@dataclass
class Replica:
    """One `taskservice serve` process, its port, and the file its log goes to."""

    process: asyncio.subprocess.Process
    port: int
    log: Path

    def access_lines(self) -> list[dict[str, Any]]:
        """The access log entries this replica wrote (it may have been killed mid-line)."""
        entries = []
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("logger") == "taskservice.access":
                entries.append(entry)
        return entries


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` until it holds, failing after PROCESS_TIMEOUT."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _start_replica(cwd: Path, database_url: str, name: str) -> Replica:
    """Start `taskservice serve` on an ephemeral port; return once its health says SERVING.

    The log goes to a file, not a pipe: nobody has to drain it while the test is busy, and it is
    there to read when something fails.
    """
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(
        DATABASE_URL=database_url,
        JWT_SECRET_KEY=TEST_SIGNING_KEY,
        GRPC_HOST="127.0.0.1",
        GRPC_PORT="0",
        HTTP_PORT="0",
        BCRYPT_ROUNDS="4",
        DB_POOL_SIZE="4",
        DB_MAX_OVERFLOW="4",
    )
    log = cwd / f"{name}.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskservice",
            "serve",
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    port: int | None = None

    async def logged_its_port() -> bool:
        nonlocal port
        if process.returncode is not None:
            pytest.fail(f"{name} exited before serving:\n{log.read_text()}")
        if match := SERVING_LINE.search(log.read_bytes()):
            port = int(match.group(1))
        return port is not None

    try:
        await _until(logged_its_port, f"{name} to log its port")
        assert port is not None
        listening: int = port
        await _until(lambda: _serving(listening), f"{name} to report SERVING")
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return Replica(process, listening, log)


async def _serving(port: int) -> bool:
    """Whether the server on `port` answers health SERVING (the database is reachable)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


@asynccontextmanager
async def _replicas(cwd: Path, database_url: str) -> AsyncIterator[list[Replica]]:
    """REPLICAS servers on one database; every one still running is killed on the way out."""
    async with AsyncExitStack() as stack:
        started = await asyncio.gather(
            *(_start_replica(cwd, database_url, f"replica{i}") for i in range(REPLICAS)),
            return_exceptions=True,
        )
        replicas = [r for r in started if isinstance(r, Replica)]
        for replica in replicas:
            stack.push_async_callback(_kill, replica.process)
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield replicas


async def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL (which also ends a stopped process) and reap, unless it has already exited."""
    if process.returncode is None:
        process.kill()
    await process.wait()


@dataclass
class Load:
    """Shared state of the load: counts, the tasks created, and every failure seen."""

    accounts: list[Account]
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    started: int = 0
    completed: int = 0
    frozen: bool = False
    completed_since_freeze: int = 0
    failures: list[str] = field(default_factory=list)
    #: request_id -> (owner's index in `accounts`, id of the task CreateTask returned)
    created: dict[str, tuple[int, int]] = field(default_factory=dict)

    def take_ticket(self) -> int:
        """The number of the next call to make."""
        self.started += 1
        return self.started - 1

    async def counted(self, call: Awaitable[None]) -> None:
        """Make one call of the load and count it (apart, too, if it started after the freeze)."""
        started_frozen = self.frozen
        await call
        async with self.progress:
            self.completed += 1
            if started_frozen:
                self.completed_since_freeze += 1
            self.progress.notify_all()

    async def reached(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until `condition` holds after some call completes."""
        try:
            async with asyncio.timeout(PROCESS_TIMEOUT), self.progress:
                await self.progress.wait_for(condition)
        except TimeoutError:
            pytest.fail(
                f"timed out waiting for {what}: {self.started} calls started, "
                f"{self.completed} completed, {self.completed_since_freeze} since the freeze, "
                f"failures: {self.failures[:5]}"
            )


async def _one_call(stubs: Stubs, load: Load, ticket: int) -> None:
    """Make the ticket's call, a mix of idempotent creates and reads; record what went wrong."""
    owner = ticket % len(load.accounts)
    account = load.accounts[owner]
    mine = [(rid, task_id) for rid, (o, task_id) in load.created.items() if o == owner]
    kind = ticket % 8
    call = "?"
    try:
        if kind in (0, 1, 2) or (kind in (3, 4, 5) and not mine):
            call = "CreateTask"
            request_id = uuid.uuid4().hex
            created = await stubs.tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    task=task_pb2.Task(title=request_id), request_id=request_id
                ),
                metadata=account.metadata,
                timeout=CALL_TIMEOUT,
            )
            load.created[request_id] = (owner, created.task.id)
        elif kind == 3:
            call = "CreateTask (a repeated request_id)"
            request_id, task_id = mine[ticket % len(mine)]
            again = await stubs.tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    task=task_pb2.Task(title="never used"), request_id=request_id
                ),
                metadata=account.metadata,
                timeout=CALL_TIMEOUT,
            )
            if again.task.id != task_id:
                load.failures.append(f"{call}: task {again.task.id}, first made {task_id}")
        elif kind in (4, 5):
            call = "GetTask"
            request_id, task_id = mine[ticket % len(mine)]
            got = await stubs.tasks.GetTask(
                task_service_pb2.GetTaskRequest(id=task_id),
                metadata=account.metadata,
                timeout=CALL_TIMEOUT,
            )
            if got.task.title != request_id:
                load.failures.append(f"{call} {task_id}: title {got.task.title!r}")
        elif kind == 6:
            call = "ListTasks"
            await stubs.tasks.ListTasks(
                task_service_pb2.ListTasksRequest(page_size=20),
                metadata=account.metadata,
                timeout=CALL_TIMEOUT,
            )
        else:
            call = "GetMe"
            await stubs.users.GetMe(
                user_service_pb2.GetMeRequest(), metadata=account.metadata, timeout=CALL_TIMEOUT
            )
    except grpc.aio.AioRpcError as error:
        load.failures.append(f"{call} (ticket {ticket}): {error.code().name} {error.details()}")


async def _worker(stubs: Stubs, load: Load) -> None:
    """Take tickets until TOTAL_CALLS have been handed out, one call at a time."""
    while load.started < TOTAL_CALLS:
        await load.counted(_one_call(stubs, load, load.take_ticket()))


async def test_a_replica_killed_under_load_costs_the_client_nothing(
    tmp_path: Path, pg_database_url: str
) -> None:
    """Round robin plus the documented retry policy turn a replica's death into a few retries."""
    async with (
        _replicas(tmp_path, pg_database_url) as replicas,
        grpc.aio.insecure_channel(
            "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas),
            options=[
                ("grpc.service_config", documented_service_config()),
                ("grpc.enable_retries", 1),
            ],
        ) as channel,
    ):
        stubs = Stubs.over(channel)
        load = Load([await register(stubs) for _ in range(4)])
        victim, survivors = replicas[0], replicas[1:]

        workers = [asyncio.create_task(_worker(stubs, load)) for _ in range(WORKERS)]
        try:
            await load.reached(lambda: load.completed >= FREEZE_AFTER, "the freeze")
            victim.process.send_signal(signal.SIGSTOP)
            load.frozen = True
            workers += [
                asyncio.create_task(load.counted(_one_call(stubs, load, load.take_ticket())))
                for _ in range(PROBES)
            ]
            await load.reached(lambda: load.completed_since_freeze >= PILED_UP, "the pile-up")
            victim.process.kill()
            assert await asyncio.wait_for(victim.process.wait(), PROCESS_TIMEOUT) == -signal.SIGKILL
            async with asyncio.timeout(CALL_TIMEOUT * 3):
                await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

        assert load.failures == [], f"{len(load.failures)} calls failed: {load.failures[:20]}"
        assert load.completed == TOTAL_CALLS
        served_before_kill = len(victim.access_lines())
        assert served_before_kill > 0, "round robin gave the victim no calls"

        # Exactly once: one task per request id, each the task CreateTask answered with.
        engine = create_async_engine(pg_database_url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                tasks = (await connection.execute(text("SELECT title, id FROM tasks"))).all()
                keys = dict(
                    (
                        await connection.execute(
                            text("SELECT request_id, task_id FROM task_create_requests")
                        )
                    ).all()
                )
        finally:
            await engine.dispose()
        created = {request_id: task_id for request_id, (_, task_id) in load.created.items()}
        assert len(tasks) == len(created), "a request id made no task, or more than one"
        assert dict(tasks) == created
        assert keys == created

        # Every task reads back through the survivors (the channel still lists the dead one).
        reads = [
            stubs.tasks.GetTask(
                task_service_pb2.GetTaskRequest(id=task_id),
                metadata=load.accounts[owner].metadata,
                timeout=CALL_TIMEOUT,
            )
            for owner, task_id in load.created.values()
        ]
        read_back = await asyncio.gather(*reads)
        assert sorted(r.task.id for r in read_back) == sorted(created.values())
        assert all(r.process.returncode is None for r in survivors)

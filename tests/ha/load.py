"""The load a client fleet puts on taskservice while the database fails over, and what it saw.

Writers retry CreateTask with the same `request_id` until it succeeds (so every create they
give up on is visible, and every acknowledged one can be looked for afterwards), readers list
and get, one WatchTasks stream resumes from the last revision it received, and a poller asks
the health service ten times a second. Every call's outcome is recorded with its time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskservice.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

T = TypeVar("T")

#: Codes a careful client retries with the same request id: the outcome is unknown or transient.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)
#: Codes that are never acceptable from this service, whatever the database does.
FORBIDDEN = frozenset({"INTERNAL", "UNKNOWN"})

#: The per-attempt deadline of unary calls: long enough for a healthy server on a busy machine,
#: short enough that an attempt stuck on a dead connection is retried within the drill.
CALL_TIMEOUT = 5.0

#: Fast reconnects: the default backoff grows to minutes, longer than a whole failover drill.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),  # the harness retries itself, and counts every attempt
)


@dataclass(frozen=True)
class Call:
    """One finished call: when (seconds since the drill began), which method, how it ended."""

    time: float
    method: str
    code: str
    details: str = ""


@dataclass(frozen=True)
class Ack:
    """An acknowledged create: its request id, the task id returned, and when it came back."""

    request_id: str
    task_id: int
    first_sent: float
    acked: float
    attempts: int


@dataclass(frozen=True)
class Change:
    """One change the watch stream delivered."""

    time: float
    revision: int
    type: int
    task_id: int


@dataclass(frozen=True)
class StreamEnd:
    """A watch stream that ended while the drill still wanted it open."""

    time: float
    code: str
    details: str
    last_revision: int


@dataclass
class Recorder:
    """Everything the clients saw, stamped relative to `start` (time.monotonic())."""

    start: float = field(default_factory=time.monotonic)
    calls: list[Call] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    abandoned: list[tuple[str, str]] = field(default_factory=list)  # (request id, last code)
    changes: list[Change] = field(default_factory=list)
    bookmarks: int = 0
    stream_ends: list[StreamEnd] = field(default_factory=list)
    health: list[tuple[float, str]] = field(default_factory=list)

    def now(self) -> float:
        """Seconds since the drill began."""
        return time.monotonic() - self.start

    def record(self, method: str, code: str, details: str = "") -> None:
        """Note one call's outcome."""
        self.calls.append(Call(self.now(), method, code, details[:300]))

    def counts(self, since: float = float("-inf"), until: float = float("inf")) -> dict:
        """Calls by method and status code that finished in [since, until)."""
        table: dict[str, Counter[str]] = {}
        for call in self.calls:
            if since <= call.time < until:
                table.setdefault(call.method, Counter())[call.code] += 1
        return {method: dict(sorted(codes.items())) for method, codes in sorted(table.items())}


def _code(error: grpc.aio.AioRpcError) -> str:
    return error.code().name


class Load:
    """The client fleet against one server address, recording into a Recorder."""

    def __init__(
        self,
        target: str,
        recorder: Recorder,
        *,
        writers: int = 8,
        readers: int = 2,
        write_pause: float = 0.05,
        tag: str = "ha",
    ) -> None:
        self.target = target
        self.recorder = recorder
        self.writers = writers
        self.readers = readers
        self.write_pause = write_pause
        self.tag = tag
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.user_id = 0
        self.start_revision = 0
        self.last_revision = 0
        self._stop_writes = asyncio.Event()
        self._stop_all = asyncio.Event()
        self._writer_tasks: list[asyncio.Task[None]] = []
        self._other_tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._health_channel: grpc.aio.Channel | None = None
        self._watch_channel: grpc.aio.Channel | None = None
        self._tasks_stub: task_service_pb2_grpc.TaskServiceStub | None = None

    async def _unary(self, method: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Make one call, record how it ended; its response, or None when it failed."""
        try:
            response = await call()
        except grpc.aio.AioRpcError as error:
            self.recorder.record(method, _code(error), error.details() or "")
            return None
        self.recorder.record(method, "OK")
        return response

    @property
    def tasks(self) -> task_service_pb2_grpc.TaskServiceStub:
        """The TaskService stub on the shared channel."""
        if self._tasks_stub is None:
            raise RuntimeError("load not started")
        return self._tasks_stub

    async def start(self, email: str, password: str) -> None:
        """Register and log in one user, take the starting revision, start every client."""
        self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._health_channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._watch_channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        auth = auth_service_pb2_grpc.AuthServiceStub(self._channel)
        self._tasks_stub = task_service_pb2_grpc.TaskServiceStub(self._channel)
        registered = await auth.Register(
            auth_service_pb2.RegisterRequest(email=email, password=password), timeout=30
        )
        self.recorder.record("Register", "OK")
        login = await auth.Login(
            auth_service_pb2.LoginRequest(email=email, password=password), timeout=30
        )
        self.recorder.record("Login", "OK")
        self.user_id = registered.user.id
        self.metadata = (("authorization", f"Bearer {login.access_token}"),)
        listed = await self.tasks.ListTasks(
            task_service_pb2.ListTasksRequest(page_size=1), metadata=self.metadata, timeout=30
        )
        self.start_revision = self.last_revision = listed.revision
        self._other_tasks.append(asyncio.create_task(self._health()))
        self._other_tasks.append(asyncio.create_task(self._watch()))
        for index in range(self.readers):
            self._other_tasks.append(asyncio.create_task(self._reader(index)))
        for index in range(self.writers):
            self._writer_tasks.append(asyncio.create_task(self._writer(index)))

    async def stop_writes(self, within: float) -> None:
        """Let each writer finish (or give up on) the create in hand, then stop them."""
        self._stop_writes.set()
        done, pending = await asyncio.wait(self._writer_tasks, timeout=within)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._writer_tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Stop every client and close the channels."""
        self._stop_writes.set()
        self._stop_all.set()
        tasks = self._writer_tasks + self._other_tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in (self._channel, self._health_channel, self._watch_channel):
            if channel is not None:
                await channel.close()

    async def current_revision(self, within: float) -> int:
        """The store's revision now, asked until the server answers (with a deadline)."""
        deadline = time.monotonic() + within
        while True:
            try:
                listed = await self.tasks.ListTasks(
                    task_service_pb2.ListTasksRequest(page_size=1),
                    metadata=self.metadata,
                    timeout=CALL_TIMEOUT,
                )
            except grpc.aio.AioRpcError as error:
                self.recorder.record("ListTasks", _code(error), error.details() or "")
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            self.recorder.record("ListTasks", "OK")
            return listed.revision

    async def wait_watch(self, revision: int, within: float) -> bool:
        """Wait until the watch stream has delivered up to `revision`; whether it did."""
        deadline = time.monotonic() + within
        while self.last_revision < revision:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait_write_after(self, moment: float, within: float) -> float | None:
        """Wait for a create acknowledged after `moment` (drill time); its time, or None."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            later = [ack.acked for ack in self.recorder.acks if ack.acked > moment]
            if later:
                return min(later)
            await asyncio.sleep(0.05)
        return None

    def serving_again(self, after: float) -> float | None:
        """When health came back to SERVING after `after`.

        That is the first SERVING sample after the first other one (the outage), or the first
        SERVING sample if it never left SERVING.
        """
        samples = [(moment, status) for moment, status in self.recorder.health if moment > after]
        left = next((i for i, (_m, status) in enumerate(samples) if status != "SERVING"), None)
        start = 0 if left is None else left
        return next((m for m, status in samples[start:] if status == "SERVING"), None)

    async def wait_serving(self, after: float, within: float) -> float | None:
        """Wait until health is SERVING again after `after` (see `serving_again`); when."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            moment = self.serving_again(after)
            if moment is not None:
                return moment
            await asyncio.sleep(0.05)
        return None

    # -- the clients ------------------------------------------------------------------------

    async def _writer(self, index: int) -> None:
        """Create tasks one after another; retry each with the same request id until it sticks."""
        number = 0
        while not self._stop_writes.is_set():
            number += 1
            request_id = f"{self.tag}-w{index}-{number:06d}"
            request = task_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(title=request_id), request_id=request_id
            )
            first_sent = self.recorder.now()
            attempt = 0
            while True:
                attempt += 1
                try:
                    response = await self.tasks.CreateTask(
                        request, metadata=self.metadata, timeout=CALL_TIMEOUT
                    )
                except grpc.aio.AioRpcError as error:
                    self.recorder.record("CreateTask", _code(error), error.details() or "")
                    if error.code() not in RETRYABLE:
                        self.recorder.abandoned.append((request_id, _code(error)))
                        break
                    backoff = min(1.0, 0.05 * 2 ** min(attempt, 5))
                    await asyncio.sleep(backoff * random.uniform(0.5, 1))  # noqa: S311 - jitter
                    continue
                self.recorder.record("CreateTask", "OK")
                self.recorder.acks.append(
                    Ack(request_id, response.task.id, first_sent, self.recorder.now(), attempt)
                )
                break
            await asyncio.sleep(self.write_pause)

    async def _reader(self, index: int) -> None:
        """List the newest tasks and get a random acknowledged one, over and over."""
        rng = random.Random(index)  # noqa: S311 - not for security
        while not self._stop_all.is_set():
            await self._unary(
                "ListTasks",
                lambda: self.tasks.ListTasks(
                    task_service_pb2.ListTasksRequest(page_size=20),
                    metadata=self.metadata,
                    timeout=CALL_TIMEOUT,
                ),
            )
            if self.recorder.acks:
                task_id = rng.choice(self.recorder.acks).task_id
                await self._unary(
                    "GetTask",
                    lambda task_id=task_id: self.tasks.GetTask(
                        task_service_pb2.GetTaskRequest(id=task_id),
                        metadata=self.metadata,
                        timeout=CALL_TIMEOUT,
                    ),
                )
            await asyncio.sleep(0.05)

    async def _watch(self) -> None:
        """One WatchTasks stream, resumed from the last revision received whenever it ends."""
        if self._watch_channel is None:
            raise RuntimeError("load not started")
        stub = task_service_pb2_grpc.TaskServiceStub(self._watch_channel)
        backoff = 0.1
        while not self._stop_all.is_set():
            stream: Any = stub.WatchTasks(
                task_service_pb2.WatchTasksRequest(start_revision=self.last_revision),
                metadata=self.metadata,
            )
            try:
                async for response in stream:
                    backoff = 0.1
                    if response.HasField("change"):
                        self.recorder.changes.append(
                            Change(
                                self.recorder.now(),
                                response.revision,
                                response.change.type,
                                response.change.task.id,
                            )
                        )
                    else:
                        self.recorder.bookmarks += 1
                    self.last_revision = response.revision
                code, details = "OK", "the server ended the stream"
            except grpc.aio.AioRpcError as error:
                code, details = _code(error), error.details() or ""
            except asyncio.CancelledError:
                stream.cancel()
                raise
            self.recorder.record("WatchTasks", code, details)
            self.recorder.stream_ends.append(
                StreamEnd(self.recorder.now(), code, details[:300], self.last_revision)
            )
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    async def _health(self) -> None:
        """grpc.health.v1 Check of the whole server ("") every 0.1 s: (time, status)."""
        if self._health_channel is None:
            raise RuntimeError("load not started")
        health = health_pb2_grpc.HealthStub(self._health_channel)
        request = health_pb2.HealthCheckRequest(service="")
        while not self._stop_all.is_set():
            began = time.monotonic()
            try:
                reply = await health.Check(request, timeout=1.0)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                self.recorder.record("Health/Check", "OK")
            except grpc.aio.AioRpcError as error:
                status = f"UNREACHABLE ({_code(error)})"
                self.recorder.record("Health/Check", _code(error), error.details() or "")
            self.recorder.health.append((self.recorder.now(), status))
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - began)))

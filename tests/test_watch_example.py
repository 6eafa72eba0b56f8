"""The documented example client (examples/watch.py) keeps a correct mirror across a restart.

A real `taskservice serve` process is stopped with SIGTERM while the mirror watches, and
started again on the same port and database; changes made before, during the mirror's first
stream and after the restart must all end up in the mirror, which must have resumed its watch
(not listed again).
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import socket
import sys
from pathlib import Path
from types import ModuleType

import grpc
from google.protobuf import field_mask_pb2

from taskservice.v1 import auth_service_pb2, task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import PASSWORD, Account, register
from tests.test_cli import PROCESS_TIMEOUT, _run, _serving
from tests.watching import DEADLINE

ROOT = Path(__file__).resolve().parents[1]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("watch_example", ROOT / "examples" / "watch.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _caught_up(mirror: object, stubs: Stubs, account: Account) -> dict[int, task_pb2.Task]:
    """Wait until the mirror has reached the store's revision; return the store's live tasks."""
    listed = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(page_size=1000), metadata=account.metadata
    )
    current = (
        await stubs.tasks.BatchGetTasks(pb.BatchGetTasksRequest(), metadata=account.metadata)
    ).revision
    async with asyncio.timeout(DEADLINE):
        while mirror.revision < current:  # type: ignore[attr-defined]
            mirror.moved.clear()  # type: ignore[attr-defined]
            await mirror.moved.wait()  # type: ignore[attr-defined]
    return {task.id: task for task in listed.tasks}


async def test_the_example_mirror_stays_correct_across_a_server_restart(tmp_path: Path) -> None:
    example = _example()
    env = {"JWT_SECRET_KEY": "k" * 64, "WATCH_BOOKMARK_SECONDS": "0.2"}
    assert (await _run(tmp_path, "migrate", **env))[0] == 0
    port = _free_port()
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        stubs = Stubs.over(channel)
        async with _serving(tmp_path, GRPC_PORT=str(port), **env) as (process, _):
            alice = await register(stubs)
            first = [
                (
                    await stubs.tasks.CreateTask(
                        pb.CreateTaskRequest(task=task_pb2.Task(title=f"before {n}")),
                        metadata=alice.metadata,
                    )
                ).task
                for n in range(3)
            ]
            async with grpc.aio.insecure_channel(target) as mirror_channel:
                mirror = example.Mirror(mirror_channel, alice.user.email, PASSWORD)
                running = asyncio.ensure_future(mirror.run())
                try:
                    assert await _caught_up(mirror, stubs, alice) == mirror.tasks
                    await stubs.tasks.PatchTask(
                        pb.PatchTaskRequest(
                            task=task_pb2.Task(id=first[0].id, title="patched"),
                            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
                        ),
                        metadata=alice.metadata,
                    )
                    assert await _caught_up(mirror, stubs, alice) == mirror.tasks
                    process.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0
                    async with _serving(tmp_path, GRPC_PORT=str(port), **env):
                        login = await stubs.auth.Login(
                            auth_service_pb2.LoginRequest(
                                email=alice.user.email, password=PASSWORD
                            ),
                            wait_for_ready=True,
                        )
                        again = Account(alice.user, login.access_token)
                        await stubs.tasks.DeleteTask(
                            pb.DeleteTaskRequest(id=first[1].id), metadata=again.metadata
                        )
                        await stubs.tasks.CreateTask(
                            pb.CreateTaskRequest(task=task_pb2.Task(title="after")),
                            metadata=again.metadata,
                        )
                        expected = await _caught_up(mirror, stubs, again)
                        assert mirror.tasks == expected
                        assert len(expected) == 3
                        assert mirror.lists == 1, "resumed from its revision, never relisted"
                        assert mirror.resumes >= 1
                finally:
                    running.cancel()

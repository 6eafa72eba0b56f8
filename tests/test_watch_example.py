"""The documented example client (examples/watch.py) keeps a correct mirror.

Across a restart: a real `taskservice serve` process is stopped with SIGTERM while the mirror
watches, and started again on the same port and database; changes made before, during the
mirror's first stream and after the restart must all end up in the mirror, which must have
resumed its watch (not listed again). Across memberships: the mirror takes in a shared list's
tasks when its user is added, follows them, and drops them when the user is removed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import field_mask_pb2

from taskservice.config import Settings
from taskservice.v1 import auth_service_pb2, task_list_pb2, task_list_service_pb2_grpc, task_pb2
from taskservice.v1 import task_list_service_pb2 as lsvc
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs, make_settings
from tests.helpers import PASSWORD, Account, register
from tests.ports import free_port
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


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, watch_bookmark_seconds=0.2)


async def _caught_up(mirror: object, stubs: Stubs, account: Account) -> dict[int, task_pb2.Task]:
    """Wait until the mirror holds what ListTasks lists now; return that.

    The test makes no change while it waits. A change is numbered just after its commit (on
    PostgreSQL), so the store's revision may not cover the last write yet: rather than wait for
    one revision, wait (within the deadline) until the mirror has passed the listing's revision
    and equals it, listing again whenever the mirror moves.
    """
    async with asyncio.timeout(DEADLINE):
        while True:
            listed = await stubs.tasks.ListTasks(
                pb.ListTasksRequest(page_size=1000), metadata=account.metadata
            )
            expected = {task.id: task for task in listed.tasks}
            if mirror.revision >= listed.revision and mirror.tasks == expected:  # type: ignore[attr-defined]
                return expected
            mirror.moved.clear()  # type: ignore[attr-defined]
            await mirror.moved.wait()  # type: ignore[attr-defined]


async def test_the_example_mirror_stays_correct_across_a_server_restart(tmp_path: Path) -> None:
    example = _example()
    env = {"JWT_SECRET_KEY": "k" * 64, "WATCH_BOOKMARK_SECONDS": "0.2"}
    assert (await _run(tmp_path, "migrate", **env))[0] == 0
    port = free_port()
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


async def test_the_example_mirror_follows_shared_list_membership(
    stubs: Stubs, channel: grpc.aio.Channel
) -> None:
    example = _example()
    lists = task_list_service_pb2_grpc.TaskListServiceStub(channel)
    alice, bob = await register(stubs), await register(stubs)
    own = await stubs.tasks.CreateTask(
        pb.CreateTaskRequest(task=task_pb2.Task(title="alice's")), metadata=alice.metadata
    )
    shared = (
        await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=task_list_pb2.TaskList(title="Shared")),
            metadata=bob.metadata,
        )
    ).task_list
    elsewhere = (
        await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=task_list_pb2.TaskList(title="Bob's")),
            metadata=bob.metadata,
        )
    ).task_list

    async def bobs_task(title: str) -> task_pb2.Task:
        created = await stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title=title, task_list_id=shared.id)),
            metadata=bob.metadata,
        )
        return created.task

    before = [await bobs_task(f"before {n}") for n in range(3)]
    mirror = example.Mirror(channel, alice.user.email, PASSWORD)
    running = asyncio.ensure_future(mirror.run())
    try:
        assert set(await _caught_up(mirror, stubs, alice)) == {own.task.id}
        assert set(mirror.tasks) == {own.task.id}
        await lists.AddTaskListMember(
            lsvc.AddTaskListMemberRequest(
                task_list_id=shared.id,
                member=task_list_pb2.TaskListMember(
                    user_id=alice.user.id, role=task_list_pb2.TASK_LIST_ROLE_VIEWER
                ),
            ),
            metadata=bob.metadata,
        )
        later = await bobs_task("after the grant")
        await stubs.tasks.PatchTask(
            pb.PatchTaskRequest(
                task=task_pb2.Task(id=before[0].id, title="patched"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            metadata=bob.metadata,
        )
        expected = await _caught_up(mirror, stubs, alice)
        assert set(expected) == {own.task.id, later.id, *(task.id for task in before)}
        assert mirror.tasks == expected
        await stubs.tasks.MoveTask(
            pb.MoveTaskRequest(id=before[1].id, task_list_id=elsewhere.id),
            metadata=bob.metadata,
        )
        expected = await _caught_up(mirror, stubs, alice)
        assert before[1].id not in expected
        assert mirror.tasks == expected
        await lists.RemoveTaskListMember(
            lsvc.RemoveTaskListMemberRequest(task_list_id=shared.id, user_id=alice.user.id),
            metadata=bob.metadata,
        )
        expected = await _caught_up(mirror, stubs, alice)
        assert set(expected) == {own.task.id}
        assert mirror.tasks == expected
        assert mirror.lists == 1
    finally:
        running.cancel()

r"""Mirror a user's tasks into a dict with ListTasks + WatchTasks, surviving server restarts.

    TASKSERVICE_TARGET=localhost:50051 TASKSERVICE_EMAIL=me@example.com \
    TASKSERVICE_PASSWORD='...' python examples/watch.py

The pattern (Kubernetes' list-then-watch):

1. list every task and note the list's `revision`;
2. watch from that revision, applying each change to the dict (a purged or trashed task, or
   one moved to a list the user may not see, leaves it; every other change carries the whole
   task, so applying one twice is harmless); when the user gains access to a shared list, list
   that list's tasks into the dict, and when they lose it, drop them;
3. remember the `revision` of every response, bookmarks included; when the stream breaks
   (the server restarts: UNAVAILABLE; the mirror fell behind: RESOURCE_EXHAUSTED), watch again
   from that revision: no change is lost or seen twice;
4. only when the history is gone (FAILED_PRECONDITION, REVISION_COMPACTED) relist from scratch;
   when the token expires (UNAUTHENTICATED), log in again.

Only grpcio and the generated stubs of taskservice.v1 are used.
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc

from taskservice.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

logger = logging.getLogger("watch-example")

#: Codes after which the mirror just watches again from the last revision it saw.
RESUMABLE = {
    grpc.StatusCode.UNAVAILABLE,  # the server stopped or restarted: retry (elsewhere)
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # WATCHER_TOO_SLOW or TOO_MANY_WATCHERS
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
#: Changes that take a task out of the mirror (it mirrors live tasks, as ListTasks lists them).
LEAVING = {
    task_service_pb2.TASK_CHANGE_TYPE_DELETED,
    task_service_pb2.TASK_CHANGE_TYPE_PURGED,
    task_service_pb2.TASK_CHANGE_TYPE_HIDDEN,
}


class Mirror:
    """The caller's live tasks by id, kept current by a watch."""

    def __init__(self, channel: grpc.aio.Channel, email: str, password: str) -> None:
        self._auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        self._tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        self._email = email
        self._password = password
        self._metadata: tuple[tuple[str, str], ...] = ()
        #: The mirrored tasks.
        self.tasks: dict[int, task_pb2.Task] = {}
        #: The last revision seen; every change up to it is applied.
        self.revision = 0
        #: How often the mirror listed (1 unless history was compacted) and resumed a watch.
        self.lists = 0
        self.resumes = 0
        #: Set whenever `revision` moves.
        self.moved = asyncio.Event()

    async def run(self) -> None:
        """Mirror until cancelled."""
        backoff = 0.1
        while True:
            try:
                if not self._metadata:
                    await self._log_in()
                if self.lists == 0 or self.revision == 0:
                    await self._list()
                await self._watch()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.FAILED_PRECONDITION:  # REVISION_COMPACTED
                    logger.warning("history compacted: listing again")
                    self.revision = 0
                elif code == grpc.StatusCode.UNAUTHENTICATED:
                    self._metadata = ()
                elif code not in RESUMABLE:
                    raise
                logger.info("stream ended (%s); resuming from %d", code.name, self.revision)
                self.resumes += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.1

    async def _log_in(self) -> None:
        response = await self._auth.Login(
            auth_service_pb2.LoginRequest(email=self._email, password=self._password),
            wait_for_ready=True,
        )
        self._metadata = (("authorization", f"Bearer {response.access_token}"),)

    async def _list(self) -> None:
        tasks, revision = await self._list_tasks()
        self.tasks, self.lists = tasks, self.lists + 1
        self._moved_to(revision)

    async def _list_tasks(self, filter_text: str = "") -> tuple[dict[int, task_pb2.Task], int]:
        """Every live task (matching `filter_text`), and the revision to watch from."""
        tasks: dict[int, task_pb2.Task] = {}
        revision, token = 0, ""
        while True:
            page = await self._tasks.ListTasks(
                task_service_pb2.ListTasksRequest(
                    page_size=1000, page_token=token, filter=filter_text
                ),
                metadata=self._metadata,
                wait_for_ready=True,
            )
            revision = revision or page.revision  # the first page's: the oldest, so safe
            tasks.update((task.id, task) for task in page.tasks)
            token = page.next_page_token
            if not token:
                return tasks, revision

    async def _watch(self) -> None:
        stream = self._tasks.WatchTasks(
            task_service_pb2.WatchTasksRequest(start_revision=self.revision),
            metadata=self._metadata,
            wait_for_ready=True,  # while the server restarts, wait for it instead of failing
        )
        async for response in stream:
            if response.HasField("change"):
                self._apply(response.change)
            elif response.HasField("access_change"):
                await self._access(response.access_change)
            self._moved_to(response.revision)

    async def _access(self, access: task_service_pb2.TaskListAccessChange) -> None:
        """Membership of a list changed: take in its tasks, or drop them.

        The listing happens after the grant, and the stream goes on with every change of the
        list after it, so whatever the listing misses or shows early, the stream puts right.
        """
        list_id = access.task_list_id
        if access.type == task_service_pb2.TASK_LIST_ACCESS_CHANGE_TYPE_GRANTED:
            listed, _ = await self._list_tasks(f"task_list_id = {list_id}")
            self.tasks.update(listed)
        elif access.type == task_service_pb2.TASK_LIST_ACCESS_CHANGE_TYPE_REVOKED:
            for task_id in [i for i, task in self.tasks.items() if task.task_list_id == list_id]:
                del self.tasks[task_id]

    def _apply(self, change: task_service_pb2.TaskChange) -> None:
        if change.type in LEAVING:
            self.tasks.pop(change.task.id, None)
        else:
            self.tasks[change.task.id] = change.task

    def _moved_to(self, revision: int) -> None:
        self.revision = revision
        self.moved.set()


async def main() -> None:
    """Mirror the tasks of TASKSERVICE_EMAIL and print each change as it comes."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = os.environ.get("TASKSERVICE_TARGET", "localhost:50051")
    async with grpc.aio.insecure_channel(target) as channel:
        mirror = Mirror(
            channel, os.environ["TASKSERVICE_EMAIL"], os.environ["TASKSERVICE_PASSWORD"]
        )
        running = asyncio.ensure_future(mirror.run())
        try:
            while True:
                await mirror.moved.wait()
                mirror.moved.clear()
                titles = sorted(task.title for task in mirror.tasks.values())
                print(f"revision {mirror.revision}: {len(titles)} tasks {titles[:5]}", flush=True)
        finally:
            running.cancel()


if __name__ == "__main__":
    asyncio.run(main())

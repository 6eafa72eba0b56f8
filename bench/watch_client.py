"""One watcher process of `python -m bench.watch`: many WatchTasks streams, read leanly.

The watchers run in child processes of their own (started with `spawn`), each with its own
event loop, so the latency of a change is not the time one overloaded client loop takes to
read a thousand streams. A child opens its streams over channels of at most
STREAMS_PER_CHANNEL streams each (a connection carries at most MAX_CONCURRENT_STREAMS), then
obeys its parent over a pipe: `open` (streams, answered when every stream has its first
bookmark), `close` (cancel every stream and close the channels), `report` (the arrival time of
each change each stream received), `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from multiprocessing.connection import Connection

import grpc

from taskservice import loop as loops
from taskservice.v1 import task_service_pb2, task_service_pb2_grpc

#: Streams a process opens before waiting for their first responses.
OPENED_AT_ONCE = 200

#: Streams opened per channel (each channel is one HTTP/2 connection).
STREAMS_PER_CHANNEL = 90


class Watchers:
    """The streams of one watcher process, and what each received."""

    def __init__(self, target: str, token: str, batch: int) -> None:
        self.target = target
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.batch = batch
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        #: Per stream: (task id, arrival time) of each change, in arrival order.
        self.arrivals: list[list[tuple[int, float]]] = []

    async def open(self, count: int) -> None:
        """Open `count` streams; return once each has its first response (the bookmark)."""
        self.channels = [
            grpc.aio.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(-(-count // STREAMS_PER_CHANNEL))
        ]
        self.arrivals = [[] for _ in range(count)]
        remaining = count
        ready = asyncio.Event()
        request = task_service_pb2.WatchTasksRequest()
        if self.batch > 1:  # an older server's protos lack the field: leave it out when unset
            request.max_changes_per_response = self.batch

        async def watch(number: int) -> None:
            nonlocal remaining
            stub = task_service_pb2_grpc.TaskServiceStub(
                self.channels[number // STREAMS_PER_CHANNEL]
            )
            arrivals = self.arrivals[number]
            stream = stub.WatchTasks(request, metadata=self.metadata)
            await stream.read()  # the bookmark
            remaining -= 1
            if not remaining:
                ready.set()
            batching = self.batch > 1
            while (response := await stream.read()) is not grpc.aio.EOF:
                now = time.perf_counter()
                if batching:
                    arrivals += [(event.change.task.id, now) for event in response.events]
                elif response.HasField("change"):
                    arrivals.append((response.change.task.id, now))

        # In waves: a server holds at most about a thousand calls it has not yet picked up,
        # and cancels the rest (grpc core's pending-call limit), so opening thousands at once
        # would measure that, not a server with that many watchers.
        for first in range(0, count, OPENED_AT_ONCE):
            wave = range(first, min(count, first + OPENED_AT_ONCE))
            self.tasks += [asyncio.ensure_future(watch(n)) for n in wave]
            async with asyncio.timeout(300):
                while remaining > count - wave.stop:  # noqa: ASYNC110 - polled under a deadline
                    await asyncio.sleep(0.01)
        await asyncio.wait_for(ready.wait(), 300)

    async def close(self) -> None:
        """Cancel every stream and close every channel."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task
        for channel in self.channels:
            await channel.close()
        self.tasks, self.channels = [], []


async def _serve(watchers: Watchers, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command, argument = await loop.run_in_executor(None, pipe.recv)
        if command == "open":
            await watchers.open(argument)
            pipe.send("opened")
        elif command == "close":
            await watchers.close()
            pipe.send("closed")
        elif command == "report":
            pipe.send(watchers.arrivals)
        elif command == "stop":
            await watchers.close()
            pipe.send("stopped")
            return


def run(target: str, token: str, batch: int, pipe: Connection) -> None:
    """A child's body: serve the parent's commands until `stop`."""
    loops.run(_serve(Watchers(target, token, batch), pipe))

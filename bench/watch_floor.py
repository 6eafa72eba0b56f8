"""The memory floor of an idle server stream: a bare grpc.aio server, no taskservice code.

    python -m bench.watch_floor [--streams 10000] [--clients 4]

The server (its own process, uvloop) has one server-streaming method that sends one message and
then waits forever, as an idle WatchTasks stream does; the clients (processes of their own) open
`--streams` streams, 90 a connection, 200 at a time. The server's RSS growth per stream is what
grpc.aio itself costs for an idle stream, below anything `make bench-watch` can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import grpc

from bench.watch_client import OPENED_AT_ONCE, STREAMS_PER_CHANNEL
from taskservice import loop as loops
from taskservice.v1 import task_service_pb2 as pb

METHOD = "/taskservice.v1.TaskService/WatchTasks"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _serve(ports: Queue[int]) -> None:
    async def main() -> None:
        async def watch(_request: Any, _context: Any) -> Any:
            yield pb.WatchTasksResponse(revision=1)
            await asyncio.get_running_loop().create_future()

        handler = grpc.method_handlers_generic_handler(
            "taskservice.v1.TaskService",
            {
                "WatchTasks": grpc.unary_stream_rpc_method_handler(
                    watch,
                    request_deserializer=pb.WatchTasksRequest.FromString,
                    response_serializer=pb.WatchTasksResponse.SerializeToString,
                )
            },
        )
        server = grpc.aio.server(maximum_concurrent_rpcs=1_000_000)
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ports.put(port)
        await server.wait_for_termination()

    loops.run(main())


def _watch(port: int, count: int, opened: Queue[int]) -> None:
    async def main() -> None:
        channels = [
            grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(-(-count // STREAMS_PER_CHANNEL))
        ]
        calls = []
        for number in range(count):
            method = channels[number // STREAMS_PER_CHANNEL].unary_stream(
                METHOD,
                request_serializer=pb.WatchTasksRequest.SerializeToString,
                response_deserializer=pb.WatchTasksResponse.FromString,
            )
            calls.append(method(pb.WatchTasksRequest()))
            if len(calls) % OPENED_AT_ONCE == 0 or number == count - 1:
                for call in calls[-(len(calls) % OPENED_AT_ONCE or OPENED_AT_ONCE) :]:
                    await call.read()
        opened.put(count)
        await asyncio.get_running_loop().create_future()

    loops.run(main())


def main(argv: list[str] | None = None) -> int:
    """Measure and print the RSS per idle stream of a bare grpc.aio server."""
    parser = argparse.ArgumentParser(prog="python -m bench.watch_floor", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    queue: Queue[int] = context.Queue()
    server = context.Process(target=_serve, args=(queue,), daemon=True)
    server.start()
    port = queue.get()
    time.sleep(1.0)
    before = _rss_kib(server.pid or 0)
    shares = [args.streams // args.clients] * args.clients
    clients = [
        context.Process(target=_watch, args=(port, share, queue), daemon=True) for share in shares
    ]
    for client in clients:
        client.start()
    for _ in clients:
        queue.get()
    time.sleep(2.0)
    after = _rss_kib(server.pid or 0)
    print(
        f"bare grpc.aio, {sum(shares)} idle streams: {(after - before) / sum(shares):.1f} KiB "
        f"each (RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB)"
    )
    for process in [*clients, server]:
        process.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""WatchTasks under load: server memory per idle watcher, and write-to-event latency fan-out.

    python -m bench.watch [--database-url postgresql://...] [--watchers 1000] [--writes 200]

Runs `taskservice serve` in a child process (the real server), opens `--watchers` streams for one
user over several channels (a connection carries at most MAX_CONCURRENT_STREAMS streams), and
reads the server's RSS before and after: the difference per stream is the memory an idle
watcher costs. Then it makes `--writes` CreateTask calls one after another, paced, and for each
records when every watcher received the change: latency is measured from the moment the call
was *sent*, so it bounds commit-to-event from above. p50 and p99 are over all (write, watcher)
pairs. It runs only what it names: the mixed h2load scenarios of `python -m bench` are separate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.processes import TaskService
from bench.run import migrate, server_environment
from bench.seed import PASSWORD, recreate_postgres_database
from taskservice.config import normalize_database_url
from taskservice.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

#: The targets, for 1,000 watchers and 50 writes a second: figure -> most allowed.
TARGETS = {"rss_kib_per_idle_watcher": 20.0, "latency_ms_p99": 50.0}

#: Streams opened per channel (each channel is one HTTP/2 connection).
STREAMS_PER_CHANNEL = 90


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _run(target: str, pid: int, watchers: int, writes: int, rate: float) -> dict[str, float]:
    # A local subchannel pool each: channels to one target otherwise share one connection, and
    # its MAX_CONCURRENT_STREAMS would hold every stream past the first hundred or so.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-watchers // STREAMS_PER_CHANNEL))
    ]
    try:
        auth = auth_service_pb2_grpc.AuthServiceStub(channels[0])
        registered = await auth.Register(
            auth_service_pb2.RegisterRequest(email="watcher@example.com", password=PASSWORD)
        )
        metadata = (("authorization", f"Bearer {registered.access_token}"),)
        stubs = [task_service_pb2_grpc.TaskServiceStub(channel) for channel in channels]
        await asyncio.sleep(1.0)  # let the server settle before the first RSS reading
        before = _rss_kib(pid)
        arrivals: list[dict[int, float]] = [{} for _ in range(watchers)]
        opened = 0
        ready = asyncio.Event()

        async def watcher(number: int) -> None:
            nonlocal opened
            stream = stubs[number // STREAMS_PER_CHANNEL].WatchTasks(
                task_service_pb2.WatchTasksRequest(), metadata=metadata
            )
            first = True
            async for response in stream:
                if first:
                    first = False
                    opened += 1
                    if opened == watchers:
                        ready.set()
                elif response.HasField("change"):
                    arrivals[number][response.change.task.id] = time.perf_counter()

        tasks = [asyncio.ensure_future(watcher(n)) for n in range(watchers)]
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(1.0)
        after = _rss_kib(pid)
        sent: dict[int, float] = {}
        for number in range(writes):
            started = time.perf_counter()
            created = await stubs[0].CreateTask(
                task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title=f"bench {number}")),
                metadata=metadata,
            )
            sent[created.task.id] = started
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(len(a) < writes for a in arrivals):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        latencies = sorted(
            (arrival[task_id] - sent_at) * 1000
            for arrival in arrivals
            for task_id, sent_at in sent.items()
            if task_id in arrival
        )
        missing = watchers * writes - len(latencies)
        quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
        return {
            "watchers": watchers,
            "writes": writes,
            "rss_kib_per_idle_watcher": round((after - before) / watchers, 1),
            "latency_ms_p50": round(quantiles[49], 2),
            "latency_ms_p99": round(quantiles[98], 2),
            "events_missing": missing,
        }
    finally:
        for channel in channels:
            await channel.close()


def main(argv: list[str] | None = None) -> int:
    """Run the watch benchmark once and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.watch", description=__doc__)
    parser.add_argument("--database-url", help="PostgreSQL (recreated!); default: SQLite")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="taskservice-bench-watch-") as scratch:
        workdir = Path(scratch)
        if args.database_url:
            url = normalize_database_url(args.database_url)
            asyncio.run(recreate_postgres_database(url))
        else:
            url = normalize_database_url(f"sqlite:///{workdir / 'bench.db'}")
        environment = {
            **server_environment(url, 4),
            "MAX_CONCURRENT_RPCS": str(args.watchers + 100),
            "MAX_CONCURRENT_STREAMS": str(STREAMS_PER_CHANNEL + 10),
        }
        migrate(environment)
        service = TaskService(environment, 1, workdir / "server.log")
        try:
            service.wait_ready()
            figures = asyncio.run(
                _run(service.target, service.process.pid, args.watchers, args.writes, args.rate)
            )
        finally:
            service.stop()
    print(f"database: {url.get_backend_name()}")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    print(
        f"targets (set for 1,000 watchers, 50 writes/s; "
        f"this run: {args.watchers}, {args.rate:g}/s):"
    )
    for name, bound in TARGETS.items():
        mark = "met   " if figures[name] <= bound else "MISSED"
        print(f"  {mark} {name}: {figures[name]} (target <= {bound:g})")
    return 1 if figures["events_missing"] else 0


if __name__ == "__main__":
    sys.exit(main())

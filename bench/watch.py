"""WatchTasks under load: memory per idle watcher, change-to-event latency, CPU per change.

    python -m bench.watch [--database-url postgresql://...] [--watchers 1000] [--writes 200]

Runs `taskservice serve` (one process) in a child process and watchers in `--clients` processes
of their own (bench/watch_client.py: each its own event loop and channels, at most
STREAMS_PER_CHANNEL streams a connection), so the readers' cost is not what the latency
measures. In order:

1. `--writes` CreateTask calls started at `--rate` a second (open loop: each on time, whether or
   not the previous one has returned) with no watcher open: their p50 is the write latency to
   compare with.
2. `--watchers` streams of one user opened (spread over the clients); the server's RSS growth
   over the streams opened is the memory per idle watcher.
3. The server's CPU over a few seconds with every stream idle (printed per second), then the
   same writes again, paced: for each (write, watcher) pair the time from the call's OK (and
   from its sending, which bounds commit-to-event from above) to the event's arrival; the
   server's CPU over the writes less its idle CPU over as long is the CPU per change; and the
   writes' own p50.
4. Every stream closed, and the RSS read; with `--cycles N`, open and close N times in all and
   report each cycle's RSS with its streams idle, its peak (the first cycle's is after the
   writes' events, when higher) and the RSS after it.

`--batch N` asks for up to N changes per response (WatchTasksRequest.max_changes_per_response).
It runs only what it names: the mixed h2load scenarios of `python -m bench` are separate.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from bench import watch_client
from bench.processes import TaskService, cpu_seconds, rss_kib
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

#: The targets: figure -> most allowed. Latency and writes for 1,000 watchers; memory and CPU per
#: change for 10,000 (a smaller run prints them for what they are worth).
TARGETS = {
    "rss_kib_per_idle_watcher": 15.0,
    "latency_ms_p50": 10.0,
    "latency_ms_p99": 50.0,
    "cpu_ms_per_change": 20.0,
    "write_p50_ratio": 2.0,
}

#: Most CreateTask calls in flight at once (a connection carries at most MAX_CONCURRENT_STREAMS);
#: past it a write waits, and that wait counts in its latency.
MOST_WRITES_IN_FLIGHT = 64

#: Seconds of idle server CPU measured before the writes, to subtract from theirs.
IDLE_SECONDS = 3.0


def _quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[q - 1]


class Clients:
    """The watcher processes, driven over pipes."""

    def __init__(self, target: str, token: str, batch: int, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=watch_client.run, args=(target, token, batch, child), daemon=True
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def ask(self, command: str, arguments: list[object]) -> list[object]:
        """Send each child its command and argument; return their answers."""
        for pipe, argument in zip(self.pipes, arguments, strict=True):
            pipe.send((command, argument))
        return [pipe.recv() for pipe in self.pipes]

    def open(self, watchers: int) -> None:
        """Open `watchers` streams, shared out among the children; return once all are open."""
        n = len(self.pipes)
        self.ask("open", [watchers // n + (1 if i < watchers % n else 0) for i in range(n)])

    def close(self) -> None:
        """Close every stream."""
        self.ask("close", [None] * len(self.pipes))

    def arrivals(self) -> list[list[tuple[int, float]]]:
        """Each stream's (task id, arrival time) of every change it received so far."""
        return [
            stream for share in self.ask("report", [None] * len(self.pipes)) for stream in share
        ]  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Close every stream and end the children."""
        self.ask("stop", [None] * len(self.pipes))
        for process in self.processes:
            process.join(10)


async def _writes(
    stub: task_service_pb2_grpc.TaskServiceStub,
    metadata: tuple[tuple[str, str], ...],
    writes: int,
    rate: float,
) -> dict[int, tuple[float, float]]:
    """CreateTask calls started at `rate` a second: task id -> (sent, OK) perf_counter times.

    Each starts on time whether or not the previous one has returned (open loop: a service's
    writers do not wait for each other), so a slow server does not slow the writes down.
    """
    times = {}
    in_flight = asyncio.Semaphore(MOST_WRITES_IN_FLIGHT)

    async def create(number: int) -> None:
        started = time.perf_counter()
        async with in_flight:
            created = await stub.CreateTask(
                task_service_pb2.CreateTaskRequest(task=task_pb2.Task(title=f"bench {number}")),
                metadata=metadata,
            )
        times[created.task.id] = (started, time.perf_counter())

    calls = []
    begun = time.perf_counter()
    for number in range(writes):
        await asyncio.sleep(max(0.0, begun + number / rate - time.perf_counter()))
        calls.append(asyncio.ensure_future(create(number)))
    await asyncio.gather(*calls)
    return times


async def _token(target: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        registered = await auth_service_pb2_grpc.AuthServiceStub(channel).Register(
            auth_service_pb2.RegisterRequest(email="watcher@example.com", password=PASSWORD)
        )
    return registered.access_token


def _p50_ms(times: dict[int, tuple[float, float]]) -> float:
    return _quantile([(ok - sent) * 1000 for sent, ok in times.values()], 50)


def _measure(
    target: str,
    pid: int,
    watchers: int,
    writes: int,
    rate: float,
    batch: int,
    clients: int,
    cycles: int,
    profile: str | None = None,
) -> dict[str, float]:
    token = asyncio.run(_token(target))
    metadata = (("authorization", f"Bearer {token}"),)

    async def write_phase() -> dict[int, tuple[float, float]]:
        async with grpc.aio.insecure_channel(target) as channel:
            return await _writes(
                task_service_pb2_grpc.TaskServiceStub(channel), metadata, writes, rate
            )

    alone = asyncio.run(write_phase())
    group = Clients(target, token, batch, clients)
    figures: dict[str, float] = {"watchers": watchers, "writes": writes, "batch": batch}
    try:
        time.sleep(1.0)  # the server settles after the writes before the first RSS reading
        first_before = rss_kib(pid)
        peaks, afters = [], []
        idle = []
        for cycle in range(cycles):
            before = rss_kib(pid)
            group.open(watchers)
            time.sleep(1.0)
            idle.append(rss_kib(pid))
            peaks.append(idle[-1])
            if cycle == 0:
                figures["rss_kib_per_idle_watcher"] = round((idle[0] - before) / watchers, 1)
                cpu = cpu_seconds(pid)
                time.sleep(IDLE_SECONDS)
                idle_rate = (cpu_seconds(pid) - cpu) / IDLE_SECONDS
                figures["idle_cpu_ms_per_s"] = round(idle_rate * 1000, 1)
                spy = _py_spy(pid, writes / rate, profile) if profile else None
                cpu, started = cpu_seconds(pid), time.monotonic()
                times = asyncio.run(write_phase())
                if spy is not None:
                    spy.wait()
                arrivals = _collect(group, writes, watchers)
                busy = cpu_seconds(pid) - cpu - idle_rate * (time.monotonic() - started)
                figures.update(_latencies(times, arrivals, watchers, writes))
                figures["cpu_ms_per_change"] = round(busy * 1000 / writes, 2)
                figures["write_p50_ms_alone"] = round(_p50_ms(alone), 2)
                figures["write_p50_ms_watched"] = round(_p50_ms(times), 2)
                figures["write_p50_ratio"] = round(_p50_ms(times) / _p50_ms(alone), 2)
                # The cycle's peak is its highest reading: the writes' events take memory too.
                after_writes = rss_kib(pid)
                figures["rss_mib_after_writes"] = round(after_writes / 1024, 1)
                peaks[0] = max(peaks[0], after_writes)
            group.close()
            time.sleep(2.0)
            afters.append(rss_kib(pid))
        figures["rss_mib_before_streams"] = round(first_before / 1024, 1)
        figures["rss_mib_idle_per_cycle"] = [round(p / 1024, 1) for p in idle]  # type: ignore[assignment]
        figures["rss_mib_peak_per_cycle"] = [round(p / 1024, 1) for p in peaks]  # type: ignore[assignment]
        figures["rss_mib_after_close_per_cycle"] = [round(a / 1024, 1) for a in afters]  # type: ignore[assignment]
    finally:
        group.stop()
    return figures


def _py_spy(pid: int, seconds: float, output: str) -> subprocess.Popen[bytes]:
    """py-spy (next to this Python) sampling the server's threads, native frames included."""
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--native", "-p", str(pid)]
    command += ["-d", str(max(1, int(seconds))), "-r", "50", "-f", "raw", "-o", output]
    return subprocess.Popen(  # noqa: S603 - our own py-spy, our own arguments
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _collect(group: Clients, writes: int, watchers: int) -> list[list[tuple[int, float]]]:
    """Every stream's arrivals, once each has every change (or 30 s have passed)."""
    deadline = time.monotonic() + 30
    while True:
        arrivals = group.arrivals()
        if sum(len(a) for a in arrivals) >= writes * watchers or time.monotonic() > deadline:
            return arrivals
        time.sleep(0.2)


def _latencies(
    times: dict[int, tuple[float, float]],
    arrivals: list[list[tuple[int, float]]],
    watchers: int,
    writes: int,
) -> dict[str, float]:
    from_ok, from_sent = [], []
    for stream in arrivals:
        for task_id, arrived in stream:
            if task_id in times:
                sent, ok = times[task_id]
                from_ok.append((arrived - ok) * 1000)
                from_sent.append((arrived - sent) * 1000)
    return {
        "latency_ms_p50": round(_quantile(from_ok, 50), 2),
        "latency_ms_p99": round(_quantile(from_ok, 99), 2),
        "latency_from_send_ms_p50": round(_quantile(from_sent, 50), 2),
        "latency_from_send_ms_p99": round(_quantile(from_sent, 99), 2),
        "events_missing": watchers * writes - len(from_ok),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the watch benchmark once and print its figures."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.watch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", help="PostgreSQL (recreated!); default: SQLite")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second")
    parser.add_argument("--batch", type=int, default=1, help="max_changes_per_response")
    parser.add_argument("--clients", type=int, default=2, help="watcher processes")
    parser.add_argument("--cycles", type=int, default=1, help="times to open and close them")
    parser.add_argument("--profile", help="py-spy the server during the writes into this file")
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
            "MAX_CONCURRENT_STREAMS": str(watch_client.STREAMS_PER_CHANNEL + 10),
            "WATCH_MAX_STREAMS": str(max(args.watchers, 10_000)),
        }
        migrate(environment)
        service = TaskService(environment, 1, workdir / "server.log")
        try:
            service.wait_ready()
            figures = _measure(
                service.target,
                service.process.pid,
                args.watchers,
                args.writes,
                args.rate,
                args.batch,
                args.clients,
                args.cycles,
                args.profile,
            )
        finally:
            service.stop()
    print(f"database: {url.get_backend_name()}")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    print(f"targets (this run: {args.watchers} watchers, {args.rate:g} writes/s):")
    for name, bound in TARGETS.items():
        mark = "met   " if figures[name] <= bound else "MISSED"
        print(f"  {mark} {name}: {figures[name]} (target <= {bound:g})")
    return 1 if figures["events_missing"] else 0


if __name__ == "__main__":
    sys.exit(main())

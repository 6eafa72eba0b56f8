"""The processes under test: taskservice, started as production starts it, and the baselines.

Also how to wait for them, read their memory, and read taskservice's call counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.echo_server import CALLS_PATH as ECHO_CALLS_PATH
from bench.floor_server import CALLS_PATH as FLOOR_CALLS_PATH
from bench.ports import free_port, free_ports

#: (method, grpc code) -> calls handled, summed over the workers.
Handled = Counter[tuple[str, str]]


class TaskService:
    """`taskservice serve` in a child process, with metrics on for the harness to read."""

    def __init__(self, environment: dict[str, str], workers: int, log: Path) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.workers = workers
        base = free_ports(workers)  # worker `slot` serves metrics on METRICS_PORT + slot
        self._metrics_ports = [base + slot for slot in range(workers)]
        env = {
            **environment,
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.port),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.http_port),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(self._metrics_ports[0]),
            "WORKERS": str(workers),
        }
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskservice", "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.target = f"127.0.0.1:{self.port}"
        #: The HTTP edge (Connect, gRPC-Web), for the Connect scenarios.
        self.http_target = f"127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until readiness reports SERVING and every worker serves its metrics.

        Readiness comes from whichever worker takes the connection: with several, the others may
        still be starting, and a measurement must not begin (nor a worker's counters be read)
        before each one is up.
        """
        deadline = time.monotonic() + timeout
        request = health_pb2.HealthCheckRequest(service="readiness")
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while not (self._serving(health, request) and self._metrics_answer()):
                if self.process.poll() is not None:
                    raise RuntimeError(f"taskservice exited {self.process.returncode} at start")
                if time.monotonic() > deadline:
                    raise RuntimeError("taskservice did not become ready")
                time.sleep(0.1)

    @staticmethod
    def _serving(
        health: health_pb2_grpc.HealthStub, request: health_pb2.HealthCheckRequest
    ) -> bool:
        try:
            return health.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def _metrics_answer(self) -> bool:
        for port in self._metrics_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
                    pass
            except OSError:
                return False
        return True

    def handled(self) -> Handled:
        """Calls completed so far, by method and status code (`grpc_server_handled_total`)."""
        counts: Handled = Counter()
        for port in self._metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            for family in text_string_to_metric_families(text):
                if family.name != "grpc_server_handled":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = (sample.labels["grpc_method"], sample.labels["grpc_code"])
                        counts[key] += int(sample.value)
        return counts

    def worker_pids(self) -> list[int]:
        """The processes that serve calls: the server itself, or the supervisor's workers."""
        if self.workers == 1:
            return [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        """SIGTERM (the graceful drain), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class _BaselineServer:
    """A baseline server module (`python -m MODULE`) in a child process of its own."""

    calls_path = ""

    def __init__(self, module: str, *arguments: str) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", module, *arguments],
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.process.stdout is None:
            raise RuntimeError(f"{module} has no stdout")
        line = self.process.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"{module} exited {self.process.wait()} at start")
        self.target = f"127.0.0.1:{int(line)}"

    def calls(self) -> int:
        """How many calls the server has answered."""
        with grpc.insecure_channel(self.target) as channel:
            method = channel.unary_unary(self.calls_path)
            return int(method(b"", timeout=5))

    def worker_pids(self) -> list[int]:
        """The one process serving calls."""
        return [self.process.pid]

    def stop(self) -> None:
        """Stop the server."""
        self.process.terminate()
        self.process.wait(timeout=10)


class EchoServer(_BaselineServer):
    """The echo baseline (bench/echo_server.py): grpc.aio's own least work per call."""

    calls_path = ECHO_CALLS_PATH

    def __init__(self) -> None:
        super().__init__("bench.echo_server")


class FloorServer(_BaselineServer):
    """The floor (bench/floor_server.py): one asyncpg `fetchrow` of task `task_id` per call."""

    calls_path = FLOOR_CALLS_PATH

    def __init__(self, dsn: str, task_id: int) -> None:
        self.dsn = dsn
        super().__init__("bench.floor_server", "--dsn", dsn, "--task-id", str(task_id))


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    return rss_kib(pid) / 1024


#: Linux's CPU-time clock of a whole process, every thread included (CPUCLOCK_SCHED).
_CPUCLOCK_SCHED = 2


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far (user and system, all its threads), in seconds.

    Read from the process's CPU-time clock to the nanosecond, the clock id glibc's
    clock_getcpuclockid(3) gives: /proc/PID/stat counts 10 ms ticks, and a short run (a test's
    20 echo calls) could measure none.
    """
    return time.clock_gettime((~pid << 3) | _CPUCLOCK_SCHED)


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))

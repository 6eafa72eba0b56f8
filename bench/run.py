"""The benchmark run: prepare a database, start both servers, measure every scenario, report.

Every measured call is checked twice: h2load must see HTTP 200 for all of them, and the server's
`grpc_server_handled_total` must have grown by exactly the number of calls, all with code OK, so
a call that failed with a grpc-status (which h2load cannot see) fails the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from sqlalchemy.engine import URL

from bench import h2load
from bench.h2load import Load, Result
from bench.original import OriginalService
from bench.otlp_sink import OtlpSink
from bench.processes import (
    EchoServer,
    Handled,
    TaskService,
    cpu_count,
    cpu_seconds,
    rss_mib,
)
from bench.scenarios import (
    ECHO,
    LIST_VIEWS,
    SCENARIOS,
    Fixture,
    Scenario,
    by_name,
    login_storm,
    view_request,
)
from bench.seed import ADMIN_EMAIL, PASSWORD, Seeded, recreate_postgres_database, seed, user_email
from taskservice.config import normalize_database_url
from taskservice.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)

#: Calls per measurement at concurrency 1; above 1, CONCURRENT_CALLS_FACTOR times more.
DEFAULT_CALLS = 1000
CONCURRENT_CALLS_FACTOR = 5
STORM_CONCURRENCY = 32


class RunFailed(RuntimeError):
    """A call failed, or the server did not count what was sent: the figures mean nothing."""


@dataclass
class Measurement:
    """One scenario at one concurrency."""

    scenario: str
    concurrency: int
    calls: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    max_worker_rss_mib: float
    #: The server's CPU time (every worker, user and system) per 1,000 calls measured: what a
    #: call costs, whatever the cores left free by h2load and the database.
    server_cpu_seconds_per_1000: float | None = None
    ratio_to_baseline: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def _percentile(sorted_values: list[int], fraction: float) -> float:
    index = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[index] / 1000


def _measure(
    name: str, concurrency: int, results: list[Result], sequential: bool, rss: float
) -> Measurement:
    durations = sorted(d for result in results for d in result.durations_us)
    if sequential:
        spans = [_span_us(result) for result in results]
        elapsed_us = sum(spans)
    else:
        elapsed_us = _span_us(*results)
    return Measurement(
        scenario=name,
        concurrency=concurrency,
        calls=len(durations),
        calls_per_second=len(durations) / (elapsed_us / 1e6),
        p50_ms=_percentile(durations, 0.50),
        p99_ms=_percentile(durations, 0.99),
        max_worker_rss_mib=rss,
    )


def _span_us(*results: Result) -> int:
    """From the first call's start to the last call's end."""
    first = min(min(result.starts_us) for result in results)
    last = max(
        max(s + d for s, d in zip(result.starts_us, result.durations_us, strict=True))
        for result in results
    )
    return last - first


#: What the harness measures the CPU time and memory of.
Server = TaskService | EchoServer | OriginalService


class Bench:
    """Holds the servers and the scratch directory for one run."""

    def __init__(self, service: TaskService, echo: EchoServer, workdir: Path) -> None:
        self.service = service
        self.echo = echo
        self.workdir = workdir
        self._runs = 0

    def _run(
        self, loads: list[Load], target: str, sequential: bool, require_2xx: bool = False
    ) -> list[Result]:
        self._runs += 1
        name = f"run{self._runs}"
        if sequential:
            return [
                h2load.run([load], target, self.workdir, f"{name}-{i}", require_2xx)[0]
                for i, load in enumerate(loads)
            ]
        return h2load.run(loads, target, self.workdir, name, require_2xx)

    def _rss(self, server: Server) -> float:
        return max(rss_mib(pid) for pid in server.worker_pids())

    def _cpu(self, server: Server) -> float:
        return sum(cpu_seconds(pid) for pid in server.worker_pids())

    def _timed_run(
        self,
        server: Server,
        loads: list[Load],
        target: str,
        sequential: bool,
        require_2xx: bool = False,
    ) -> tuple[list[Result], float]:
        """The run's results and the server's CPU seconds per 1,000 of its calls."""
        cpu = self._cpu(server)
        results = self._run(loads, target, sequential, require_2xx)
        calls = sum(load.calls for load in loads)
        return results, (self._cpu(server) - cpu) * 1000 / calls

    def measure(
        self, scenario: Scenario, fixture: Fixture, concurrency: int, calls: int
    ) -> Measurement:
        """Warm up, then measure; fail the run unless every call is counted OK by the server."""
        loads = scenario.loads(fixture, concurrency, calls)
        warm_up = scenario.loads(fixture, concurrency, max(concurrency, calls // 10))
        sequential = concurrency == 1
        if scenario.baseline:
            self._run(warm_up, self.echo.target, sequential)
            before = self.echo.calls()
            results, cpu = self._timed_run(self.echo, loads, self.echo.target, sequential)
            served = self.echo.calls() - before
            sent = sum(load.calls for load in loads)
            if served != sent:
                raise RunFailed(f"echo server answered {served} calls of {sent}")
            measured = _measure(
                scenario.name, concurrency, results, sequential, self._rss(self.echo)
            )
            measured.server_cpu_seconds_per_1000 = cpu
            return measured
        target = self.service.http_target if scenario.http else self.service.target
        self._run(warm_up, target, sequential)
        before = self.service.handled()
        results, cpu = self._timed_run(self.service, loads, target, sequential)
        expected: Counter[str] = Counter()
        for load in loads:
            expected[load.method] += load.calls
        self._check(before, expected, scenario.name)
        measured = _measure(
            scenario.name, concurrency, results, sequential, self._rss(self.service)
        )
        measured.server_cpu_seconds_per_1000 = cpu
        return measured

    def measure_original(
        self,
        original: OriginalService,
        scenario: Scenario,
        fixture: Fixture,
        concurrency: int,
        calls: int,
    ) -> Measurement:
        """A REST scenario's very requests against the original backend, warmed up the same way.

        The original counts nothing the harness could check, but its errors are HTTP statuses
        that h2load reads: every call must be a 2xx.
        """
        loads = scenario.loads(fixture, concurrency, calls)
        warm_up = scenario.loads(fixture, concurrency, max(concurrency, calls // 10))
        sequential = concurrency == 1
        self._run(warm_up, original.target, sequential, require_2xx=True)
        results, cpu = self._timed_run(
            original, loads, original.target, sequential, require_2xx=True
        )
        measured = _measure(
            f"original {scenario.name}", concurrency, results, sequential, self._rss(original)
        )
        measured.server_cpu_seconds_per_1000 = cpu
        return measured

    def measure_storm(self, fixture: Fixture, concurrency: int, calls: int) -> Measurement:
        """GetTask while STORM_CONCURRENCY Logins run all the time."""
        storm = login_storm(fixture, STORM_CONCURRENCY)
        process, _log = h2load.start(storm, self.service.target, self.workdir, "storm")
        try:
            self._wait_for_logins(STORM_CONCURRENCY)
            before = self.service.handled()
            loads = by_name("GetTask").loads(fixture, concurrency, calls)
            results = self._run(loads, self.service.target, sequential=False)
            during = self.service.handled()
        finally:
            # SIGTERM, not SIGINT: a shell starting the bench in the background makes its
            # children ignore SIGINT, and the storm's h2load then ran until killed by hand.
            process.terminate()
            process.communicate()
        logins = during[("Login", "OK")] - before[("Login", "OK")]
        failed = {
            key: during[key] - before[key]
            for key in during
            if key[0] == "Login" and key[1] not in ("OK", "CANCELLED") and during[key] > before[key]
        }
        # Logins may all be between completions during a short GetTask run (bcrypt threads run at
        # idle priority and starve on a saturated machine): the storm was shown to be running
        # before the measurement, so only failed Logins make it unclean.
        if failed:
            raise RunFailed(f"the Login storm did not run cleanly: {logins} OK, {failed}")
        self._check(
            before, Counter({"GetTask": calls}), "GetTask during a Login storm", ignore="Login"
        )
        measurement = _measure(STORM, concurrency, results, False, self._rss(self.service))
        measurement.extra["storm_logins_per_second"] = logins / (_span_us(*results) / 1e6)
        return measurement

    def _wait_for_logins(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.service.handled()[("Login", "OK")]
        while self.service.handled()[("Login", "OK")] - start < count:
            if time.monotonic() > deadline:
                raise RunFailed("the Login storm never got going")
            time.sleep(0.05)

    def _check(self, before: Handled, expected: Counter[str], name: str, ignore: str = "") -> None:
        """The server's counts since `before` are exactly `expected` calls, all OK."""
        deadline = time.monotonic() + 5
        while True:
            after = self.service.handled()
            delta = {key: after[key] - before[key] for key in after if after[key] != before[key]}
            delta = {key: n for key, n in delta.items() if key[0] != ignore}
            wanted = {(method, "OK"): n for method, n in expected.items()}
            if delta == wanted:
                return
            if any(code != "OK" for _method_name, code in delta) or time.monotonic() > deadline:
                raise RunFailed(f"{name}: server counted {delta}, expected {wanted}")
            time.sleep(0.05)


def _deep_token(
    tasks: task_service_pb2_grpc.TaskServiceStub, metadata: tuple[tuple[str, str]], name: str
) -> str:
    """The token of a view's page 50 tasks before its end (or of its first page, if short)."""
    sizes: list[int] = []
    token = ""
    while True:  # count the view, 1000 at a time
        page = tasks.ListTasks(view_request(name, token, 1000), metadata=metadata)
        sizes.append(len(page.tasks))
        token = page.next_page_token
        if not token:
            break
    remaining, token = max(0, sum(sizes) - 50), ""
    while remaining > 0:
        page = tasks.ListTasks(view_request(name, token, min(1000, remaining)), metadata=metadata)
        remaining -= len(page.tasks)
        token = page.next_page_token
    return token


def find_fixture(target: str, seeded: Seeded, tasks_per_user: int) -> Fixture:
    """Log in and find the rows and page tokens the scenarios address."""
    with grpc.insecure_channel(target) as channel:
        auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)

        def login(email: str) -> str:
            reply = auth.Login(auth_service_pb2.LoginRequest(email=email, password=PASSWORD))
            return reply.access_token

        user_token, admin_token = login(user_email(0)), login(ADMIN_EMAIL)
        user = (("authorization", f"Bearer {user_token}"),)
        admin = (("authorization", f"Bearer {admin_token}"),)
        own = tasks.ListTasks(task_service_pb2.ListTasksRequest(page_size=1000), metadata=user)
        ids = [task.id for task in own.tasks]
        # The user's last page of 50: the token after all but the last 50 of their tasks.
        deep = tasks.ListTasks(
            task_service_pb2.ListTasksRequest(page_size=max(1, tasks_per_user - 50)), metadata=user
        ).next_page_token
        # The admin's page 50 tasks before the end of every task: walk there 1000 at a time.
        remaining = len(seeded.user_ids) * tasks_per_user
        admin_deep, token = "", ""
        while remaining > 1000:
            page = tasks.ListTasks(
                task_service_pb2.ListTasksRequest(
                    page_size=min(1000, remaining - 50), page_token=token
                ),
                metadata=admin,
            )
            remaining -= len(page.tasks)
            token = admin_deep = page.next_page_token
        if not admin_deep:
            admin_deep = tasks.ListTasks(
                task_service_pb2.ListTasksRequest(page_size=max(1, remaining - 50)), metadata=admin
            ).next_page_token
        views = {name: _deep_token(tasks, user, name) for name in LIST_VIEWS}
    return Fixture(
        view_deep_page_tokens=views,
        user_token=user_token,
        login_email=user_email(1),
        task_id=ids[len(ids) // 2],
        patch_task_ids=ids[:4],
        deep_page_token=deep,
        admin_token=admin_token,
        admin_deep_page_token=admin_deep,
    )


def _machine(database: str) -> dict[str, object]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    h2load_version = subprocess.run(  # noqa: S603 - our own command
        [h2load.executable(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],  # noqa: S607 - git from PATH
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": model,
        "cpus": cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "h2load": h2load_version,
        "database": database,
        "commit": commit,
    }


def _table(measurements: list[Measurement]) -> str:
    width = max(30, *(len(m.scenario) for m in measurements))
    header = (
        f"{'scenario':<{width}} {'conc':>4} {'calls':>6} {'calls/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} {'RSS MiB':>8} {'CPU s/1k':>8}"
    )
    lines = [header, "-" * len(header)]
    for m in measurements:
        ratio = f"{m.ratio_to_baseline:.3f}" if m.ratio_to_baseline is not None else ""
        cpu = m.server_cpu_seconds_per_1000
        cpu_text = f"{cpu:.3f}" if cpu is not None else ""
        lines.append(
            f"{m.scenario:<{width}} {m.concurrency:>4} {m.calls:>6} {m.calls_per_second:>9.0f} "
            f"{m.p50_ms:>8.2f} {m.p99_ms:>8.2f} {ratio:>6} {m.max_worker_rss_mib:>8.1f} "
            f"{cpu_text:>8}"
        )
    return "\n".join(lines)


STORM = "GetTask during a Login storm"

#: Each HTTP/1.1 scenario and the native gRPC scenario making the same call: the edge's calls/s
#: must be at least 0.7 of gRPC's in the same run, and its CPU per call is shown beside gRPC's.
EDGE_PAIRS: dict[str, str] = {
    "Connect JSON GetTask (HTTP/1.1)": "GetTask",
    "Connect JSON CreateTask (HTTP/1.1)": "CreateTask",
    "REST GetTask (HTTP/1.1)": "GetTask",
    "REST CreateTask (HTTP/1.1)": "CreateTask",
}
#: The REST scenarios `--original` also measures against the original backend.
ORIGINAL_SCENARIOS = ["REST GetTask (HTTP/1.1)", "REST CreateTask (HTTP/1.1)"]


def _edges(
    measurements: list[Measurement], concurrency: int, pairs: dict[str, str]
) -> list[dict[str, object]]:
    """Each scenario of `pairs` against the scenario it maps to: calls/s and CPU per call.

    CPU per call is what the edge costs whatever the machine leaves free, so it is shown beside
    the calls/s ratio (which also moves with what h2load and the database take of the cores).
    """
    at = {m.scenario: m for m in measurements if m.concurrency == concurrency}
    edges: list[dict[str, object]] = []
    for edge, versus in pairs.items():
        if edge not in at or versus not in at:
            continue
        ours, native = at[edge], at[versus]
        cpu, native_cpu = ours.server_cpu_seconds_per_1000, native.server_cpu_seconds_per_1000
        edges.append(
            {
                "scenario": edge,
                "versus": versus,
                "calls_per_second": round(ours.calls_per_second, 1),
                "versus_calls_per_second": round(native.calls_per_second, 1),
                "calls_per_second_ratio": round(ours.calls_per_second / native.calls_per_second, 3),
                "cpu_ms_per_call": None if cpu is None else round(cpu, 3),
                "versus_cpu_ms_per_call": None if native_cpu is None else round(native_cpu, 3),
                "cpu_ratio": None if not (cpu and native_cpu) else round(cpu / native_cpu, 3),
            }
        )
    return edges


def _edge_line(edge: dict[str, object]) -> str:
    line = (
        f"  {edge['scenario']}: {edge['calls_per_second']:,.0f} calls/s, "
        f"{edge['calls_per_second_ratio']:.3f} of {edge['versus']} "
        f"({edge['versus_calls_per_second']:,.0f})"
    )
    if edge["cpu_ratio"] is not None:
        line += (
            f"; CPU {edge['cpu_ms_per_call']:.3f} ms per call against "
            f"{edge['versus_cpu_ms_per_call']:.3f} ({edge['cpu_ratio']:.2f}x)"
        )
    return line


def _targets(measurements: list[Measurement], concurrency: int) -> list[dict[str, object]]:
    """The performance targets, at the highest concurrency measured (those this run measured)."""
    at = {m.scenario: m for m in measurements if m.concurrency == concurrency}
    served = [m.max_worker_rss_mib for m in measurements if m.scenario != ECHO.name]
    lists = ["ListTasks first page", "ListTasks deep page", "ListTasks deep page, admin"]
    lists += list(LIST_VIEWS)
    reads = ["GetTask", "GetMe", *lists]
    checks: list[tuple[str, Callable[[], float], str, float]] = [
        ("GetTask ratio", lambda: _ratio(at["GetTask"]), ">=", 0.30),
        ("GetMe ratio", lambda: _ratio(at["GetMe"]), ">=", 0.30),
        ("CreateTask ratio", lambda: _ratio(at["CreateTask"]), ">=", 0.25),
        ("PatchTask ratio", lambda: _ratio(at["PatchTask"]), ">=", 0.18),
        *(
            (f"{name} ratio", lambda name=name: _ratio(at[name]), ">=", 0.12)  # type: ignore[misc]
            for name in lists
        ),
        *(
            (f"{name} p99 / p50", lambda name=name: at[name].p99_ms / at[name].p50_ms, "<=", 3.0)  # type: ignore[misc]
            for name in reads
        ),
        (
            "ListTasks deep page / first page, calls/s",
            lambda: (
                at["ListTasks deep page"].calls_per_second
                / at["ListTasks first page"].calls_per_second
            ),
            ">=",
            0.80,
        ),
        (
            "GetTask p99 during Login storm / without",
            lambda: at[STORM].p99_ms / at["GetTask"].p99_ms,
            "<=",
            2.0,
        ),
        ("max worker RSS after the run, MiB", lambda: max(served), "<=", 150.0),
        *(
            (
                f"{edge} / gRPC {grpc_name}, calls/s",
                lambda edge=edge, grpc_name=grpc_name: (  # type: ignore[misc]
                    at[edge].calls_per_second / at[grpc_name].calls_per_second
                ),
                ">=",
                0.70,
            )
            for edge, grpc_name in EDGE_PAIRS.items()
        ),
    ]
    targets: list[dict[str, object]] = []
    for name, measure, op, bound in checks:
        try:
            value = measure()
        except (KeyError, ValueError):  # not measured in this run (--only)
            continue
        met = value >= bound if op == ">=" else value <= bound
        targets.append(
            {"target": name, "value": round(value, 3), "bound": f"{op} {bound}", "met": met}
        )
    return targets


def _ratio(measurement: Measurement) -> float:
    return measurement.ratio_to_baseline or 0.0


def server_environment(url: URL, bcrypt_rounds: int) -> dict[str, str]:
    """The environment taskservice runs with: this database, a throwaway signing key."""
    return {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": str(bcrypt_rounds),
        "ACCESS_TOKEN_EXPIRE_MINUTES": "180",
    }


#: `--tracing` choices (see `with_tracing`).
TRACING_MODES = ("off", "unconfigured", "sampled")


def with_tracing(environment: dict[str, str], mode: str, sink: OtlpSink | None) -> dict[str, str]:
    """`environment` with the OTEL_* variables of a `--tracing` mode instead of its own."""
    kept = {name: value for name, value in environment.items() if not name.startswith("OTEL_")}
    if mode == "off":
        return {**kept, "OTEL_SDK_DISABLED": "true"}
    if mode == "unconfigured" or sink is None:
        return kept
    return {
        **kept,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def migrate(environment: dict[str, str]) -> None:
    """`taskservice migrate`, as an operator runs it; its output only when it fails."""
    migrated = subprocess.run(
        [sys.executable, "-m", "taskservice", "migrate"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if migrated.returncode != 0:
        raise SystemExit(f"taskservice migrate failed:\n{migrated.stdout}{migrated.stderr}")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", ""),
        help="PostgreSQL database to recreate and use (its name must contain 'bench'); "
        "default BENCH_DATABASE_URL, else a scratch SQLite file",
    )
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "1")))
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--tasks-per-user", type=int, default=1000)
    parser.add_argument(
        "--calls",
        type=int,
        default=DEFAULT_CALLS,
        help=f"calls per measurement at concurrency 1 ({CONCURRENT_CALLS_FACTOR}x that above)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--bcrypt-rounds", type=int, default=int(os.environ.get("BCRYPT_ROUNDS", "12"))
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SCENARIO",
        help="measure only these scenarios (by name, e.g. GetTask 'Login storm'), to profile one",
    )
    parser.add_argument(
        "--tracing",
        choices=TRACING_MODES,
        default="unconfigured",
        help="off: OTEL_SDK_DISABLED=true; unconfigured: no OTLP endpoint (the default, as "
        "deployed without a collector); sampled: every call traced and exported to a local "
        "OTLP receiver in this process",
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--original",
        type=Path,
        metavar="PATH",
        help="also measure the REST scenarios against the original FastAPI backend: PATH is its "
        "backend directory (github.com/devopsforger/SimpleTasks), run with uvicorn on a database "
        "of its own beside --database-url's (PostgreSQL only; see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--original-python",
        type=Path,
        metavar="PYTHON",
        help="the Python with the original's dependencies (default PATH/.venv/bin/python)",
    )
    args = parser.parse_args(argv)
    if args.original is not None and not args.database_url:
        parser.error("--original needs --database-url: the original runs on PostgreSQL only")
    return args


def _calls(args: argparse.Namespace, scenario: Scenario, concurrency: int) -> int:
    base = args.calls * (1 if concurrency == 1 else CONCURRENT_CALLS_FACTOR)
    return max(2 * concurrency, round(base * scenario.calls_factor))


def main(argv: list[str] | None = None) -> int:
    """Run every scenario; print the table and write the JSON. Exit 1 if any call failed."""
    args = _arguments(argv)
    h2load.executable()
    with tempfile.TemporaryDirectory(prefix="taskservice-bench-") as scratch:
        workdir = Path(scratch)
        if args.database_url:
            url = normalize_database_url(args.database_url)
            if url.get_backend_name() != "postgresql":
                raise SystemExit("--database-url: only PostgreSQL (SQLite is the default)")
            asyncio.run(recreate_postgres_database(url))
        else:
            url = normalize_database_url(f"sqlite:///{workdir / 'bench.db'}")
        environment = server_environment(url, args.bcrypt_rounds)
        sink = OtlpSink() if args.tracing == "sampled" else None
        environment = with_tracing(environment, args.tracing, sink)
        print(f"database: {url.render_as_string()} ({args.workers} worker(s))", flush=True)
        print(f"tracing: {args.tracing}", flush=True)
        migrate(environment)
        started = time.monotonic()
        seeded = asyncio.run(seed(url, args.users, args.tasks_per_user, args.bcrypt_rounds))
        print(
            f"seeded {args.users} users and {args.users * args.tasks_per_user} tasks "
            f"in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        original = _original(args, url, workdir)
        service = TaskService(environment, args.workers, workdir / "server.log")
        echo = EchoServer()
        try:
            service.wait_ready()
            fixture = find_fixture(service.target, seeded, args.tasks_per_user)
            bench = Bench(service, echo, workdir)
            measurements = _run_all(bench, fixture, args)
            if original is not None:
                measurements += _run_original(bench, original, fixture, args, measurements)
        except (RunFailed, h2load.H2LoadError) as failure:
            print(f"\nRUN FAILED: {failure}", file=sys.stderr)
            return 1
        finally:
            service.stop()
            echo.stop()
            if original is not None:
                original.stop()
            if sink is not None:
                print(f"spans received: {sink.spans}", flush=True)
                sink.stop()
        machine = _machine(f"{url.get_backend_name()}")
    top = max(args.concurrency)
    targets = _targets(measurements, top)
    edges = _edges(measurements, top, EDGE_PAIRS)
    originals = _edges(measurements, top, {name: f"original {name}" for name in ORIGINAL_SCENARIOS})
    print("\n" + _table(measurements))
    print(f"\ntargets (concurrency {top}, {args.workers} worker(s)):")
    for target in targets:
        mark = "met   " if target["met"] else "MISSED"
        print(f"  {mark} {target['target']}: {target['value']} (target {target['bound']})")
    if edges:
        print(f"\nHTTP/1.1 edges against native gRPC (concurrency {top}):")
        for edge in edges:
            print(_edge_line(edge))
    if originals:
        print(f"\ntaskservice's REST API against the original backend (concurrency {top}):")
        for edge in originals:
            print(_edge_line(edge))
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = args.output / f"bench-{stamp}.json"
    report.write_text(
        json.dumps(
            {
                "command": " ".join(
                    ["python -m bench", *(argv if argv is not None else sys.argv[1:])]
                ),
                "machine": machine,
                "workers": args.workers,
                "tracing": args.tracing,
                "users": args.users,
                "tasks": args.users * args.tasks_per_user,
                "measurements": [asdict(m) for m in measurements],
                "targets": targets,
                "edges": edges,
                "original": originals,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten: {report}")
    return 0


def _run_all(bench: Bench, fixture: Fixture, args: argparse.Namespace) -> list[Measurement]:
    """The echo baseline first and last (its mean is the reference), every scenario between."""
    measurements: list[Measurement] = []
    baselines: dict[int, list[Measurement]] = {c: [] for c in args.concurrency}

    def baseline() -> None:
        for concurrency in args.concurrency:
            measured = bench.measure(ECHO, fixture, concurrency, _calls(args, ECHO, concurrency))
            baselines[concurrency].append(measured)
            print(_progress(measured), flush=True)

    baseline()
    wanted = set(args.only or [*(s.name for s in SCENARIOS), STORM])
    for scenario in SCENARIOS:
        if scenario.name not in wanted:
            continue
        for concurrency in args.concurrency:
            measured = bench.measure(
                scenario, fixture, concurrency, _calls(args, scenario, concurrency)
            )
            measurements.append(measured)
            print(_progress(measured), flush=True)
    for concurrency in args.concurrency if STORM in wanted else ():
        measured = bench.measure_storm(
            fixture, concurrency, _calls(args, by_name("GetTask"), concurrency)
        )
        measurements.append(measured)
        print(_progress(measured), flush=True)
    baseline()
    reference = {}
    for concurrency, runs in baselines.items():
        mean = sum(run.calls_per_second for run in runs) / len(runs)
        reference[concurrency] = mean
        combined = runs[-1]
        combined.calls_per_second = mean
        combined.extra = {
            "calls_per_second_first": runs[0].calls_per_second,
            "calls_per_second_last": runs[-1].calls_per_second,
        }
        combined.ratio_to_baseline = 1.0
        measurements.insert(0, combined)
    for measured in measurements:
        if measured.scenario != ECHO.name:
            measured.ratio_to_baseline = measured.calls_per_second / reference[measured.concurrency]
    measurements.sort(key=lambda m: m.scenario != ECHO.name)
    return measurements


def _original(args: argparse.Namespace, url: URL, workdir: Path) -> OriginalService | None:
    """The original backend, prepared on `<database>_original` beside taskservice's, if asked."""
    if args.original is None:
        return None
    backend = args.original.resolve()
    python = args.original_python or backend / ".venv" / "bin" / "python"
    original = OriginalService(
        backend, python, url.set(database=f"{url.database}_original"), workdir / "original.log"
    )
    started = time.monotonic()
    original.prepare(args.users, args.tasks_per_user, args.bcrypt_rounds)
    print(
        f"original backend: {backend}, database {original.url.database}, seeded "
        f"in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return original


def _run_original(
    bench: Bench,
    original: OriginalService,
    fixture: Fixture,
    args: argparse.Namespace,
    measured_so_far: list[Measurement],
) -> list[Measurement]:
    """The REST scenarios against the original, after taskservice's (which is then idle)."""
    original.start()
    token, task_id = original.fixture()
    theirs = dataclasses.replace(fixture, user_token=token, task_id=task_id)
    reference = {
        m.concurrency: m.calls_per_second for m in measured_so_far if m.scenario == ECHO.name
    }
    measurements = []
    for name in ORIGINAL_SCENARIOS:
        if args.only and name not in args.only:
            continue
        scenario = by_name(name)
        for concurrency in args.concurrency:
            calls = _calls(args, scenario, concurrency)
            measured = bench.measure_original(original, scenario, theirs, concurrency, calls)
            measured.ratio_to_baseline = measured.calls_per_second / reference[concurrency]
            measurements.append(measured)
            print(_progress(measured), flush=True)
    return measurements


def _progress(m: Measurement) -> str:
    return (
        f"  {m.scenario} @{m.concurrency}: {m.calls_per_second:.0f} calls/s, "
        f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms"
    )

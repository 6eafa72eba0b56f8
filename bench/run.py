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
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
from sqlalchemy.engine import URL

from bench import h2load
from bench.h2load import Load, Result
from bench.original import OriginalService
from bench.otlp_sink import OtlpSink
from bench.processes import (
    EchoServer,
    FloorServer,
    Handled,
    TaskService,
    cpu_count,
    cpu_seconds,
    rss_mib,
)
from bench.report import (
    EDGE_PAIRS,
    ORIGINAL_SCENARIOS,
    SHARED_PAIRS,
    STORM,
    Measurement,
    edge_line,
    edges,
    medians,
    table,
    targets,
)
from bench.scenarios import (
    ECHO,
    FLOOR,
    LIST_VIEWS,
    SCENARIOS,
    Fixture,
    Scenario,
    by_name,
    login_storm,
    view_request,
)
from bench.seed import (
    ADMIN_EMAIL,
    PASSWORD,
    SHARED_CALLER,
    Seeded,
    recreate_postgres_database,
    seed,
    user_email,
)
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
Server = TaskService | EchoServer | FloorServer | OriginalService


class Bench:
    """Holds the servers and the scratch directory for one run."""

    def __init__(
        self,
        service: TaskService,
        echo: EchoServer,
        workdir: Path,
        floor: FloorServer | None = None,
    ) -> None:
        self.service = service
        self.echo = echo
        self.floor = floor
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
            baseline = self.floor if scenario is FLOOR else self.echo
            if baseline is None:
                raise RunFailed("no floor server: the floor needs a PostgreSQL database")
            self._run(warm_up, baseline.target, sequential)
            before = baseline.calls()
            results, cpu = self._timed_run(baseline, loads, baseline.target, sequential)
            served = baseline.calls() - before
            sent = sum(load.calls for load in loads)
            if served != sent:
                raise RunFailed(f"{scenario.name} answered {served} calls of {sent}")
            measured = _measure(
                scenario.name, concurrency, results, sequential, self._rss(baseline)
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
        remaining = len(seeded.user_ids) * tasks_per_user + seeded.shared_tasks
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
        # A member (an EDITOR) of the shared list, in no other list with tasks: their first
        # page is the shared list's, as user 0's is their personal list's.
        member_token = login(seeded.shared_member_emails[SHARED_CALLER])
        member = (("authorization", f"Bearer {member_token}"),)
        shared = tasks.ListTasks(task_service_pb2.ListTasksRequest(page_size=1000), metadata=member)
        shared_ids = [task.id for task in shared.tasks]
        if not shared_ids or {task.task_list_id for task in shared.tasks} != {
            seeded.shared_list_id
        }:
            raise RunFailed(f"the shared list's member sees {len(shared_ids)} tasks of other lists")
    return Fixture(
        shared_member_token=member_token,
        shared_task_id=shared_ids[len(shared_ids) // 2],
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


def server_environment(url: URL, bcrypt_rounds: int) -> dict[str, str]:
    """The environment taskservice runs with: this database, a throwaway signing key.

    With the image's malloc setting (Dockerfile) unless the caller's environment sets its own.
    """
    return {
        "MALLOC_ARENA_MAX": "2",
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
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[int(os.environ.get("WORKERS", "1"))],
        help="server processes; several (e.g. 1 2) measure each in turn and compare CPU per call",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="full runs; the report gives each figure's median"
    )
    parser.add_argument(
        "--floor-database-url",
        default=os.environ.get("BENCH_FLOOR_DATABASE_URL", ""),
        help="on SQLite, the PostgreSQL database (recreated; its name must contain 'bench') the "
        "floor reads its row from; default BENCH_FLOOR_DATABASE_URL, else no floor",
    )
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
    if args.runs < 1:
        parser.error("--runs: at least 1")
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
        database = url.get_backend_name()
        machine = _machine(database)
        print(
            f"machine: {machine['cpu']}, {machine['cpus']} cores; commit {machine['commit']}; "
            f"{args.runs} run(s), medians",
            flush=True,
        )
        environment = server_environment(url, args.bcrypt_rounds)
        sink = OtlpSink() if args.tracing == "sampled" else None
        environment = with_tracing(environment, args.tracing, sink)
        print(f"database: {url.render_as_string()} (worker counts {args.workers})", flush=True)
        print(f"tracing: {args.tracing}", flush=True)
        migrate(environment)
        started = time.monotonic()
        seeded = asyncio.run(seed(url, args.users, args.tasks_per_user, args.bcrypt_rounds))
        print(
            f"seeded {args.users} users and {seeded.tasks} tasks (a shared list's "
            f"{seeded.shared_tasks} among them) in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        floor_database = _floor_database(args, url)
        original = _original(args, url, workdir)
        echo = EchoServer()
        floor: FloorServer | None = None
        measurements: list[Measurement] = []
        try:
            for index, workers in enumerate(args.workers):
                service = TaskService(environment, workers, workdir / f"server-{workers}.log")
                try:
                    service.wait_ready()
                    fixture = find_fixture(service.target, seeded, args.tasks_per_user)
                    if floor is None and floor_database is not None:
                        dsn, task_id = floor_database
                        floor = FloorServer(dsn, task_id or fixture.task_id)
                    bench = Bench(service, echo, workdir, floor)
                    runs = []
                    for run in range(args.runs):
                        print(f"run {run + 1} of {args.runs}, {workers} worker(s)", flush=True)
                        runs.append(_run_all(bench, fixture, args, workers))
                    measurements += medians(runs)
                finally:
                    service.stop()
                if original is not None and index == 0:
                    measurements += _run_original(bench, original, fixture, args, measurements)
        except (RunFailed, h2load.H2LoadError) as failure:
            print(f"\nRUN FAILED: {failure}", file=sys.stderr)
            return 1
        finally:
            echo.stop()
            if floor is not None:
                floor.stop()
            if original is not None:
                original.stop()
            if sink is not None:
                print(f"spans received: {sink.spans}", flush=True)
                sink.stop()
    top = max(args.concurrency)
    first = [m for m in measurements if m.workers == args.workers[0]]
    found_targets = targets(measurements, top, database)
    found_edges = edges(first, top, EDGE_PAIRS)
    shared_lists = edges(first, top, SHARED_PAIRS, paired=True)
    originals = edges(first, top, {name: f"original {name}" for name in ORIGINAL_SCENARIOS})
    print(f"\nmachine: {machine['cpu']}, {machine['cpus']} cores; commit {machine['commit']}")
    print(f"{args.runs} run(s), medians; CPU ms = server user+system CPU per call")
    if floor_database is None:
        print("no floor measured: give --floor-database-url (a PostgreSQL database) on SQLite")
    print(table(measurements, database))
    print(f"\ntargets (concurrency {top}, {args.workers[0]} worker(s)):")
    for target in found_targets:
        mark = "met   " if target["met"] else "MISSED"
        print(f"  {mark} {target['target']}: {target['value']} (target {target['bound']})")
    if found_edges:
        print(f"\nHTTP/1.1 edges against native gRPC (concurrency {top}):")
        for edge in found_edges:
            print(edge_line(edge))
    if shared_lists:
        print(f"\na shared list of 10 members against a personal list (concurrency {top}):")
        for edge in shared_lists:
            print(edge_line(edge))
    if originals:
        print(f"\ntaskservice's REST API against the original backend (concurrency {top}):")
        for edge in originals:
            print(edge_line(edge))
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
                "runs": args.runs,
                "tracing": args.tracing,
                "users": args.users,
                "tasks": args.users * args.tasks_per_user,
                "measurements": [asdict(m) for m in measurements],
                "targets": found_targets,
                "edges": found_edges,
                "shared_lists": shared_lists,
                "original": originals,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten: {report}")
    return 0


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _first_task_id(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT min(id) FROM tasks"))
    finally:
        await connection.close()


def prepare_floor_database(url: URL, bcrypt_rounds: int) -> tuple[str, int]:
    """A PostgreSQL database of its own for the floor of a SQLite run: one user, one task.

    Returns the floor's asyncpg DSN and the id of the task it reads. The database is dropped
    and recreated (its name must contain 'bench').
    """
    asyncio.run(recreate_postgres_database(url))
    migrate(server_environment(url, bcrypt_rounds))
    asyncio.run(seed(url, 1, 1, bcrypt_rounds))
    dsn = _asyncpg_dsn(url)
    return dsn, asyncio.run(_first_task_id(dsn))


def _floor_database(args: argparse.Namespace, url: URL) -> tuple[str, int] | None:
    """The floor's DSN and task id (0: the fixture's task), or None when there is no PostgreSQL.

    On PostgreSQL the floor reads the bench database's own task row; on SQLite, a database of
    its own given by --floor-database-url.
    """
    if url.get_backend_name() == "postgresql":
        return _asyncpg_dsn(url), 0
    if not args.floor_database_url:
        return None
    floor_url = normalize_database_url(args.floor_database_url)
    if floor_url.get_backend_name() != "postgresql":
        raise SystemExit("--floor-database-url: a PostgreSQL database")
    return prepare_floor_database(floor_url, args.bcrypt_rounds)


def _run_all(
    bench: Bench, fixture: Fixture, args: argparse.Namespace, workers: int = 1
) -> list[Measurement]:
    """One run: the baselines first and last (their mean is the reference), every scenario between.

    Each scenario's calls/s is set against the echo's, and its server CPU per call against the
    floor's, at the same concurrency.
    """
    measurements: list[Measurement] = []
    kinds = [ECHO, *([FLOOR] if bench.floor is not None else [])]
    baselines: dict[tuple[str, int], list[Measurement]] = {}

    def baseline() -> None:
        for kind in kinds:
            for concurrency in args.concurrency:
                measured = bench.measure(
                    kind, fixture, concurrency, _calls(args, kind, concurrency)
                )
                baselines.setdefault((kind.name, concurrency), []).append(measured)
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
    rate: dict[int, float] = {}
    floor_cpu: dict[int, float] = {}
    combined_baselines = []
    for (name, concurrency), runs in baselines.items():
        combined = runs[-1]
        combined.calls_per_second = statistics.mean(run.calls_per_second for run in runs)
        cpus = [run.server_cpu_seconds_per_1000 or 0.0 for run in runs]
        combined.server_cpu_seconds_per_1000 = statistics.mean(cpus)
        combined.extra = {
            "calls_per_second_first": runs[0].calls_per_second,
            "calls_per_second_last": runs[-1].calls_per_second,
            "cpu_ms_per_call_first": cpus[0],
            "cpu_ms_per_call_last": cpus[-1],
        }
        if name == ECHO.name:
            rate[concurrency] = combined.calls_per_second
        else:
            floor_cpu[concurrency] = combined.server_cpu_seconds_per_1000
        combined_baselines.append(combined)
    measurements = combined_baselines + measurements
    for measured in measurements:
        measured.workers = workers
        measured.ratio_to_baseline = measured.calls_per_second / rate[measured.concurrency]
        cpu = measured.server_cpu_seconds_per_1000
        if cpu is not None and measured.concurrency in floor_cpu:
            measured.cpu_ratio_to_floor = cpu / floor_cpu[measured.concurrency]
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
    floor = {
        m.concurrency: m.server_cpu_seconds_per_1000
        for m in measured_so_far
        if m.scenario == FLOOR.name
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
            measured.workers = args.workers[0]
            cpu, floor_cpu = measured.server_cpu_seconds_per_1000, floor.get(concurrency)
            if cpu is not None and floor_cpu:
                measured.cpu_ratio_to_floor = cpu / floor_cpu
            measurements.append(measured)
            print(_progress(measured), flush=True)
    return measurements


def _progress(m: Measurement) -> str:
    cpu = m.server_cpu_seconds_per_1000
    return (
        f"  {m.scenario} @{m.concurrency}: {m.calls_per_second:.0f} calls/s, "
        f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms"
        + ("" if cpu is None else f", CPU {cpu:.3f} ms per call")
    )

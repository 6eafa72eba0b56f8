"""The benchmark harness: it measures real calls, and a run with failed calls fails.

h2load only sees HTTP statuses, and a gRPC error is an HTTP 200 with a non-zero grpc-status, so
the harness's own check against the server's counts is what stands between an error storm and a
flattering table. These tests need h2load (Debian's nghttp2-client): skipped without it, except
under CI=true, which installs it and where the tests must run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.processes import EchoServer, FloorServer, TaskService
from bench.run import (
    Bench,
    RunFailed,
    find_fixture,
    main,
    migrate,
    prepare_floor_database,
    server_environment,
)
from bench.scenarios import ECHO, FLOOR, SCENARIOS, Fixture, by_name
from bench.seed import drop_postgres_database, seed
from taskservice.config import normalize_database_url
from tests.conftest import IN_CI, _pg_url

pytestmark = pytest.mark.skipif(
    shutil.which("h2load") is None and not IN_CI,
    reason="h2load not installed (Debian nghttp2-client; `make h2load`)",
)
ROOT = Path(__file__).resolve().parent.parent
USERS, TASKS_PER_USER = 2, 60


@pytest.fixture(scope="module")
def floor_database_url() -> Iterator[str]:
    """A PostgreSQL database name for the floor of a SQLite run (the bench recreates it)."""
    url = _pg_url(f"taskservice_bench_floor_{uuid.uuid4().hex[:8]}")
    yield url
    asyncio.run(drop_postgres_database(normalize_database_url(url)))


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory, floor_database_url: str
) -> Iterator[tuple[Bench, Fixture]]:
    """Taskservice on a small seeded SQLite database, the echo and floor servers, the fixture."""
    workdir = tmp_path_factory.mktemp("bench")
    url = normalize_database_url(f"sqlite:///{workdir / 'bench.db'}")
    environment = server_environment(url, bcrypt_rounds=4)
    migrate(environment)
    seeded = asyncio.run(seed(url, USERS, TASKS_PER_USER, bcrypt_rounds=4))
    dsn, task_id = prepare_floor_database(normalize_database_url(floor_database_url), 4)
    service = TaskService(environment, workers=1, log=workdir / "server.log")
    echo = EchoServer()
    floor = FloorServer(dsn, task_id)
    try:
        service.wait_ready()
        fixture = find_fixture(service.target, seeded, TASKS_PER_USER)
        yield Bench(service, echo, workdir, floor), fixture
    finally:
        service.stop()
        echo.stop()
        floor.stop()


def test_every_call_of_a_measurement_is_counted(harness: tuple[Bench, Fixture]) -> None:
    bench, fixture = harness
    measured = bench.measure(by_name("GetTask"), fixture, concurrency=4, calls=40)
    assert measured.calls == 40
    assert 0 < measured.p50_ms <= measured.p99_ms
    assert measured.calls_per_second > 0
    baseline = bench.measure(ECHO, fixture, concurrency=4, calls=40)
    assert baseline.calls == 40


def test_the_floor_reads_a_row_per_call_and_is_counted(harness: tuple[Bench, Fixture]) -> None:
    """Every floor call is a database read the floor server counted; its CPU is measured."""
    bench, fixture = harness
    measured = bench.measure(FLOOR, fixture, concurrency=4, calls=40)
    assert measured.calls == 40
    assert measured.server_cpu_seconds_per_1000 is not None
    assert measured.server_cpu_seconds_per_1000 > 0


def test_a_floor_reading_a_missing_row_fails_the_run(harness: tuple[Bench, Fixture]) -> None:
    """A floor answering NOT_FOUND (HTTP 200, a grpc-status) is not counted: the run fails."""
    bench, fixture = harness
    assert bench.floor is not None
    missing = FloorServer(bench.floor.dsn, task_id=10**12)
    try:
        with pytest.raises(RunFailed, match="answered 0 calls of 40"):
            Bench(bench.service, bench.echo, bench.workdir, missing).measure(
                FLOOR, fixture, concurrency=4, calls=40
            )
    finally:
        missing.stop()


def test_calls_failing_with_a_grpc_status_fail_the_run(harness: tuple[Bench, Fixture]) -> None:
    """HTTP 200 for every call, but each is UNAUTHENTICATED: the run must not pass."""
    bench, fixture = harness
    forged = dataclasses.replace(fixture, user_token="not-a-token")
    with pytest.raises(RunFailed, match="UNAUTHENTICATED"):
        bench.measure(by_name("GetTask"), forged, concurrency=4, calls=40)


def test_connect_scenarios_reach_the_http_edge_and_count_every_call(
    harness: tuple[Bench, Fixture],
) -> None:
    bench, fixture = harness
    for name in ("Connect JSON GetTask (HTTP/1.1)", "Connect JSON CreateTask (HTTP/1.1)"):
        measured = bench.measure(by_name(name), fixture, concurrency=4, calls=40)
        assert measured.calls == 40


def test_rest_scenarios_reach_the_rest_api_and_count_every_call(
    harness: tuple[Bench, Fixture],
) -> None:
    """REST calls are counted under the RPC they stand for (GetTask, CreateTask), all OK."""
    bench, fixture = harness
    for name in ("REST GetTask (HTTP/1.1)", "REST CreateTask (HTTP/1.1)"):
        measured = bench.measure(by_name(name), fixture, concurrency=4, calls=40)
        assert measured.calls == 40
        assert measured.server_cpu_seconds_per_1000 is not None


@pytest.mark.parametrize("name", ["REST GetTask (HTTP/1.1)", "REST CreateTask (HTTP/1.1)"])
def test_rest_calls_that_fail_fail_the_run(harness: tuple[Bench, Fixture], name: str) -> None:
    """HTTP 401 for every REST call: the server's counts show UNAUTHENTICATED, the run fails."""
    bench, fixture = harness
    forged = dataclasses.replace(fixture, user_token="not-a-token")
    with pytest.raises(RunFailed, match="UNAUTHENTICATED"):
        bench.measure(by_name(name), forged, concurrency=4, calls=40)


def test_a_rest_get_of_a_missing_task_fails_the_run(harness: tuple[Bench, Fixture]) -> None:
    """HTTP 404 (NOT_FOUND) for every call: a fast table of 404s must not pass."""
    bench, fixture = harness
    missing = dataclasses.replace(fixture, task_id=10**12)
    with pytest.raises(RunFailed, match="NOT_FOUND"):
        bench.measure(by_name("REST GetTask (HTTP/1.1)"), missing, concurrency=4, calls=40)


def test_connect_calls_that_fail_fail_the_run(harness: tuple[Bench, Fixture]) -> None:
    """HTTP 401 for every call: the server's counts show UNAUTHENTICATED and fail the run."""
    bench, fixture = harness
    forged = dataclasses.replace(fixture, user_token="not-a-token")
    with pytest.raises(RunFailed, match="UNAUTHENTICATED"):
        bench.measure(by_name("Connect JSON GetTask (HTTP/1.1)"), forged, concurrency=4, calls=40)


def _bench(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run `python -m bench` (what `make bench` runs) with `options`; its output and JSON."""
    output = tmp_path / "results"
    completed = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "bench", "--bcrypt-rounds", "4", "--output", str(output), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (report,) = output.glob("bench-*.json")
    return completed, json.loads(report.read_text())


def test_make_bench_runs_end_to_end(tmp_path: Path) -> None:
    """`python -m bench` (what `make bench` runs), tiny: every scenario, a table and a JSON."""
    floor_url = _pg_url(f"taskservice_bench_floor_{uuid.uuid4().hex[:8]}")
    try:
        completed, result = _bench(
            tmp_path,
            *("--users", "3", "--tasks-per-user", "60", "--calls", "20"),
            *("--concurrency", "1", "4", "--floor-database-url", floor_url),
        )
    finally:
        asyncio.run(drop_postgres_database(normalize_database_url(floor_url)))
    assert "targets (concurrency 4" in completed.stdout
    assert "machine: " in completed.stdout
    assert result["machine"]["commit"]
    assert result["machine"]["cpus"] >= 1
    names = {(m["scenario"], m["concurrency"]) for m in result["measurements"]}
    expected = {s.name for s in SCENARIOS} | {
        ECHO.name,
        FLOOR.name,
        "GetTask during a Login storm",
    }
    assert names == {(name, c) for name in expected for c in (1, 4)}
    assert all(m["ratio_to_baseline"] > 0 for m in result["measurements"])
    for m in result["measurements"]:
        if m["scenario"] != "GetTask during a Login storm":
            assert m["cpu_ratio_to_floor"] > 0, m
    targets = {t["target"] for t in result["targets"]}
    assert targets >= {
        "GetTask CPU per call / PostgreSQL floor",
        "REST GetTask (HTTP/1.1) / gRPC GetTask, CPU per call",
        "Connect JSON GetTask (HTTP/1.1) / gRPC GetTask, CPU per call",
        "REST GetTask (HTTP/1.1) / gRPC GetTask, calls/s",
        "REST CreateTask (HTTP/1.1) / gRPC CreateTask, calls/s",
        "GetTask, shared list (10 members) / GetTask, CPU per call",
        "ListTasks first page, shared list (10 members) / ListTasks first page, CPU per call",
    }
    shared = {e["scenario"]: e["versus"] for e in result["shared_lists"]}
    assert shared == {
        "GetTask, shared list (10 members)": "GetTask",
        "ListTasks first page, shared list (10 members)": "ListTasks first page",
    }
    edges = {e["scenario"]: e for e in result["edges"]}
    for name, grpc_name in (
        ("REST GetTask (HTTP/1.1)", "GetTask"),
        ("REST CreateTask (HTTP/1.1)", "CreateTask"),
    ):
        assert edges[name]["versus"] == grpc_name
        assert edges[name]["calls_per_second_ratio"] > 0
        assert edges[name]["cpu_ms_per_call"] is not None
    assert "REST GetTask (HTTP/1.1): " in completed.stdout


def test_the_original_backend_is_only_measured_on_postgresql(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--original` runs the original on PostgreSQL, so it is refused without a database URL."""
    with pytest.raises(SystemExit):
        main(["--original", str(ROOT), "--database-url", ""])
    assert "--original needs --database-url" in capsys.readouterr().err


def test_medians_of_runs_and_worker_counts_compared(tmp_path: Path) -> None:
    """`--runs 2 --workers 1 2`: each figure the median of two runs, two workers set against one."""
    completed, result = _bench(
        tmp_path,
        *("--users", "2", "--tasks-per-user", "60", "--calls", "10", "--runs", "2"),
        *("--workers", "1", "2", "--only", "GetTask", "--concurrency", "4"),
    )
    assert "no floor measured" in completed.stdout
    # 10 calls at concurrency 1 are 50 at 4; a second server's runs must count only their own.
    assert {m["calls"] for m in result["measurements"]} == {50}
    assert result["runs"] == 2
    get_task = [m for m in result["measurements"] if m["scenario"] == "GetTask"]
    assert sorted(m["workers"] for m in get_task) == [1, 2]
    for m in get_task:
        assert len(m["runs"]) == 2
        cpus = sorted(run["cpu_ms_per_call"] for run in m["runs"])
        assert m["server_cpu_seconds_per_1000"] == pytest.approx(sum(cpus) / 2)
    (workers,) = [t for t in result["targets"] if "workers" in t["target"]]
    assert workers["target"] == "GetTask CPU per call, 2 workers / 1"
    assert workers["value"] > 0

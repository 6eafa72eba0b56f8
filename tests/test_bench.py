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
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.processes import EchoServer, TaskService
from bench.run import Bench, RunFailed, find_fixture, main, migrate, server_environment
from bench.scenarios import ECHO, SCENARIOS, Fixture, by_name
from bench.seed import seed
from taskservice.config import normalize_database_url
from tests.conftest import IN_CI

pytestmark = pytest.mark.skipif(
    shutil.which("h2load") is None and not IN_CI,
    reason="h2load not installed (Debian nghttp2-client; `make h2load`)",
)
ROOT = Path(__file__).resolve().parent.parent
USERS, TASKS_PER_USER = 2, 60


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bench, Fixture]]:
    """Taskservice on a small seeded SQLite database, the echo server, and the fixture."""
    workdir = tmp_path_factory.mktemp("bench")
    url = normalize_database_url(f"sqlite:///{workdir / 'bench.db'}")
    environment = server_environment(url, bcrypt_rounds=4)
    migrate(environment)
    seeded = asyncio.run(seed(url, USERS, TASKS_PER_USER, bcrypt_rounds=4))
    service = TaskService(environment, workers=1, log=workdir / "server.log")
    echo = EchoServer()
    try:
        service.wait_ready()
        yield Bench(service, echo, workdir), find_fixture(service.target, seeded, TASKS_PER_USER)
    finally:
        service.stop()
        echo.stop()


def test_every_call_of_a_measurement_is_counted(harness: tuple[Bench, Fixture]) -> None:
    bench, fixture = harness
    measured = bench.measure(by_name("GetTask"), fixture, concurrency=4, calls=40)
    assert measured.calls == 40
    assert 0 < measured.p50_ms <= measured.p99_ms
    assert measured.calls_per_second > 0
    baseline = bench.measure(ECHO, fixture, concurrency=4, calls=40)
    assert baseline.calls == 40


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


def test_make_bench_runs_end_to_end(tmp_path: Path) -> None:
    """`python -m bench` (what `make bench` runs), tiny: every scenario, a table and a JSON."""
    output = tmp_path / "results"
    completed = subprocess.run(  # noqa: S603 - our own command
        [
            sys.executable,
            "-m",
            "bench",
            *("--users", "3", "--tasks-per-user", "60", "--calls", "20"),
            *("--concurrency", "1", "4", "--bcrypt-rounds", "4", "--output", str(output)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "targets (concurrency 4" in completed.stdout
    (report,) = output.glob("bench-*.json")
    result = json.loads(report.read_text())
    names = {(m["scenario"], m["concurrency"]) for m in result["measurements"]}
    expected = {s.name for s in SCENARIOS} | {ECHO.name, "GetTask during a Login storm"}
    assert names == {(name, c) for name in expected for c in (1, 4)}
    assert all(m["ratio_to_baseline"] > 0 for m in result["measurements"])
    targets = {t["target"] for t in result["targets"]}
    assert targets >= {
        "GetTask ratio",
        "CreateTask ratio",
        "REST GetTask (HTTP/1.1) / gRPC GetTask, calls/s",
        "REST CreateTask (HTTP/1.1) / gRPC CreateTask, calls/s",
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

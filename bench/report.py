"""What a benchmark run reports: measurements, their medians over runs, the targets, the table.

The targets compare server CPU per call, not calls per second: CPU per call is what a call costs
whatever the cores h2load and the database leave free, so it moves far less with the machine's
other work. Each scenario is set against the floor (bench/floor_server.py) measured in the same
run, and each HTTP/1.1 edge against the same call over native gRPC.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bench.scenarios import ECHO, FLOOR, LIST_VIEWS

STORM = "GetTask during a Login storm"
BASELINES = (ECHO.name, FLOOR.name)

#: Each HTTP/1.1 scenario and the native gRPC scenario making the same call: the edge's CPU per
#: call must be at most EDGE_CPU_BOUND times gRPC's, and its calls/s at least EDGE_RATE_BOUND.
EDGE_PAIRS: dict[str, str] = {
    "Connect JSON GetTask (HTTP/1.1)": "GetTask",
    "Connect JSON CreateTask (HTTP/1.1)": "CreateTask",
    "REST GetTask (HTTP/1.1)": "GetTask",
    "REST CreateTask (HTTP/1.1)": "CreateTask",
}
EDGE_CPU_BOUND = 1.4
EDGE_RATE_BOUND = 0.70
#: The REST scenarios `--original` also measures against the original backend.
ORIGINAL_SCENARIOS = ["REST GetTask (HTTP/1.1)", "REST CreateTask (HTTP/1.1)"]

#: Each shared-list scenario (a list of 10 members, called by an EDITOR) and the same call on a
#: personal list: its CPU per call may be at most SHARED_CPU_BOUND times the personal list's
#: (the median of the runs' ratios, see `paired_cpu_ratio`).
SHARED_PAIRS: dict[str, str] = {
    "GetTask, shared list (10 members)": "GetTask",
    "ListTasks first page, shared list (10 members)": "ListTasks first page",
}
SHARED_CPU_BOUND = 1.10

LISTS = [
    "ListTasks first page",
    "ListTasks first page, shared list (10 members)",
    "ListTasks deep page",
    "ListTasks deep page, admin",
    *LIST_VIEWS,
]
READS = ["GetTask", "GetTask, shared list (10 members)", "GetMe", *LISTS]
#: On PostgreSQL: the most server CPU per call each scenario may cost, in floors.
FLOOR_BOUNDS: dict[str, float] = {
    "GetTask": 1.25,
    "GetTask, shared list (10 members)": 1.25,
    "GetMe": 1.25,
    "CreateTask": 1.5,
    "PatchTask": 1.5,
    **dict.fromkeys(LISTS, 2.5),
}
#: On the embedded SQLite database, against a PostgreSQL floor.
SQLITE_FLOOR_BOUNDS: dict[str, float] = {"GetTask": 2.5}
#: More workers may cost at most this much more CPU per call than the first worker count.
WORKERS_CPU_BOUND = 1.05
WORKERS_SCENARIOS = ["GetTask", "GetMe", "CreateTask", "PatchTask", "ListTasks first page"]


@dataclass
class Measurement:
    """One scenario at one concurrency (and worker count)."""

    scenario: str
    concurrency: int
    calls: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    max_worker_rss_mib: float
    #: The server's CPU time (every worker, user and system) per 1,000 calls measured, which is
    #: also its milliseconds per call: what a call costs, whatever the cores left free.
    server_cpu_seconds_per_1000: float | None = None
    #: calls/s over the echo baseline's at the same concurrency, in the same run.
    ratio_to_baseline: float | None = None
    #: Server CPU per call over the floor's at the same concurrency, in the same run (the
    #: median of the runs' ratios); None when no floor was measured.
    cpu_ratio_to_floor: float | None = None
    workers: int = 1
    #: Each run's calls/s, CPU ms per call and ratio to the floor, when medians of several.
    runs: list[dict[str, float | None]] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def medians(runs: list[list[Measurement]]) -> list[Measurement]:
    """Each (scenario, concurrency) as the median of the runs' figures; RSS as the largest."""
    if len(runs) == 1:
        return runs[0]
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for run in runs:
        for measured in run:
            groups.setdefault((measured.scenario, measured.concurrency), []).append(measured)
    combined = []
    for group in groups.values():
        combined.append(
            replace(
                group[0],
                calls_per_second=statistics.median(m.calls_per_second for m in group),
                p50_ms=statistics.median(m.p50_ms for m in group),
                p99_ms=statistics.median(m.p99_ms for m in group),
                max_worker_rss_mib=max(m.max_worker_rss_mib for m in group),
                server_cpu_seconds_per_1000=_median([m.server_cpu_seconds_per_1000 for m in group]),
                ratio_to_baseline=_median([m.ratio_to_baseline for m in group]),
                cpu_ratio_to_floor=_median([m.cpu_ratio_to_floor for m in group]),
                runs=[
                    {
                        "calls_per_second": round(m.calls_per_second, 1),
                        "cpu_ms_per_call": m.server_cpu_seconds_per_1000,
                        "cpu_ratio_to_floor": m.cpu_ratio_to_floor,
                    }
                    for m in group
                ],
            )
        )
    return combined


def floor_bounds(database: str) -> dict[str, float]:
    """The CPU-per-call bounds, in floors, for a run on this database backend."""
    return FLOOR_BOUNDS if database == "postgresql" else SQLITE_FLOOR_BOUNDS


def table(measurements: list[Measurement], database: str) -> str:
    """The measurements, one line each, with the floor bound beside each ratio that has one."""
    bounds = floor_bounds(database)
    several = len({m.workers for m in measurements}) > 1
    width = max(30, *(len(m.scenario) for m in measurements))
    header = (
        f"{'scenario':<{width}} {'wrk ' if several else ''}{'conc':>4} {'calls':>6} "
        f"{'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} {'CPU ms':>7} "
        f"{'x floor':>7} {'target':>6}"
    )
    lines = [header, "-" * len(header)]
    for m in measurements:
        cpu = m.server_cpu_seconds_per_1000
        cpu_text = f"{cpu:.3f}" if cpu is not None else ""
        ratio = f"{m.cpu_ratio_to_floor:.2f}" if m.cpu_ratio_to_floor is not None else ""
        bound = f"<={bounds[m.scenario]}" if m.scenario in bounds else ""
        lines.append(
            f"{m.scenario:<{width}} {f'{m.workers:>3} ' if several else ''}{m.concurrency:>4} "
            f"{m.calls:>6} {m.calls_per_second:>9.0f} {m.p50_ms:>8.2f} {m.p99_ms:>8.2f} "
            f"{m.max_worker_rss_mib:>8.1f} {cpu_text:>7} {ratio:>7} {bound:>6}"
        )
    return "\n".join(lines)


def paired_cpu_ratio(ours: Measurement, versus: Measurement) -> float:
    """CPU per call of `ours` over `versus`: the median of each run's ratio, when several.

    The two are measured in the same run, minutes apart at most, so each run's ratio cancels
    what the machine's other work did to that run (as the floor ratios do); a ratio of the two
    medians would set one run's figure against another's.
    """
    if ours.runs and len(ours.runs) == len(versus.runs):
        ratios = [
            a["cpu_ms_per_call"] / b["cpu_ms_per_call"]  # type: ignore[operator]
            for a, b in zip(ours.runs, versus.runs, strict=True)
            if a["cpu_ms_per_call"] and b["cpu_ms_per_call"]
        ]
        if ratios:
            return statistics.median(ratios)
    return _cpu(ours) / _cpu(versus)


def edges(
    measurements: list[Measurement],
    concurrency: int,
    pairs: dict[str, str],
    *,
    paired: bool = False,
) -> list[dict[str, object]]:
    """Each scenario of `pairs` against the scenario it maps to: calls/s and CPU per call.

    CPU per call is what the edge costs whatever the machine leaves free, so it is shown beside
    the calls/s ratio (which also moves with what h2load and the database take of the cores).
    With `paired`, the CPU ratio is the median of each run's (see `paired_cpu_ratio`).
    """
    at = {m.scenario: m for m in measurements if m.concurrency == concurrency}
    found: list[dict[str, object]] = []
    for edge, versus in pairs.items():
        if edge not in at or versus not in at:
            continue
        ours, native = at[edge], at[versus]
        cpu, native_cpu = ours.server_cpu_seconds_per_1000, native.server_cpu_seconds_per_1000
        found.append(
            {
                "scenario": edge,
                "versus": versus,
                "calls_per_second": round(ours.calls_per_second, 1),
                "versus_calls_per_second": round(native.calls_per_second, 1),
                "calls_per_second_ratio": round(ours.calls_per_second / native.calls_per_second, 3),
                "cpu_ms_per_call": None if cpu is None else round(cpu, 3),
                "versus_cpu_ms_per_call": None if native_cpu is None else round(native_cpu, 3),
                "cpu_ratio": None
                if not (cpu and native_cpu)
                else round(paired_cpu_ratio(ours, native) if paired else cpu / native_cpu, 3),
            }
        )
    return found


def edge_line(edge: dict[str, object]) -> str:
    """One edge against the call it stands for, as printed after the targets."""
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


def _cpu(measurement: Measurement) -> float:
    if measurement.server_cpu_seconds_per_1000 is None:
        raise ValueError(f"{measurement.scenario}: no CPU figure")
    return measurement.server_cpu_seconds_per_1000


def _floor_ratio(measurement: Measurement) -> float:
    if measurement.cpu_ratio_to_floor is None:
        raise ValueError(f"{measurement.scenario}: no floor measured")
    return measurement.cpu_ratio_to_floor


def targets(
    measurements: list[Measurement], concurrency: int, database: str
) -> list[dict[str, object]]:
    """The targets, at the highest concurrency measured (those this run measured).

    Those of one worker count are checked on the first worker count measured; more workers are
    checked against it (CPU per call within WORKERS_CPU_BOUND).
    """
    first = measurements[0].workers if measurements else 1
    at = {
        m.scenario: m for m in measurements if m.concurrency == concurrency and m.workers == first
    }
    served = [m.max_worker_rss_mib for m in measurements if m.scenario not in BASELINES]
    floor_name = "PostgreSQL floor" if database != "postgresql" else "floor"
    checks: list[tuple[str, Callable[[], float], str, float]] = [
        *(
            (
                f"{name} CPU per call / {floor_name}",
                lambda name=name: _floor_ratio(at[name]),  # type: ignore[misc]
                "<=",
                bound,
            )
            for name, bound in floor_bounds(database).items()
        ),
        *(
            (f"{name} p99 / p50", lambda name=name: at[name].p99_ms / at[name].p50_ms, "<=", 3.0)  # type: ignore[misc]
            for name in READS
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
    ]
    for edge, grpc_name in EDGE_PAIRS.items():
        checks.append(
            (
                f"{edge} / gRPC {grpc_name}, CPU per call",
                lambda edge=edge, grpc_name=grpc_name: _cpu(at[edge]) / _cpu(at[grpc_name]),  # type: ignore[misc]
                "<=",
                EDGE_CPU_BOUND,
            )
        )
        checks.append(
            (
                f"{edge} / gRPC {grpc_name}, calls/s",
                lambda edge=edge, grpc_name=grpc_name: (  # type: ignore[misc]
                    at[edge].calls_per_second / at[grpc_name].calls_per_second
                ),
                ">=",
                EDGE_RATE_BOUND,
            )
        )
    checks.extend(
        (
            f"{shared} / {personal}, CPU per call",
            lambda shared=shared, personal=personal: paired_cpu_ratio(at[shared], at[personal]),  # type: ignore[misc]
            "<=",
            SHARED_CPU_BOUND,
        )
        for shared, personal in SHARED_PAIRS.items()
    )
    for workers in sorted({m.workers for m in measurements} - {first}):
        more = {
            m.scenario: m
            for m in measurements
            if m.concurrency == concurrency and m.workers == workers
        }
        checks.extend(
            (
                f"{name} CPU per call, {workers} workers / {first}",
                lambda name=name, more=more: _cpu(more[name]) / _cpu(at[name]),  # type: ignore[misc]
                "<=",
                WORKERS_CPU_BOUND,
            )
            for name in WORKERS_SCENARIOS
        )
    found: list[dict[str, object]] = []
    for name, measure, op, bound in checks:
        try:
            value = measure()
        except (KeyError, ValueError, ZeroDivisionError):  # not measured in this run (--only)
            continue
        met = value >= bound if op == ">=" else value <= bound
        found.append(
            {"target": name, "value": round(value, 3), "bound": f"{op} {bound}", "met": met}
        )
    return found

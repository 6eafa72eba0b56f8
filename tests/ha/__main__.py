"""`python -m tests.ha`: a failover drill against a real three-node Patroni cluster.

Starts etcd and three Patroni nodes (PostgreSQL 15, synchronous replication), one taskservice
server pointed at all three with `target_session_attrs=read-write`, puts a client fleet on it,
then crashes the primary twice and switches over once (by default), waiting for the cluster to
heal between events. Prints per-event figures and checks, writes `summary.json` next to the
logs, and exits 1 when a check fails (2 when the drill itself could not be run). Everything it
started is killed and its temporary directories removed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc

from tests.ha.cluster import Cluster, HarnessError
from tests.ha.load import Load, Recorder
from tests.ha.report import (
    Event,
    RunResult,
    check_run,
    event_figures,
    render,
    scan_server_log,
)
from tests.ha.service import URL_FORMS, TaskServer, database_url, migrate

EVENT_KINDS = ("kill", "switchover", "kill-restart")
#: Longest wait for the cluster to heal after an event (three members streaming again).
HEAL_TIMEOUT = 90.0
#: Longest wait for writes and SERVING to come back once the cluster has healed.
RESUME_TIMEOUT = 45.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.ha", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole drill N times")
    parser.add_argument(
        "--events",
        default="kill,kill,switchover",
        help="comma-separated events in order: kill (SIGKILL the primary's postmaster), "
        "switchover (patronictl switchover), or kill-restart (pause Patroni, kill the primary, "
        "restart taskservice, resume Patroni after --outage seconds); default "
        "kill,kill,switchover",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=8.0,
        help="kill-restart: seconds the restarted server runs with no primary (default 8)",
    )
    parser.add_argument(
        "--between", type=float, default=10.0, help="seconds of load before and between events"
    )
    parser.add_argument(
        "--url-form",
        choices=("auto", *URL_FORMS),
        default="auto",
        help="DATABASE_URL form: query (?host=..&host=..), libpq (host1,host2,host3), or auto: "
        "libpq if the server starts with it, else query (default)",
    )
    parser.add_argument("--writers", type=int, default=8, help="concurrent CreateTask callers")
    parser.add_argument("--readers", type=int, default=2, help="concurrent GetTask/ListTasks")
    parser.add_argument(
        "--timeout", type=float, default=480.0, help="seconds one run may take at most"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="directory for summary.json and every log (default .cache/ha-test/<UTC time>)",
    )
    args = parser.parse_args(argv)
    events = [kind.strip() for kind in args.events.split(",") if kind.strip()]
    unknown = [kind for kind in events if kind not in EVENT_KINDS]
    if unknown or not events:
        parser.error(f"--events: unknown {unknown}; use {', '.join(EVENT_KINDS)}")
    if args.runs < 1 or args.writers < 1 or args.readers < 0 or args.between < 1:
        parser.error("--runs and --writers must be positive, --between at least 1")
    args.events = events
    return args


def say(message: str) -> None:
    """Progress on stderr, stamped, so a stuck drill shows where it is."""
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def create_database(port: int) -> None:
    """CREATE DATABASE taskservice on the leader (trust auth on 127.0.0.1)."""
    connection = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=10
    )
    try:
        await connection.execute("CREATE DATABASE taskservice")
    finally:
        await connection.close()


async def stored_tasks(port: int, user_id: int) -> list[tuple[int, str, str | None]]:
    """The user's tasks on the final leader: (id, title, request id of the create)."""
    connection = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="taskservice", timeout=10
    )
    try:
        rows = await connection.fetch(
            "SELECT t.id, t.title, r.request_id FROM tasks t"
            " LEFT JOIN task_create_requests r ON r.task_id = t.id AND r.user_id = t.owner_id"
            " WHERE t.owner_id = $1 ORDER BY t.id",
            user_id,
        )
    finally:
        await connection.close()
    return [(row["id"], row["title"], row["request_id"]) for row in rows]


async def start_server(form: str, ports: list[int], logs: Path) -> tuple[TaskServer, str, str]:
    """Start the server with the asked URL form; with auto, libpq first, then query."""
    forms = ["libpq", "query"] if form == "auto" else [form]
    notes = []
    for candidate in forms:
        server = TaskServer(database_url(candidate, ports), logs / f"server-{candidate}.log")
        server.spawn()
        try:
            await server.wait_ready(45)
        except HarnessError as exc:
            await server.stop()
            notes.append(f"{candidate} form did not start: {exc}")
            say(notes[-1])
            continue
        notes.append(f"{candidate} form started")
        return server, candidate, "; ".join(notes)
    raise HarnessError("; ".join(notes))


async def do_event(
    kind: str, cluster: Cluster, server: TaskServer, load: Load, recorder: Recorder, outage: float
) -> Event:
    """Crash the primary or switch over, then wait (with deadlines) for everything to recover."""
    leader = await asyncio.to_thread(cluster.leader)
    event = Event(kind, recorder.now(), leader.name if leader else "?")
    say(f"{kind}: leader {event.old_leader}")
    try:
        if kind == "kill":
            await asyncio.to_thread(cluster.kill_primary)
        elif kind == "kill-restart":
            await asyncio.to_thread(cluster.kill_primary_paused)
            restart_began = recorder.now()
            try:
                event.drain_seconds, event.drain_killed = await server.restart()
                await asyncio.sleep(outage)  # the server starts and runs with no primary at all
                await asyncio.to_thread(cluster.resume)
                await server.wait_ready(HEAL_TIMEOUT)
            finally:
                event.restart_window = (restart_began, recorder.now())
        else:
            await asyncio.to_thread(cluster.switchover)
        event.action_done = recorder.now()
        new_leader = await asyncio.to_thread(cluster.wait_healthy, HEAL_TIMEOUT)
        event.healthy = recorder.now()
        event.new_leader = new_leader.name
        say(f"{kind}: healed, leader {new_leader.name}, +{event.healthy - event.started:.1f}s")
    except HarnessError as exc:
        event.error = str(exc)
        say(f"{kind}: {exc}")
    event.serving_again = await load.wait_serving(event.started, RESUME_TIMEOUT)
    healed = event.healthy if event.healthy is not None else recorder.now()
    event.writes_resumed = await load.wait_write_after(healed, RESUME_TIMEOUT)
    return event


async def drill(run: int, args: argparse.Namespace, logs: Path) -> RunResult:
    """One whole drill: cluster, server, load, events, checks. Tears down whatever it started."""
    began = time.monotonic()
    cluster = Cluster(logs)
    server: TaskServer | None = None
    load: Load | None = None
    result = RunResult(run, args.url_form, "")
    recorder = Recorder()
    events: list[Event] = []
    try:
        say(f"run {run}: starting etcd and 3 Patroni nodes in {cluster.base}")
        await asyncio.to_thread(cluster.start)
        leader = await asyncio.to_thread(cluster.wait_healthy, 60)
        say(f"cluster up: leader {leader.name}")
        (logs / "patronictl-list-start.txt").write_text(await asyncio.to_thread(cluster.listing))
        await create_database(leader.pg_port)
        await asyncio.to_thread(
            migrate,
            f"postgresql+asyncpg://postgres@127.0.0.1:{leader.pg_port}/taskservice",
            logs / "migrate.log",
        )
        ports = [node.pg_port for node in cluster.nodes]
        server, result.url_form, result.url_form_note = await start_server(
            args.url_form, ports, logs
        )
        say(f"taskservice serving on {server.target} ({result.url_form_note})")
        recorder = Recorder()
        server.supervise(recorder.now)
        load = Load(
            server.target, recorder, writers=args.writers, readers=args.readers, tag=f"r{run}"
        )
        await load.start(f"ha-run{run}@example.com", "correct horse battery staple")
        await asyncio.sleep(args.between)  # load before the first event
        for kind in args.events:
            events.append(await do_event(kind, cluster, server, load, recorder, args.outage))
            await asyncio.sleep(args.between)  # load after the event
        say("stopping the writers; waiting for the watch to catch up")
        await load.stop_writes(within=30)
        final_revision = await load.current_revision(within=30)
        caught_up = await load.wait_watch(final_revision, within=30)
        end = recorder.now()
        await load.stop()
        final_leader = await asyncio.to_thread(cluster.wait_healthy, HEAL_TIMEOUT, 0.0)
        rows = await stored_tasks(final_leader.pg_port, load.user_id)
        (logs / "patronictl-list-end.txt").write_text(await asyncio.to_thread(cluster.listing))
        await server.stop()
        result.checks = check_run(
            recorder, events, rows, final_revision, caught_up, server.exits, load.start_revision
        )
        result.events = event_figures(recorder, events, end)
        result.totals = recorder.counts()
        result.figures = {
            "acknowledged creates": len(recorder.acks),
            "creates needing retries": sum(1 for a in recorder.acks if a.attempts > 1),
            "tasks stored": len(rows),
            "watch changes / bookmarks / stream ends": (
                f"{len(recorder.changes)} / {recorder.bookmarks} / {len(recorder.stream_ends)}"
            ),
            "revisions": f"{load.start_revision} -> {final_revision}",
            "server exits": len(server.exits),
        }
    except (HarnessError, OSError, asyncpg.PostgresError, grpc.aio.AioRpcError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.events = event_figures(recorder, events, recorder.now())
        result.totals = recorder.counts()
        say(f"drill failed: {result.error}")
    finally:
        with contextlib.suppress(Exception):
            if load is not None:
                await load.stop()
        if server is not None:
            server.kill_now()
            with contextlib.suppress(Exception):
                await server.stop()
        await asyncio.to_thread(cluster.stop)
        if server is not None:
            result.server_log = scan_server_log(server.log)
        result.duration_seconds = time.monotonic() - began
    return result


async def main_async(args: argparse.Namespace, output: Path) -> int:
    """Every run in turn, bounded by --timeout each; the exit status."""
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    results = []
    for run in range(1, args.runs + 1):
        logs = output / f"run{run}"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            async with asyncio.timeout(args.timeout):
                result = await drill(run, args, logs)
        except TimeoutError:
            result = RunResult(run, args.url_form, "", error=f"run exceeded {args.timeout:.0f}s")
        results.append(result)
        print(render(result), flush=True)
        (logs / "summary.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    summary = {
        "passed": all(r.passed for r in results),
        "runs": [asdict(r) for r in results],
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"summary and logs: {output}", flush=True)
    if any(r.error for r in results):
        return 2
    return 0 if summary["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or Path(".cache") / "ha-test" / stamp
    output.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(main_async(args, output.resolve()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C or SIGTERM cancelled the drill: its `finally` has torn everything down.
        print("interrupted: everything the drill started was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""What a drill measured and whether it passed: figures per event, checks, and the report.

The checks are the promises a client relies on through a failover: no INTERNAL or UNKNOWN,
every acknowledged create stored exactly once, no request id creating twice, a resumed watch
that delivers every change exactly once, a server that stays up and serves again.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.ha.load import FORBIDDEN, Recorder

#: Server log patterns of failures already known, so a report says which one it met.
KNOWN_DEFECTS = {
    "asyncpg InternalClientError 'cannot switch to state' on a connection whose server died": (
        re.compile(r"cannot switch to state")
    ),
    "'the database system is shutting down' (SQLSTATE 57P03) surfaced instead of retried": (
        re.compile(r"shutting down|57P03|CannotConnectNow")
    ),
    "'the database system is starting up / in recovery' surfaced instead of retried": (
        re.compile(r"is starting up|not yet accepting connections|in recovery mode")
    ),
    "a read-only transaction reached a standby (25006)": re.compile(r"read-only transaction|25006"),
}


@dataclass
class Event:
    """One thing done to the cluster, with when its effects ended (drill seconds)."""

    kind: str
    started: float
    old_leader: str
    action_done: float | None = None
    new_leader: str | None = None
    healthy: float | None = None
    writes_resumed: float | None = None
    serving_again: float | None = None
    error: str | None = None
    #: kill-restart only: from the planned server restart until it was ready again.
    restart_window: tuple[float, float] | None = None
    #: kill-restart only: how long the SIGTERM'd server took to exit, and whether it had to be
    #: killed because it outlived its shutdown grace.
    drain_seconds: float | None = None
    drain_killed: bool = False


@dataclass
class Check:
    """One pass/fail promise with the evidence."""

    name: str
    passed: bool
    detail: str


@dataclass
class RunResult:
    """Everything one drill produced, ready for the JSON summary."""

    run: int
    url_form: str
    url_form_note: str
    events: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    server_log: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether the drill ran to the end and every check passed."""
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)


def write_gap(recorder: Recorder, event: Event, window_end: float) -> dict[str, Any]:
    """The longest stretch without an acknowledged create across the event.

    Measured between consecutive acknowledgements (all writers together), over the pairs that
    straddle or follow the event up to the cluster's recovery: the first such pair begins with
    the last create acknowledged before the event.
    """
    times = sorted(ack.acked for ack in recorder.acks)
    recovered = event.healthy if event.healthy is not None else window_end
    best: tuple[float, float, float] | None = None
    for before, after in itertools.pairwise(times):
        if after <= event.started or before >= recovered:
            continue
        if best is None or after - before > best[0]:
            best = (after - before, before, after)
    if best is None:
        return {"seconds": None, "from": None, "to": None}
    return {
        "seconds": round(best[0], 3),
        "from": round(best[1] - event.started, 3),
        "to": round(best[2] - event.started, 3),
    }


def health_timeline(recorder: Recorder, since: float, until: float, origin: float) -> list:
    """Health status changes in [since, until) as (seconds from `origin`, status)."""
    timeline: list[tuple[float, str]] = []
    last = None
    for moment, status in recorder.health:
        if moment >= until:
            break
        if moment < since:
            last = status
            continue
        if status != last:
            timeline.append((round(moment - origin, 2), status))
            last = status
    return timeline


def scan_server_log(path: Path) -> dict[str, Any]:
    """What the server logged about the outages.

    Its errors grouped, the known defects among them, and the causes it mapped to UNAVAILABLE
    (which are fine, but show what happened).
    """
    errors: Counter[str] = Counter()
    unavailable: Counter[str] = Counter()
    defects: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return {"errors": {}, "known_defects": {}, "unavailable_causes": {}}
    entries: list[dict[str, Any]] = []
    raw: list[str] = []
    for line in [*path.read_text(errors="replace").splitlines(), "{}"]:
        try:
            entry = json.loads(line)
        except ValueError:
            raw.append(line)  # stderr output: a traceback printed outside the JSON log
            continue
        if raw:
            entries.append(
                {"level": "STDERR", "message": raw[-1].strip(), "exception": "\n".join(raw)}
            )
            raw = []
        if isinstance(entry, dict) and entry:
            entries.append(entry)
    for entry in entries:
        level = str(entry.get("level", ""))
        message = str(entry.get("message", ""))
        if "database unavailable: " in message:
            unavailable[message.rpartition("database unavailable: ")[2][:80]] += 1
        if level not in ("ERROR", "CRITICAL", "STDERR"):
            continue
        exception = str(entry.get("exception", "")).strip()
        key = f"{level} {message}"[:160]
        if exception and level != "STDERR":
            # The exception's own line, not SQLAlchemy's "(Background on this error ...)" link.
            told = [x for x in exception.splitlines() if x.strip() and not x.startswith("(")]
            key += f" | {(told or exception.splitlines())[-1][:200]}"
        errors[re.sub(r"request id [0-9a-f-]+", "request id …", key)] += 1
        for name, pattern in KNOWN_DEFECTS.items():
            if pattern.search(f"{message}\n{exception}"):
                seen = defects.setdefault(name, {"lines": 0, "first": entry.get("time")})
                seen["lines"] += 1
    return {
        "errors": dict(errors.most_common(15)),
        "known_defects": defects,
        "unavailable_causes": dict(unavailable.most_common(10)),
    }


def check_run(
    recorder: Recorder,
    events: list[Event],
    rows: list[tuple[int, str, str | None]],
    final_revision: int,
    watch_caught_up: bool,
    server_exits: list[tuple[float, int]],
    start_revision: int,
) -> list[Check]:
    """The checks, from what the clients saw and the final leader's rows (id, title, request)."""
    checks: list[Check] = []

    forbidden = [c for c in recorder.calls if c.code in FORBIDDEN]
    by_method = Counter(f"{c.method} {c.code}" for c in forbidden)
    examples = sorted({c.details for c in forbidden})[:3]
    checks.append(
        Check(
            "no INTERNAL or UNKNOWN on any call",
            not forbidden,
            "none"
            if not forbidden
            else f"{len(forbidden)} calls: {dict(by_method)}; e.g. {examples}",
        )
    )

    tasks_by_title: dict[str, list[int]] = {}
    for task_id, title, _request in rows:
        tasks_by_title.setdefault(title, []).append(task_id)
    missing = [a.request_id for a in recorder.acks if a.request_id not in tasks_by_title]
    wrong = [
        a.request_id
        for a in recorder.acks
        if a.request_id in tasks_by_title and tasks_by_title[a.request_id] != [a.task_id]
    ]
    checks.append(
        Check(
            "every acknowledged create is stored exactly once",
            not missing and not wrong and bool(recorder.acks),
            f"{len(recorder.acks)} acknowledged; {len(missing)} missing {missing[:5]}; "
            f"{len(wrong)} stored twice or under another id {wrong[:5]}",
        )
    )

    duplicated = {title: ids for title, ids in tasks_by_title.items() if len(ids) > 1}
    acked_ids = Counter(a.task_id for a in recorder.acks)
    shared = [task_id for task_id, n in acked_ids.items() if n > 1]
    acked_requests = Counter(a.request_id for a in recorder.acks)
    twice = [request for request, n in acked_requests.items() if n > 1]
    unbound = [task_id for task_id, _title, request in rows if request is None]
    checks.append(
        Check(
            "no request_id created more than one task",
            not duplicated and not shared and not twice and not unbound,
            f"{len(duplicated)} request ids with several tasks {list(duplicated.items())[:3]}; "
            f"{len(shared)} task ids acknowledged for two requests; "
            f"{len(unbound)} tasks without their request id",
        )
    )

    revisions = [change.revision for change in recorder.changes]
    repeats = [r for r, n in Counter(revisions).items() if n > 1]
    out_of_order = sum(1 for a, b in itertools.pairwise(revisions) if b <= a)
    expected = set(range(start_revision + 1, final_revision + 1))
    gaps = sorted(expected - set(revisions))
    created = Counter(c.task_id for c in recorder.changes if c.type == 1)
    stored = {task_id for task_id, _title, _request in rows}
    unseen = sorted(stored - set(created))
    created_twice = [task_id for task_id, n in created.items() if n > 1]
    checks.append(
        Check(
            "the resumed watch saw every change exactly once",
            watch_caught_up
            and not repeats
            and not out_of_order
            and not gaps
            and not unseen
            and not created_twice,
            f"{len(revisions)} changes for revisions {start_revision + 1}..{final_revision}"
            f"{'' if watch_caught_up else ' (never caught up)'}; {len(gaps)} missed {gaps[:5]}; "
            f"{len(repeats)} repeated {repeats[:5]}; {out_of_order} out of order; "
            f"{len(unseen)} stored tasks never seen created {unseen[:5]}",
        )
    )

    # A planned restart of the server ends its streams by design; only the database's failover
    # must not.
    windows = [e.restart_window for e in events if e.restart_window is not None]
    broken = [
        end
        for end in recorder.stream_ends
        if not any(began <= end.time <= ready for began, ready in windows)
    ]
    ends = Counter(end.code for end in broken)
    excused = len(recorder.stream_ends) - len(broken)
    checks.append(
        Check(
            "the watch stream stayed open through every failover",
            not broken,
            (
                "never ended"
                if not broken
                else f"ended {len(broken)} times: {dict(ends)}; "
                f"e.g. {broken[0].details!r} at {broken[0].time:.1f}s"
            )
            + (f" ({excused} ends during planned server restarts not counted)" if excused else ""),
        )
    )

    checks.append(
        Check(
            "the server process stayed up",
            not server_exits,
            "stayed up"
            if not server_exits
            else f"exited {len(server_exits)} times (time s, status): {server_exits[:5]}",
        )
    )

    stuck = [
        f"{e.kind}@{e.started:.1f}s"
        for e in events
        if e.error or e.writes_resumed is None or e.serving_again is None or e.healthy is None
    ]
    checks.append(
        Check(
            "after every event the cluster healed, health said SERVING and writes resumed",
            not stuck,
            "all recovered" if not stuck else f"not recovered: {stuck}",
        )
    )
    restarts = [e for e in events if e.restart_window is not None]
    if restarts:
        killed = [f"{e.kind}@{e.started:.1f}s" for e in restarts if e.drain_killed]
        checks.append(
            Check(
                "a restarted server drained within its shutdown grace",
                not killed,
                "all drained" if not killed else f"had to be SIGKILLed: {killed}",
            )
        )
    abandoned = Counter(code for _request, code in recorder.abandoned)
    checks.append(
        Check(
            "no create was refused with a code a client cannot retry",
            not recorder.abandoned,
            "none" if not recorder.abandoned else f"{len(recorder.abandoned)}: {dict(abandoned)}",
        )
    )
    return checks


def event_figures(recorder: Recorder, events: list[Event], end: float) -> list[dict[str, Any]]:
    """Per event: timings, write gap, health timeline and call outcomes until the next event."""
    figures = []
    for index, event in enumerate(events):
        window_end = events[index + 1].started if index + 1 < len(events) else end

        def rel(moment: float | None, event: Event = event) -> float | None:
            return None if moment is None else round(moment - event.started, 2)

        figures.append(
            {
                **{k: v for k, v in asdict(event).items() if k not in ("started",)},
                "started": round(event.started, 2),
                "action_done": rel(event.action_done),
                "restart_window": None
                if event.restart_window is None
                else [rel(event.restart_window[0]), rel(event.restart_window[1])],
                "healthy": rel(event.healthy),
                "writes_resumed": rel(event.writes_resumed),
                "serving_again": rel(event.serving_again),
                "write_gap": write_gap(recorder, event, window_end),
                "health": health_timeline(recorder, event.started - 1.0, window_end, event.started),
                "calls": recorder.counts(event.started, window_end),
                "watch_ends": [
                    {"at": rel(e.time), "code": e.code, "details": e.details}
                    for e in recorder.stream_ends
                    if event.started <= e.time < window_end
                ],
            }
        )
    return figures


def render(result: RunResult) -> str:
    """The human-readable report of one run."""
    lines = [
        f"== run {result.run}: {'PASSED' if result.passed else 'FAILED'} "
        f"in {result.duration_seconds:.0f}s (database URL form: {result.url_form}; "
        f"{result.url_form_note})"
    ]
    if result.error:
        lines.append(f"   drill aborted: {result.error}")
    for number, event in enumerate(result.events, 1):
        gap = event["write_gap"]
        restart = event.get("restart_window")
        lines.append(
            f"-- event {number}: {event['kind']} at {event['started']:.1f}s "
            f"({event['old_leader']} -> {event['new_leader']})"
            + (f" ERROR: {event['error']}" if event["error"] else "")
        )
        lines.append(
            f"   cluster healed +{event['healthy']}s, health SERVING again "
            f"+{event['serving_again']}s, first create after healing +{event['writes_resumed']}s"
        )
        if restart:
            lines.append(
                f"   server restarted at +{restart[0]}s (SIGTERM drain {event['drain_seconds']}s"
                f"{', then SIGKILL' if event['drain_killed'] else ''}), ready again at "
                f"+{restart[1]}s"
            )
        lines.append(
            f"   write gap: {gap['seconds']}s (from +{gap['from']}s to +{gap['to']}s)"
            if gap["seconds"] is not None
            else "   write gap: no creates around the event"
        )
        timeline = ", ".join(f"{t:+.1f}s {status}" for t, status in event["health"])
        lines.append(f"   health: {timeline or 'no samples'}")
        for method, codes in event["calls"].items():
            lines.append(f"   {method:14} {', '.join(f'{c}={n}' for c, n in codes.items())}")
        for end in event["watch_ends"]:
            lines.append(f"   watch ended +{end['at']}s {end['code']}: {end['details'][:120]}")
    lines.append("-- calls over the whole run:")
    for method, codes in result.totals.items():
        lines.append(f"   {method:14} {', '.join(f'{c}={n}' for c, n in codes.items())}")
    for key, value in result.figures.items():
        lines.append(f"   {key}: {value}")
    lines.append("-- checks:")
    for check in result.checks:
        lines.append(f"   [{'PASS' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    known = result.server_log.get("known_defects") or {}
    if known:
        lines.append("-- known defects in the server log:")
        for name, seen in known.items():
            lines.append(f"   {name}: {seen['lines']} lines, first at {seen['first']}")
    causes = result.server_log.get("unavailable_causes") or {}
    if causes:
        lines.append(
            "-- database errors the server mapped to UNAVAILABLE: "
            + ", ".join(f"{cause} x{count}" for cause, count in causes.items())
        )
    errors = result.server_log.get("errors") or {}
    if errors:
        lines.append("-- server errors logged (most frequent):")
        for key, count in errors.items():
            lines.append(f"   {count:5} x {key}")
    return "\n".join(lines)

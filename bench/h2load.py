"""Driving h2load: gRPC unary calls from a prebuilt body, and what its output and log say.

h2load speaks HTTP/2 (cleartext, prior knowledge), not gRPC, so a call is a POST to the method's
path with the length-prefixed message as body and the headers gRPC requires. It reports HTTP
statuses only; grpc-status is checked by the harness on the server side (see `bench.run`).
A Connect load is a plain JSON POST over HTTP/1.1 (`--h1`, one call per connection at a
time), what curl or a browser sends to the HTTP edge; a Connect error is a non-2xx status.
A REST load is the original REST API's call over HTTP/1.1 the same way: a GET when it has no
body, else a JSON POST.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

#: Connections per h2load process at concurrency above this; the rest are streams on them, as a
#: few client replicas each multiplexing calls on one channel would.
MAX_CONNECTIONS = 4

_REQUESTS = re.compile(
    r"requests: (?P<total>\d+) total, \d+ started, (?P<done>\d+) done, (?P<ok>\d+) succeeded, "
    r"(?P<failed>\d+) failed, (?P<errored>\d+) errored, (?P<timeout>\d+) timeout"
)
_STATUS_2XX = re.compile(r"status codes: (?P<ok>\d+) 2xx")


class H2LoadError(RuntimeError):
    """h2load is missing, failed, or reported calls that did not succeed."""


@dataclass(frozen=True)
class Load:
    """One h2load process: `calls` calls of one method with one body, `concurrency` at a time."""

    path: str
    body: bytes
    concurrency: int
    calls: int
    token: str | None = None
    #: "grpc" (HTTP/2, gRPC framing), "connect" (Connect JSON over HTTP/1.1) or "rest" (the
    #: REST API over HTTP/1.1: GET without a body, JSON POST with one).
    protocol: str = "grpc"
    #: The RPC the server counts each call under, when the path does not end with its name
    #: (a REST path such as /api/v1/tasks/7 is counted as GetTask).
    rpc: str = ""

    @property
    def method(self) -> str:
        """The RPC name the server's `grpc_server_handled_total` counts these calls under."""
        return self.rpc or self.path.rsplit("/", 1)[1]

    @property
    def http1(self) -> bool:
        """Sent over HTTP/1.1 to the HTTP edge, one connection per concurrent call."""
        return self.protocol in ("connect", "rest")


@dataclass(frozen=True)
class Result:
    """What one h2load process measured: each call's start and duration, in microseconds."""

    load: Load
    starts_us: list[int]
    durations_us: list[int]


def frame(message: Message | bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, big-endian length, the bytes."""
    payload = message if isinstance(message, bytes) else message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def executable() -> str:
    """The h2load binary, or a clear error saying how to install it."""
    found = shutil.which("h2load")
    if found is None:
        raise H2LoadError(
            "h2load not found: install Debian's nghttp2-client (make bench does, where it can)"
        )
    return found


def start(load: Load, target: str, workdir: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    """Start h2load for `load` against `target` (host:port); return the process and its log."""
    log = workdir / f"{name}.log"
    log.unlink(missing_ok=True)  # h2load appends: a log left by an earlier run would mix in
    if load.http1:  # one connection per concurrent call (and so no pipelining)
        connections, streams = load.concurrency, 1
        protocol_arguments = ["--h1"]
        if load.body:
            protocol_arguments.append("--header=content-type: application/json")
    else:
        connections = min(load.concurrency, MAX_CONNECTIONS)
        streams = -(-load.concurrency // connections)
        protocol_arguments = ["--header=content-type: application/grpc", "--header=te: trailers"]
    command = [
        executable(),
        f"--requests={load.calls}",
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        "--threads=1",
        f"--log-file={log}",
        *protocol_arguments,
    ]
    if load.body:  # h2load POSTs its --data; without it, it GETs
        body = workdir / f"{name}.body"
        body.write_bytes(load.body)
        command.append(f"--data={body}")
    if load.token is not None:
        command.append(f"--header=authorization: Bearer {load.token}")
    command.append(f"http://{target}{load.path}")
    process = subprocess.Popen(  # noqa: S603 - our own arguments
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return process, log


def finish(
    load: Load, process: subprocess.Popen[str], log: Path, require_2xx: bool = False
) -> Result:
    """Wait for h2load and check that it completed every call with HTTP 200.

    Over HTTP/1.1 to taskservice only completion is checked (see below); `require_2xx` checks
    the statuses too, for a server whose status lines h2load reads and that has no counts of
    its own for the harness to check (the original backend).
    """
    output, _ = process.communicate()
    if process.returncode != 0:
        raise H2LoadError(f"h2load exited {process.returncode} on {load.path}:\n{output}")
    requests, statuses = _REQUESTS.search(output), _STATUS_2XX.search(output)
    if requests is None or statuses is None:
        raise H2LoadError(f"unreadable h2load output on {load.path}:\n{output}")
    if load.http1 and not require_2xx:
        # hypercorn's HTTP/1.1 status line has no reason phrase ("HTTP/1.1 200 "), which h2load
        # cannot read: it counts such calls neither 2xx nor succeeded. Every call must have
        # completed; whether each was OK is checked on the server's metrics, as for gRPC.
        if (
            int(requests["done"]) != load.calls
            or int(requests["errored"])
            or int(requests["timeout"])
        ):
            raise H2LoadError(
                f"{load.path}: {requests['done']} of {load.calls} calls completed "
                f"({requests['errored']} errored, {requests['timeout']} timed out)"
            )
    elif int(requests["ok"]) != load.calls or int(statuses["ok"]) != load.calls:
        raise H2LoadError(
            f"{load.path}: {requests['ok']} of {load.calls} calls succeeded "
            f"({requests['failed']} failed, {requests['errored']} errored, "
            f"{requests['timeout']} timed out, {statuses['ok']} HTTP 2xx)"
        )
    starts, durations = [], []
    for line in log.read_text().splitlines():
        start_us, _status, duration_us, *_ = line.split("\t")
        starts.append(int(start_us))
        durations.append(int(duration_us))
    return Result(load, starts, durations)


def run(
    loads: list[Load], target: str, workdir: Path, name: str, require_2xx: bool = False
) -> list[Result]:
    """Run several loads at once (one h2load process each) and wait for all of them."""
    started = [start(load, target, workdir, f"{name}-{i}") for i, load in enumerate(loads)]
    return [
        finish(load, process, log, require_2xx)
        for load, (process, log) in zip(loads, started, strict=True)
    ]

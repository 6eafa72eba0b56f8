"""MAX_CONCURRENT_RPCS: how many unary calls one edge of one process runs at once.

Only unary calls count. A WatchTasks stream stays open for hours doing nothing most of the time;
counted with the unary calls (as grpc.aio's own `maximum_concurrent_rpcs` counts every call),
a thousand idle watchers would leave no room for a single GetTask. Streams have their own limit,
WATCH_MAX_STREAMS, enforced where they subscribe to the change feed.

A call over the limit is refused at once with RESOURCE_EXHAUSTED (reason TOO_MANY_CALLS), the
code grpc.aio's own limit used, rather than queueing behind the others: a client that retries
with backoff finds room sooner than one whose call waits in a queue past its deadline.
"""

from __future__ import annotations

from taskservice import errors

#: ErrorInfo.reason of a call refused because MAX_CONCURRENT_RPCS calls are in progress.
TOO_MANY_CALLS = "TOO_MANY_CALLS"


def too_many_calls() -> errors.ResourceExhausted:
    """The error a call over the limit is refused with."""
    return errors.ResourceExhausted(
        TOO_MANY_CALLS, "too many calls in progress; retry with backoff"
    )


class UnaryCallLimit:
    """A count of the unary calls in progress on one edge, refusing those over `limit`.

    Each edge runs on one event loop, so a plain counter is enough: `enter` and `leave` are
    never interleaved with each other.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    def enter(self) -> None:
        """Count a call in; raise `too_many_calls()` if `limit` calls are already in progress."""
        if self.in_progress >= self.limit:
            raise too_many_calls()
        self.in_progress += 1

    def leave(self) -> None:
        """Count a call out (only one `enter` let in)."""
        self.in_progress -= 1

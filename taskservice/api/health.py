"""Health that tells the truth: readiness follows the database, liveness follows the process.

Kubernetes asks `liveness` whether to restart the pod and `readiness` whether to send it traffic.
Readiness (and `""` and each service name, which clients and grpcurl ask) is NOT_SERVING until
start-up is complete, then SERVING only while the database answers: it is probed in the background
every PROBE_INTERVAL_SECONDS (every RECOVERY_PROBE_INTERVAL_SECONDS while it is down, so service
resumes quickly after a failover), and at once when a call meets a database error. Liveness stays
SERVING whatever the database does, so an outage never turns into a restart storm; a wedged event
loop cannot answer the probe at all, which is what makes Kubernetes restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskservice.background import Background

logger = logging.getLogger(__name__)

LIVENESS = "liveness"
READINESS = "readiness"
#: Seconds between database probes; with the probe timeout, an outage shows within 5 s.
PROBE_INTERVAL_SECONDS = 2.0
#: Seconds between probes while the database is down: readiness (and with it every call, which
#: is refused while it is off) returns within this of a new primary taking over.
RECOVERY_PROBE_INTERVAL_SECONDS = 0.25
#: Longest a probe may take before the database counts as down.
PROBE_TIMEOUT_SECONDS = 1.5
#: Probes still running after their timeout and cancellation, at most, before no more start.
MAX_STUCK_PROBES = 3

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    """`grpc.health.v1.Health` with Check, List and Watch, whose streams end at shutdown.

    grpcio-health-checking's servicer keeps Watch streams open after its graceful shutdown, so a
    server with any watcher (client-side health checking keeps one per connection) always waited
    its whole shutdown grace. Here, once shut down, every Watch sends NOT_SERVING and ends.
    """

    def __init__(self) -> None:
        self._statuses: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._closed = False

    async def set(self, name: str, status: int) -> None:
        """Set one name's status and wake its watchers; ignored after shutdown."""
        if not self._closed and self._statuses.get(name) != status:
            self._statuses[name] = status
            self._notify()

    async def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING for good; Watch streams send that and end."""
        self._statuses = dict.fromkeys(self._statuses, _NOT_SERVING)
        self._closed = True
        self._notify()

    def status_of(self, name: str) -> int | None:
        """The status of one name, None for a name not answered; the HTTP edge asks this too."""
        return self._statuses.get(name)

    async def Check(  # noqa: N802 - the RPC's name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The status of one name; an unknown name is NOT_FOUND, as the protocol says."""
        status = self.status_of(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(  # noqa: N802 - the RPC's name
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every name and its status."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )

    async def Watch(  # noqa: N802 - the RPC's name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Stream the name's status now and at every change (SERVICE_UNKNOWN if unknown)."""
        last = None
        while True:
            changed = self._changed  # taken before reading, so no change is missed
            status = self._statuses.get(request.service, _SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._closed:
                return
            await changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class HealthMonitor:
    """Keeps the health servicer's statuses in step with the database."""

    def __init__(
        self,
        servicer: HealthServicer,
        probe: Callable[[], Awaitable[object]],
        readiness_names: Sequence[str],
    ) -> None:
        self.servicer = servicer
        self._probe = probe
        self._names = (READINESS, *readiness_names)
        self._wake = asyncio.Event()
        self._probing = Background("health-monitor", self._watch)
        self._stuck: set[asyncio.Future[object]] = set()
        self.ready = False

    async def not_serving_yet(self) -> None:
        """Before start-up: every name answers NOT_SERVING, never the library's default SERVING."""
        for name in (LIVENESS, *self._names):
            await self.servicer.set(name, _NOT_SERVING)

    async def start(self) -> None:
        """Start-up is complete: report liveness, probe the database, keep probing."""
        await self.servicer.set(LIVENESS, _SERVING)
        await self._update(await self._database_answers())
        self._probing.start()

    def suspect(self) -> None:
        """A call met a database error: probe now rather than at the next interval."""
        self._wake.set()

    async def shutdown(self) -> None:
        """Every name NOT_SERVING at once, for good (later updates are ignored)."""
        self.ready = False
        await self._probing.stop()
        for probe in self._stuck:
            probe.cancel()
        await self.servicer.enter_graceful_shutdown()

    async def _watch(self) -> None:
        while True:
            interval = PROBE_INTERVAL_SECONDS if self.ready else RECOVERY_PROBE_INTERVAL_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            await self._update(await self._database_answers())

    async def _database_answers(self) -> bool:
        """Whether a probe answered within PROBE_TIMEOUT_SECONDS.

        Each probe runs as a task of its own that this never waits for past the timeout, even
        when cancelling it takes longer or is lost on the way (a driver may swallow a
        cancellation while it connects, and a silent network never ends a wait by itself):
        readiness must turn off during a partition whatever the driver does. Probes that outlive
        their cancellation are kept, at most MAX_STUCK_PROBES of them (each may hold a pooled
        connection); while that many are stuck the database is simply not answering.
        """
        self._stuck = {probe for probe in self._stuck if not probe.done()}
        if len(self._stuck) >= MAX_STUCK_PROBES:
            return False
        probing = asyncio.ensure_future(self._probe())
        done, _ = await asyncio.wait({probing}, timeout=PROBE_TIMEOUT_SECONDS)
        if not done:
            probing.cancel()
            probing.add_done_callback(_retrieve)
            self._stuck.add(probing)
            logger.debug("database probe: no answer within %.1f s", PROBE_TIMEOUT_SECONDS)
            return False
        if probing.cancelled():
            return False
        if (exc := probing.exception()) is not None:  # any failure to answer means "not ready"
            logger.debug("database probe failed: %r", exc)
            return False
        return True

    async def _update(self, ready: bool) -> None:
        if ready == self.ready and self._probing.running:
            return
        if ready != self.ready:
            log = logger.info if ready else logger.warning
            log(
                "database %s: readiness %s",
                *(("up", "SERVING") if ready else ("down", "NOT_SERVING")),
            )
        self.ready = ready
        for name in self._names:
            await self.servicer.set(name, _SERVING if ready else _NOT_SERVING)


def _retrieve(probe: asyncio.Future[object]) -> None:
    """Consume an abandoned probe's outcome, so asyncio does not report it as never retrieved."""
    if not probe.cancelled():
        probe.exception()

"""The trash sweep: tasks past their purge time are deleted for good, in the background.

Other expired rows go on the same round (`also`): refresh tokens past their expiry, throttle
counters whose window has ended, and audit events older than AUDIT_RETENTION_DAYS.

Each server sweeps on its own every few minutes (several replicas sweeping at once only find less
to delete), so no cron job is needed; `taskservice purge` runs one sweep for operators who want
to choose the time themselves.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from taskservice.background import Background
from taskservice.db.outages import log_round_failure
from taskservice.services.tasks import TaskService

logger = logging.getLogger(__name__)

#: Seconds between sweeps, give or take a tenth so replicas do not sweep in step.
SWEEP_INTERVAL_SECONDS = 300.0


class TrashSweeper:
    """Runs `TaskService.purge_expired` now and then until stopped."""

    def __init__(
        self,
        tasks: TaskService,
        also: Sequence[Callable[[], Awaitable[int]]] = (),
    ) -> None:
        self._tasks = tasks
        self._also = tuple(also)
        self._sweeping = Background("trash-sweeper", self._run)

    def start(self) -> None:
        """Begin sweeping in the background."""
        self._sweeping.start()

    async def stop(self) -> None:
        """Stop sweeping; a sweep in progress is cancelled (its transaction rolls back)."""
        await self._sweeping.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS * random.uniform(0.9, 1.1))  # noqa: S311
            try:
                purged = await self._tasks.purge_expired()
            except Exception as exc:  # the next sweep tries again
                log_round_failure(logger, "trash sweep failed", exc)
                continue
            if purged:
                logger.info("trash sweep purged %d tasks", purged)
            for sweep in self._also:
                try:
                    await sweep()
                except Exception as exc:  # as above: the next round tries again
                    log_round_failure(logger, "expired-row sweep failed", exc)

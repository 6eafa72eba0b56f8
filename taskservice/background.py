"""A server's long-lived work (sweeps, listeners, checks, probes), one asyncio task each.

Each piece of such work runs from the application's start to its stop. Stopping is where it
goes wrong when written by hand each time: a task cancelled but never awaited is reported as
destroyed while pending at exit, one awaited without suppressing its cancellation fails the
stop, and a stop called twice must do nothing. So it is written once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class Background:
    """Runs `work()` as one named task from `start()` until `stop()` cancels it."""

    __slots__ = ("_name", "_task", "_work")

    def __init__(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._name = name
        self._work = work
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Started and not stopped since."""
        return self._task is not None

    def start(self) -> None:
        """Start the work (nothing if it is running already)."""
        if self._task is None:
            self._task = asyncio.create_task(self._work(), name=self._name)

    async def stop(self) -> None:
        """Cancel the work and wait until it has ended (nothing if it is not running)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

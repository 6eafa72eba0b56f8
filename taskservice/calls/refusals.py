"""Calls refused with PERMISSION_MISSING, written to the audit trail without letting it flood.

A misconfigured client (a key created without the permission its job needs) is refused on every
call, perhaps hundreds of times a second; the metric counts each refusal, but the audit trail
keeps one row per caller, method and permission per WINDOW_SECONDS in each server process, which
is what an operator needs to find and fix it. The window is kept in memory: a restart, or
another replica, may write one more row, never a flood. Writing the row must not change the
answer: when it fails (the database away), the failure is logged and the caller still gets
PERMISSION_DENIED.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime, timedelta

from taskservice.calls.context import current_call
from taskservice.services.audit import AuditTrail
from taskservice.services.clock import Clock, system_clock

logger = logging.getLogger(__name__)

#: At most one audit row per (caller, method, permission) per this many seconds per process.
WINDOW_SECONDS = 60.0
#: Distinct (caller, method, permission) remembered at most; the oldest go first.
MAX_REMEMBERED = 10_000


class RefusalAudit:
    """Writes the refusal of the call in progress, if it is one to write, to the audit trail."""

    def __init__(
        self,
        trail: AuditTrail,
        *,
        window_seconds: float = WINDOW_SECONDS,
        clock: Clock = system_clock,
    ) -> None:
        self._trail = trail
        self._window = timedelta(seconds=window_seconds)
        self._clock = clock
        self._written: OrderedDict[tuple[int, str, str], datetime] = OrderedDict()

    async def after_call(self, method: str) -> None:
        """Store the call's PERMISSION_MISSING refusal, unless one is already in the window.

        Called by each edge once the call's error is mapped. The window is per caller, method
        and permission.
        """
        call = current_call()
        if call is None or not call.permission_missing or call.user_id is None:
            return
        permission = call.denied_permission or ""
        key = (call.user_id, method, permission)
        now = self._clock()
        last = self._written.get(key)
        if last is not None and timedelta(0) <= now - last < self._window:
            return
        self._written[key] = now
        self._written.move_to_end(key)
        while len(self._written) > MAX_REMEMBERED:
            self._written.popitem(last=False)
        try:
            await self._trail.record_permission_missing(call.user_id, method, permission)
        except Exception as exc:  # the refusal stands; only its record is lost
            logger.warning("could not audit a refused call to %s: %s", method, type(exc).__name__)

"""The time services act at: one injectable callable, so tests can move time forward at will."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from taskservice.db.types import utcnow

#: Returns the current time as an aware UTC datetime.
Clock = Callable[[], datetime]

#: The wall clock, for production.
system_clock: Clock = utcnow

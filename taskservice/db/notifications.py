"""PostgreSQL LISTEN on a dedicated connection, watched so that its loss is never silent.

Notifications are hints: a listener on a pooled connection would vanish when the connection went
back to the pool, and none are replayed after a reconnect. So this listener owns its connection,
checks it every few seconds, reports `connected` truthfully, and calls `on_reset` whenever it
(re)connects or drops, so users of the hints can forget whatever they might have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.engine import URL

from taskservice.background import Background
from taskservice.db.engine import asyncpg_arguments, connect_uncancellable
from taskservice.db.outages import log_round_failure

logger = logging.getLogger(__name__)

#: Seconds between liveness checks of the listening connection.
CHECK_INTERVAL_SECONDS = 2.0
#: Longest wait between reconnection attempts, in seconds.
MAX_BACKOFF_SECONDS = 10.0


class PgListener:
    """Listens on one channel and hands each payload to `on_message`."""

    def __init__(
        self,
        url: URL,
        channel: str,
        on_message: Callable[[str], None],
        on_reset: Callable[[], None],
    ) -> None:
        self._arguments = asyncpg_arguments(url)
        self._channel = channel
        self._on_message = on_message
        self._on_reset = on_reset
        self._listening = Background(f"listen:{channel}", self._run)
        self._connected = asyncio.Event()
        #: Set once the first attempt to connect has ended, either way.
        self._attempted = asyncio.Event()
        self.connected = False

    async def start(self, wait_seconds: float = 5.0) -> None:
        """Start listening in the background; wait briefly for the first attempt to connect.

        Only for the first attempt, successful or not: a server starting while the database is
        away (during a failover) must start at once and report NOT_SERVING, not wait here.
        """
        self._listening.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), wait_seconds)

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        await self._listening.stop()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            connection = None
            try:
                connection = await connect_uncancellable(**self._arguments, timeout=5)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _c, lost=lost: lost.set())
                await connection.add_listener(self._channel, self._deliver)
                self._set_connected(True)
                self._attempted.set()
                backoff = 0.5
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), CHECK_INTERVAL_SECONDS)
                    if not lost.is_set():
                        await connection.execute("SELECT 1", timeout=CHECK_INTERVAL_SECONDS)
                logger.warning("lost the LISTEN connection for %s; reconnecting", self._channel)
            except (OSError, TimeoutError) as exc:  # connecting, or the connection, failed
                logger.warning("LISTEN %s unavailable (%s); retrying", self._channel, exc)
            except Exception as exc:  # whatever it is, listening must resume when it can
                log_round_failure(logger, f"LISTEN {self._channel}", exc)
            finally:
                self._attempted.set()
                self._set_connected(False)
                if connection is not None and not connection.is_closed():
                    connection.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _deliver(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._on_message(payload)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            self._connected.set()
        else:
            self._connected.clear()
        self._on_reset()

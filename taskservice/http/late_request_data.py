"""HTTP/2 request data that arrives after its response: ignored, not fatal to the connection.

The HTTP edge answers some requests before reading their bodies: a missing token (401), an
oversized body (413), too many calls (429). Over HTTP/2 the client may still be sending that
body when the answer has closed the stream. hypercorn 0.18 then looks the closed stream up for
each late DATA frame, fails (`KeyError`), and drops the whole connection, with every other
request on it: a browser shows a network error instead of the answer, and the requests it
multiplexed on the connection fail too. (pgjones/hypercorn#329; the fixes proposed there are
not released.) `install()` puts in place, once per process, a subclass of hypercorn's HTTP/2
protocol that acknowledges such data (so the connection's flow-control window stays open) and
otherwise ignores it, as hypercorn already does for the stream's end. hypercorn is pinned
exactly, and tests over real HTTP/2 connections, in cleartext and over TLS, fail if an upgrade
breaks this.
"""

from __future__ import annotations

import h2.events
import hypercorn.protocol as hypercorn_protocol
from hypercorn.protocol.h2 import H2Protocol


class _LateDataTolerantH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol, ignoring request data for streams it has closed."""

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # Events are handed on one run at a time, split before each DATA frame, because a
        # stream can close while an earlier event of the same batch is handled (the response
        # is sent from the application's task).
        run: list[h2.events.Event] = []
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                if run:
                    await super()._handle_events(run)
                    run = []
                if event.stream_id not in self.streams:
                    self.connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    await self._flush()
                    continue
            run.append(event)
        if run:
            await super()._handle_events(run)


def install() -> None:
    """Make hypercorn serve HTTP/2 with the tolerant protocol (idempotent)."""
    hypercorn_protocol.H2Protocol = _LateDataTolerantH2Protocol  # type: ignore[misc]

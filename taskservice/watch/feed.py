"""The change feed: one reader of `task_changes` per process, fanning out to every stream.

When woken, it reads the changes after the last revision it has seen (one query, however many
streams are open) and offers each to the streams that may see it: those watching its owner and
admins' streams watching every owner. Each stream has a bounded buffer; a stream whose buffer
overflows is ended with RESOURCE_EXHAUSTED (WATCHER_TOO_SLOW) and its buffer dropped, so a slow
reader costs the server at most WATCH_BUFFER_EVENTS changes.

Wake-ups: on PostgreSQL, `NOTIFY task_changes`, sent (by any server) whenever committed changes
are numbered, through a dedicated LISTEN connection; in-process, after every local commit; and a
poll every second, which keeps watchers moving while the LISTEN connection is down (logged) and
on SQLite serves changes made by other processes. With no stream open, only the poll moves the
feed's revision, without reading the changes (wake-ups still number them). A notification
carries nothing: the changes are always read from the table, so a listener that reconnects
simply catches up.

Revisions are dense and become visible in order (migration 0009), so reading `revision > last`
never skips a change that commits late. On PostgreSQL the feed is also what numbers committed
changes: each wake-up (a local commit, a NOTIFY, the poll) first calls
`Database.number_changes`, which NOTIFYs the feeds of every server when it numbered something.
Numbering is off the writers' path and batched under load (a round that numbered something is
followed by a pause of NUMBERING_GAP_SECONDS, so the commits of that moment share the next
round); a read's revision may therefore trail a write committed a moment before it, whose change
a watch from that revision delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import chain

from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from taskservice.background import Background
from taskservice.db.engine import Database
from taskservice.db.notifications import PgListener
from taskservice.db.outages import describe, is_outage, log_round_failure
from taskservice.db.types import utcnow
from taskservice.errors import FailedPrecondition, ResourceExhausted, Unavailable
from taskservice.watch import changes
from taskservice.watch.changes import Change

logger = logging.getLogger(__name__)

#: NOTIFY channel that `task_changes_assign()` wakes every feed through.
CHANNEL = "task_changes"
#: Seconds between polls when nothing woke the feed.
POLL_INTERVAL_SECONDS = 1.0
#: Least pause after a round that numbered changes, in seconds: under a stream of writes, the
#: commits of this moment share the next numbering round (one short transaction and one NOTIFY
#: for them all, rather than one each), for at most this much more delay to watchers.
NUMBERING_GAP_SECONDS = 0.005
#: Longest one round of numbering and reading may take before it is abandoned, in seconds.
ROUND_TIMEOUT_SECONDS = 10.0
#: Streams woken at a time when changes reach many (see `_wake_all`).
WAKE_SLICE = 100
#: The next slice is woken once no more than this many of the last one are still sending...
WAKE_SLICE_STRAGGLERS = WAKE_SLICE // 10
#: ...or after this many seconds, whichever comes first (a stalled reader holds no one up).
WAKE_SLICE_WAIT_SECONDS = 0.02
#: Pause between compactions, in seconds: a quarter of the retention, within these bounds.
MIN_COMPACTION_INTERVAL_SECONDS = 1.0
MAX_COMPACTION_INTERVAL_SECONDS = 300.0


def compacted(oldest: int) -> FailedPrecondition:
    """The error a stream ends with when the history it needs is no longer kept."""
    return FailedPrecondition(
        "REVISION_COMPACTED",
        f"the history after start_revision is no longer kept; relist, or watch from {oldest} on",
        {"oldest_revision": str(oldest)},
    )


def too_slow() -> ResourceExhausted:
    """The error a stream ends with when its reader fell WATCH_BUFFER_EVENTS changes behind."""
    return ResourceExhausted(
        "WATCHER_TOO_SLOW",
        "the stream fell too far behind its reader; resume from the last revision received",
    )


def shutting_down() -> Unavailable:
    """The error every stream ends with when the server stops."""
    return Unavailable(
        "SHUTTING_DOWN", "the server is shutting down; resume from the last revision received"
    )


class Subscription:
    """One stream's place in the feed: what it may see, and its bounded buffer.

    Kept small, as a server holds one per open stream (10,000 by default): slots, a list as the
    buffer (a deque costs 600 bytes even empty), and a bare future while the stream waits
    rather than an Event with its own deque of waiters. Nothing here runs a timer: the feed
    wakes a stream when a change is buffered, when it is ended, and at the time it asked for
    (`wake_at`, from one heap for every stream).
    """

    __slots__ = (
        "accepts",
        "buffer",
        "capacity",
        "due",
        "ended",
        "feed",
        "live_from",
        "owner_id",
        "slice",
        "waiter",
    )

    def __init__(
        self,
        feed: ChangeFeed,
        owner_id: int | None,
        accepts: Callable[[Change], bool],
        capacity: int,
    ) -> None:
        self.feed = feed
        self.owner_id = owner_id
        self.accepts = accepts
        self.capacity = capacity
        #: The feed's revision when this subscription began: later changes come live.
        self.live_from = feed.revision
        self.buffer: list[Change] = []
        #: The error the stream ends with (a DomainError, or an outage's).
        self.ended: Exception | None = None
        #: While the stream waits: the future that wakes it.
        self.waiter: asyncio.Future[None] | None = None
        #: When the stream wants waking with nothing buffered (monotonic seconds; inf: never).
        self.due = math.inf
        #: The fan-out slice that last woke it (see `ChangeFeed._wake_all`); 0: none.
        self.slice = 0

    def offer(self, change: Change) -> bool:
        """Buffer the change if this stream sees it; end the stream when the buffer is full.

        Returns whether the stream has a waiter to wake (the feed wakes them in one pass).
        """
        if self.ended is not None or not self.accepts(change):
            return False
        if len(self.buffer) >= self.capacity:
            self.feed.too_slow_total += 1
            self.end(too_slow())
            return False
        self.buffer.append(change)
        return self.waiter is not None

    def end(self, error: Exception) -> None:
        """End the stream with `error` at its next step; its buffer is dropped now."""
        if self.ended is None:
            self.ended = error
            self.buffer.clear()
        self.wake()

    def wake(self) -> bool:
        """Resume the stream if it waits; return whether it did."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return False
        waiter.set_result(None)
        return True

    async def wait(self) -> None:
        """Wait until a change is buffered, the stream is ended, or its due time has come."""
        if self.slice:  # back from sending what a fan-out slice woke it for
            self.feed.slice_sent(self.slice)
            self.slice = 0
        if self.buffer or self.ended is not None:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> list[Change]:
        """Every buffered change, oldest first; raises the stream's end once it has one."""
        if self.ended is not None:
            raise self.ended
        taken = self.buffer
        if taken:
            self.buffer = []
        return taken


class ChangeFeed:
    """Reads new changes once per wake-up and offers them to every subscription."""

    def __init__(
        self,
        database: Database,
        *,
        buffer_events: int,
        max_streams: int,
        retention: timedelta,
        clock: Callable[[], datetime] = utcnow,
        tracer: Tracer | None = None,
    ) -> None:
        self.database = database
        self._tracer = tracer
        self._buffer_events = buffer_events
        self._max_streams = max_streams
        self._retention = retention
        self._clock = clock
        #: The newest revision read and offered to every subscription.
        self.revision = 0
        #: Streams cut off for reading too slowly, since start (for tests and logs).
        self.too_slow_total = 0
        self._by_owner: dict[int, set[Subscription]] = {}
        self._every_owner: set[Subscription] = set()
        self._count = 0
        #: The fan-out's current slice, how many of its streams are still sending, and the
        #: future `_wake_all` waits on for them (see `_wake_all`).
        self._slice = 0
        self._slice_sending = 0
        self._slice_drained: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        #: (due time, sequence, subscription): when streams asked to be woken (`wake_at`).
        self._due: list[tuple[float, int, Subscription]] = []
        self._due_sequence = itertools.count()
        self._due_timer: asyncio.TimerHandle | None = None
        self._due_timer_when = math.inf
        self._reading = asyncio.Lock()
        self._feeding = Background("change-feed", self._run)
        self._compacting = Background("change-compaction", self._compact_now_and_then)
        self._closing = False
        #: Whether `revision` was taken from the store (not yet, after a start during an outage).
        self._synced = False
        self._listener: PgListener | None = None
        if database.engine.dialect.name == "postgresql":
            self._listener = PgListener(
                database.engine.url, CHANNEL, lambda _payload: self.wake(), self._listener_reset
            )
        database.after_commit(self.wake)

    @property
    def streams(self) -> int:
        """Subscriptions open now."""
        return self._count

    def buffered(self) -> int:
        """Changes buffered for all streams together: bounded by streams x buffer size."""
        return sum(len(s.buffer) for s in chain(self._every_owner, *self._by_owner.values()))

    async def start(self) -> None:
        """Start from the current revision: changes committed from now on are offered.

        A server may start while no read-write database is reachable (replicas restarted during
        a failover): the feed then starts unsynced, and its first round that reaches the
        database takes the revision. No stream can subscribe before that: readiness is off
        while the database is, and `current()` syncs an idle feed before a stream subscribes.
        """
        try:
            self.revision = (await changes.revisions(self.database)).current
            self._synced = True
        except Exception as exc:
            if not is_outage(exc):
                raise
            logger.warning(
                "change feed: the database is unavailable at start (%s); reading when it is back",
                describe(exc),
            )
        if self._listener is not None:
            await self._listener.start()
        self._feeding.start()
        self._compacting.start()

    def close_streams(self) -> None:
        """End every stream with UNAVAILABLE now (the server is stopping); refuse new ones."""
        self._closing = True
        for subscription in list(chain(self._every_owner, *self._by_owner.values())):
            subscription.end(shutting_down())

    async def stop(self) -> None:
        """Close every stream, then stop reading and listening."""
        self.close_streams()
        await self._feeding.stop()
        await self._compacting.stop()
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        if self._listener is not None:
            await self._listener.stop()

    async def current(self) -> None:
        """Bring an idle feed's revision up to date before a stream subscribes.

        With no stream open, the feed's revision moves only when it polls; a stream subscribing
        then would otherwise find up to a poll's worth of older changes in its live buffer.
        """
        if not self._count:
            await self.catch_up()

    def subscribe(self, owner_id: int | None, accepts: Callable[[Change], bool]) -> Subscription:
        """Register a stream: changes after `self.revision` of `owner_id` (None: all) it accepts.

        Raises RESOURCE_EXHAUSTED past WATCH_MAX_STREAMS, UNAVAILABLE while stopping.
        """
        if self._closing:
            raise shutting_down()
        if self._count >= self._max_streams:
            raise ResourceExhausted(
                "TOO_MANY_WATCHERS", "this server serves as many streams as it may; retry later"
            )
        subscription = Subscription(self, owner_id, accepts, self._buffer_events)
        if owner_id is None:
            self._every_owner.add(subscription)
        else:
            self._by_owner.setdefault(owner_id, set()).add(subscription)
        self._count += 1
        self.wake()  # an idle feed skipped reading on its last wake-ups: read for this stream
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a stream (idempotent)."""
        if subscription.slice:
            self.slice_sent(subscription.slice)
            subscription.slice = 0
        if subscription.owner_id is None:
            group = self._every_owner
        else:
            group = self._by_owner.get(subscription.owner_id, set())
        if subscription in group:
            group.discard(subscription)
            subscription.due = math.inf  # its entry in the heap of due times is skipped
            self._count -= 1
            if subscription.owner_id is not None and not group:
                del self._by_owner[subscription.owner_id]

    def wake(self) -> None:
        """Read new changes soon (a commit happened, here or elsewhere)."""
        self._wake.set()

    async def catch_up(self) -> int:
        """Read and offer every change after `self.revision`; return how many were read.

        With no stream open there is nobody to offer them to: only the revision moves.

        One reader at a time (the feed's loop, or a stream about to subscribe to an idle feed),
        so no change is offered twice and the revision only moves forward.
        """
        async with self._reading:
            if not self._count or not self._synced:
                # No stream to offer them to: skip reading (and decoding) the changes, and
                # only move the revision to the store's. A stream subscribing later is live
                # from there, as if each change had been read and offered to nobody.
                current = (await changes.revisions(self.database)).current
                self.revision = max(self.revision, current)
                self._synced = True
                return 0
            read = 0
            woken: dict[Subscription, None] = {}
            while True:
                batch = await changes.page(self.database, self.revision)
                for item in batch:
                    if item.revision != self.revision + 1:
                        self._gap(item.revision)
                    self._offer(item, woken)
                    self.revision = item.revision
                read += len(batch)
                if len(batch) < changes.PAGE_SIZE:
                    break
            await self._wake_all(woken)
            return read

    async def _check_not_behind_store(self) -> None:
        """End every live stream if the store's revision went back below the feed's.

        A failover to a standby that lacked the newest commits (asynchronous replication, or a
        synchronous wait cancelled) takes revisions back: the same numbers would then name
        other changes, which `revision > last` reads would skip. Streams end as for a gap, so
        their clients relist, and the feed starts again from the store's revision.
        """
        current = (await changes.revisions(self.database)).current
        if current >= self.revision:
            return
        logger.warning(
            "change feed: the store's revision went back from %d to %d (a failover lost "
            "commits?); ending every live stream with REVISION_COMPACTED",
            self.revision,
            current,
        )
        async with self._reading:
            for subscription in list(chain(self._every_owner, *self._by_owner.values())):
                subscription.end(compacted(current))
            self.revision = current

    def _gap(self, found: int) -> None:
        """History between the feed's revision and `found` is gone: end every live stream.

        Revisions are dense, so a hole means the changes were compacted while this feed lagged
        (cut off from the database longer than the retention while another server compacted).
        A live stream cannot promise "no gap" past it: each ends with REVISION_COMPACTED, as a
        stream resuming from inside the hole would, so its client relists.
        """
        logger.warning(
            "change feed: revisions %d to %d were compacted while this feed lagged; ending "
            "every live stream with REVISION_COMPACTED",
            self.revision + 1,
            found - 1,
        )
        for subscription in list(chain(self._every_owner, *self._by_owner.values())):
            subscription.end(compacted(found - 1))

    def _offer(self, item: Change, woken: dict[Subscription, None]) -> None:
        """Offer a change to the streams that may see it; note those to wake in `woken`."""
        for subscription in self._every_owner:
            if subscription.offer(item):
                woken[subscription] = None
        for subscription in self._by_owner.get(item.owner_id, ()):
            if subscription.offer(item):
                woken[subscription] = None

    async def _wake_all(self, woken: dict[Subscription, None]) -> None:
        """Wake the streams given changes, WAKE_SLICE at a time, each slice once the last has sent.

        Each stream woken sends on its next steps; waking ten thousand at once would queue ten
        thousand sends ahead of any call that arrives meanwhile, and a write would wait for the
        whole fan-out. A slice at a time, with the next one woken only when the last has
        (nearly) finished sending (or after WAKE_SLICE_WAIT_SECONDS, so that a stalled reader
        holds nobody up), the loop's queue never holds more than about one slice of sends, and
        a call arriving meanwhile waits for at most that. Each stream is woken once however
        many changes this round gave it.
        """
        pending = list(woken)
        for start in range(0, len(pending), WAKE_SLICE):
            if start:
                await self._slice_done()
            self._slice += 1
            self._slice_sending = 0
            for subscription in pending[start : start + WAKE_SLICE]:
                if subscription.wake():
                    subscription.slice = self._slice
                    self._slice_sending += 1

    async def _slice_done(self) -> None:
        """Until the last slice has nearly all sent, or WAKE_SLICE_WAIT_SECONDS have passed."""
        if self._slice_sending <= WAKE_SLICE_STRAGGLERS:
            await asyncio.sleep(0)
            return
        self._slice_drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(WAKE_SLICE_WAIT_SECONDS):
                await self._slice_drained
        except TimeoutError:
            pass
        finally:
            self._slice_drained = None

    def slice_sent(self, number: int) -> None:
        """A stream woken by slice `number` has sent and waits again (or has ended)."""
        if number != self._slice:
            return  # a straggler of an earlier slice
        self._slice_sending -= 1
        drained = self._slice_drained
        if (
            self._slice_sending <= WAKE_SLICE_STRAGGLERS
            and drained is not None
            and not drained.done()
        ):
            drained.set_result(None)

    def wake_at(self, subscription: Subscription, when: float) -> None:
        """Wake `subscription` at monotonic time `when` (for its bookmark or token check).

        One heap and one timer for every stream: an idle stream holds no timer of its own.
        Only the latest time asked for counts; earlier entries are skipped when they come due.
        """
        subscription.due = when
        heapq.heappush(self._due, (when, next(self._due_sequence), subscription))
        if self._due_timer is None or when < self._due_timer_when:
            self._schedule_due(when)

    def _schedule_due(self, when: float) -> None:
        if self._due_timer is not None:
            self._due_timer.cancel()
        loop = asyncio.get_running_loop()
        self._due_timer_when = when
        self._due_timer = loop.call_at(
            loop.time() + max(0.0, when - time.monotonic()), self._wake_due
        )

    def _wake_due(self) -> None:
        self._due_timer = None
        now = time.monotonic()
        due = self._due
        while due and due[0][0] <= now:
            when, _, subscription = heapq.heappop(due)
            if subscription.due == when:
                subscription.wake()
        if due:
            self._schedule_due(due[0][0])

    async def _number_changes(self, *, traced: bool) -> int:
        """Number committed changes (PostgreSQL); a round that numbered some is a trace of its own.

        Only rounds woken by a commit are traced, and only when they numbered something: a
        poll's round, or one that found another server got there first, would be a trace a
        second saying nothing. The span is made once the round is over, timed from its start.
        """
        if not traced or self._tracer is None or not self.database.numbers_changes:
            return await self.database.number_changes()
        started = time.time_ns()
        numbered = await self.database.number_changes()
        if numbered:
            self._tracer.start_span(
                "change feed numbering",
                context=Context(),  # a root: no call is in progress
                start_time=started,
                attributes={
                    "db.system.name": "postgresql",
                    "taskservice.changes": numbered,
                },
            ).end()
        return numbered

    async def _run(self) -> None:
        failing = False
        next_poll = time.monotonic() + POLL_INTERVAL_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_poll - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            polling = time.monotonic() >= next_poll
            if polling:
                next_poll = time.monotonic() + POLL_INTERVAL_SECONDS
            try:
                # Bounded: a primary that went silent mid-round (no reset, no refusal) must not
                # wedge the feed, holding its reading lock while streams wait for nothing.
                async with asyncio.timeout(ROUND_TIMEOUT_SECONDS):
                    # Every server's feeds read them after the NOTIFY this sends.
                    numbered = await self._number_changes(traced=not polling)
                    if polling or self._count:  # idle, the next poll keeps the revision current
                        await self.catch_up()
                    if polling and self._count:
                        await self._check_not_behind_store()
                if numbered:
                    await asyncio.sleep(NUMBERING_GAP_SECONDS)
            except TimeoutError:
                if not failing:
                    logger.warning(
                        "change feed: the database gave no answer within %.0f s; trying again",
                        ROUND_TIMEOUT_SECONDS,
                    )
                failing = True
                continue
            except Exception as exc:  # the next round tries again
                if not failing:
                    log_round_failure(logger, "change feed: cannot read changes", exc)
                failing = True
                continue
            if failing:
                logger.info("change feed: reading changes again")
            failing = False

    def _listener_reset(self) -> None:
        if self._closing:
            return
        connected = self._listener is not None and self._listener.connected
        if connected:
            logger.info("change feed: LISTEN %s connected; catching up", CHANNEL)
        else:
            logger.warning(
                "change feed: LISTEN %s lost; watchers progress by polling every %.1f s",
                CHANNEL,
                POLL_INTERVAL_SECONDS,
            )
        self.wake()  # whatever was notified meanwhile is read from the table

    async def compact(self, now: datetime | None = None) -> int:
        """Forget history older than the retention; return the compacted revision."""
        return await changes.compact(self.database, self._retention, now or self._clock())

    async def _compact_now_and_then(self) -> None:
        interval = min(
            max(self._retention.total_seconds() / 4, MIN_COMPACTION_INTERVAL_SECONDS),
            MAX_COMPACTION_INTERVAL_SECONDS,
        )
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))  # noqa: S311
            try:
                await self.compact()
            except Exception as exc:  # the next round tries again
                log_round_failure(logger, "change log compaction failed", exc)

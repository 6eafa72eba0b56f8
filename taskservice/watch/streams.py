"""One WatchTasks stream: where it starts, what it may see, and how it hands over to the feed.

A stream registers with the feed *before* it reads anything, so every change after the feed's
revision at that moment (`live_from`) reaches its buffer. It then replays the history between
its start revision and `live_from` from the table, page by page, and goes on with the buffer,
skipping anything at or below the last revision it sent: no gap, no duplicate. Revisions are
dense, so a hole in the history can only be compaction, reported as REVISION_COMPACTED.

Every change is matched against the owner scope (by the feed's index) and the filter, before or
after the change, so a task leaving the view is seen leaving it. A regular user's stream also
follows their memberships (`taskservice.watch.access`): it sends a change of a task when the user
was a member of its list at that revision, and the user's own access changes. The caller's
token is checked again every AUTH_RECHECK_SECONDS, so an expired or revoked token ends the stream
within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from taskservice.db.models import TaskPriority
from taskservice.db.outages import DatabaseUnreachable, is_outage
from taskservice.errors import InvalidArgument, OutOfRange, PermissionDenied
from taskservice.services.authorization import Permission, authorize, may_for_every_owner
from taskservice.services.filtering import Filter, matches, parse
from taskservice.services.principal import Principal
from taskservice.services.task_lists import TASK_FILTER_SCHEMA
from taskservice.tracing.spans import add_event
from taskservice.watch import changes
from taskservice.watch.access import ListAccess, is_access
from taskservice.watch.changes import Change, TaskSnapshot
from taskservice.watch.feed import ChangeFeed, Subscription, compacted

logger = logging.getLogger(__name__)

#: Seconds between checks of a stream's access token (expiry, revocation): well within the 5 s
#: the API promises.
AUTH_RECHECK_SECONDS = 2.0
#: Longest a stream rides through a database outage, in seconds. While the database is away
#: (a failover takes a few seconds) the token's revocation cannot be checked, but neither can a
#: change be read to deliver: the stream stays open, sending nothing, rather than ending every
#: watcher at once. Expiry is checked without the database and still ends it. Past this bound
#: the stream ends UNAVAILABLE and its client resumes (with backoff) from its last revision.
OUTAGE_TOLERANCE_SECONDS = 30.0
#: Longest one check of the token may take; a database that does not answer by then is away.
RECHECK_TIMEOUT_SECONDS = 5.0
#: Most changes one response may carry, whatever a client asks (max_changes_per_response).
MAX_CHANGES_PER_RESPONSE = 1000


@dataclass(frozen=True, slots=True)
class Bookmark:
    """No change: every change up to `revision` the stream would send has been sent."""

    revision: int


def record(task: TaskSnapshot) -> dict[str, object]:
    """A task as the filter evaluator reads it, as ListTasks' SQL sees the row.

    Unset values are None (priority 0 is no priority); the top level is parent 0.
    """
    return {
        "status": task.status,
        "priority": None if task.priority == TaskPriority.UNSPECIFIED else task.priority,
        "labels": task.labels,
        "owner_id": task.owner_id,
        "parent_id": task.parent_id or 0,
        "task_list_id": task.task_list_id,
        "assignee_id": task.assignee_id,
        "creator_id": task.creator_id,
        "title": task.title,
        "due_time": task.due_time,
        "create_time": task.create_time,
        "update_time": task.update_time,
        "complete_time": task.complete_time,
    }


def _accepts(
    owner_id: int | None, parsed: Filter, access: ListAccess | None = None
) -> Callable[[Change], bool]:
    """Whether a stream sends a change: its owner's (any for None), matching before or after.

    The owner is checked here even though the feed offers live changes by owner: history is
    read from the table for every owner. With `access` (a regular user's stream), only the
    user's own access changes pass (and are recorded), and changes of tasks of lists the user
    may see.
    """

    def accepts(change: Change) -> bool:
        if is_access(change):
            return access is not None and access.record(change)
        if access is not None and access.loaded and access.sees(change) is None:
            return False
        if owner_id is not None and change.owner_id != owner_id:
            return False
        return parsed.expression is None or any(
            task is not None and matches(parsed, record(task))
            for task in (change.before, change.after)
        )

    return accepts


class Watches:
    """Opens WatchTasks streams over the process's change feed."""

    def __init__(self, feed: ChangeFeed, bookmark_seconds: float) -> None:
        self._feed = feed
        self._bookmark_seconds = bookmark_seconds

    async def watch(
        self,
        caller: Principal,
        start_revision: int,
        filter_text: str,
        owner_id: int | None,
        recheck: Callable[[], Awaitable[Principal]],
        max_changes: int = 1,
    ) -> AsyncIterator[list[Change] | Bookmark]:
        """The stream's changes and bookmarks, until the caller stops or an error ends it.

        Changes come in lists of at most `max_changes` (0 counts as 1), in revision order: a
        list holds what was waiting when the stream sent, so a stream that keeps up sends lists
        of one, and one that is behind catches up in fewer, larger responses.
        """
        access = None
        watched = owner_id
        if not may_for_every_owner(caller, Permission.TASKS_READ):
            access = ListAccess(caller.user_id)
            if owner_id is None:
                watched = caller.user_id
        _authorize_watch(caller, watched)

        async def recheck_access() -> Principal:
            # The caller's rights may shrink while the stream runs (an API key's user demoted
            # keeps a valid key): the stream ends as soon as it could not start any more.
            principal = await recheck()
            _authorize_watch(principal, watched)
            return principal

        problems = []
        if start_revision < 0:
            problems.append(InvalidArgument.field("start_revision", "must not be negative"))
        if max_changes < 0:
            problems.append(
                InvalidArgument.field("max_changes_per_response", "must not be negative")
            )
        try:
            parsed = parse(filter_text, TASK_FILTER_SCHEMA, "filter")
        except InvalidArgument as error:
            problems.append(error)
        if problems:
            raise InvalidArgument([v for problem in problems for v in problem.violations])
        await self._feed.current()
        # A member's stream reads every owner's changes: its lists may be anyone's.
        subscription = self._feed.subscribe(
            owner_id if access is None else None, _accepts(owner_id, parsed, access)
        )
        try:
            batches = self._stream(
                subscription,
                start_revision,
                recheck_access,
                access,
                min(max(max_changes, 1), MAX_CHANGES_PER_RESPONSE),
            )
            async with contextlib.aclosing(batches):
                async for item in batches:
                    yield item
        finally:
            self._feed.unsubscribe(subscription)

    async def _stream(
        self,
        subscription: Subscription,
        start_revision: int,
        recheck: Callable[[], Awaitable[Principal]],
        access: ListAccess | None,
        max_changes: int,
    ) -> AsyncIterator[list[Change] | Bookmark]:
        known = await changes.revisions(self._feed.database)
        resuming = start_revision != 0
        if start_revision == 0:
            start_revision = known.current
        elif start_revision > known.current:
            raise OutOfRange(
                "REVISION_NOT_YET",
                f"start_revision is beyond the current revision {known.current}",
                {"current_revision": str(known.current)},
            )
        if start_revision < known.compacted:
            raise compacted(known.compacted)
        if resuming:
            add_event("resume", {"taskservice.start_revision": start_revision})
        if access is not None:
            await access.load(self._feed.database, start_revision)
        position = start_revision
        checked = time.monotonic()  # when the token was last confirmed (at the stream's start)
        next_check = checked + AUTH_RECHECK_SECONDS
        while position < subscription.live_from:  # history, then the live buffer
            batch = await changes.page(self._feed.database, position, subscription.live_from)
            if not batch or batch[0].revision != position + 1:
                raise compacted((await changes.revisions(self._feed.database)).compacted)
            ready = []
            for item in batch:
                if subscription.accepts(item) and (sent := _as_sent(item, access)) is not None:
                    ready.append(sent)
                    if len(ready) == max_changes:
                        yield ready
                        ready = []
                position = item.revision
            if ready:
                yield ready
            if time.monotonic() >= next_check:
                checked = await _recheck(recheck, checked)
                next_check = time.monotonic() + AUTH_RECHECK_SECONDS
        if not subscription.buffer:  # nothing after live_from is waiting: the feed's revision
            position = max(position, self._feed.revision)  # is as far as this stream has got
        add_event("bookmark", {"taskservice.revision": position})
        yield Bookmark(position)
        next_bookmark = time.monotonic() + self._bookmark_seconds
        self._feed.wake_at(subscription, min(next_check, next_bookmark))
        while True:
            ready = []
            for item in subscription.take():
                if item.revision > position:
                    if (sent := _as_sent(item, access)) is not None:
                        ready.append(sent)
                        if len(ready) == max_changes:
                            yield ready
                            ready = []
                    position = item.revision
            if ready:
                yield ready
            now = time.monotonic()
            if now < min(next_check, next_bookmark):
                await subscription.wait()  # a change, the stream's end, or its due time
                continue
            if now >= next_check:
                checked = await _recheck(recheck, checked)
                next_check = time.monotonic() + AUTH_RECHECK_SECONDS
            if now >= next_bookmark:
                if not subscription.buffer:  # everything up to the feed's revision was sent
                    position = max(position, self._feed.revision)
                    add_event("bookmark", {"taskservice.revision": position})
                    yield Bookmark(position)
                next_bookmark = time.monotonic() + self._bookmark_seconds
            self._feed.wake_at(subscription, min(next_check, next_bookmark))


def _as_sent(change: Change, access: ListAccess | None) -> Change | None:
    """What the stream sends for an accepted change, decided again as it is sent.

    For a member's stream the lists may have changed since the change was buffered: a list the
    user lost since is not sent any more (revocation is immediate), and a task that left the
    user's lists goes as TASK_CHANGE_TYPE_HIDDEN.
    """
    if access is None or is_access(change):
        return change
    return access.sees(change)


async def _recheck(recheck: Callable[[], Awaitable[Principal]], checked: float) -> float:
    """Check the stream's token again; return when it was last confirmed.

    A database outage shorter than OUTAGE_TOLERANCE_SECONDS since the last confirmation does
    not end the stream (see the constant); any other failure (expired, revoked, an outage that
    lasts) ends it as it would any call.
    """
    try:
        async with asyncio.timeout(RECHECK_TIMEOUT_SECONDS):  # a silent database: an outage
            await recheck()
    except Exception as exc:
        silent = isinstance(exc, TimeoutError) and not is_outage(exc)
        if (silent or is_outage(exc)) and time.monotonic() - checked < OUTAGE_TOLERANCE_SECONDS:
            logger.info(
                "watch stream: the database is unavailable; the stream stays open for up to "
                "%.0f s since its token was last checked",
                OUTAGE_TOLERANCE_SECONDS,
            )
            return checked
        if silent:
            raise DatabaseUnreachable("the database gave no answer to the token check") from exc
        raise
    return time.monotonic()


def _authorize_watch(caller: Principal, owner_id: int | None) -> None:
    """Refuse a stream of `owner_id`'s tasks (None: every owner's) the caller may not read."""
    if owner_id is None:
        authorize(caller, Permission.TASKS_READ_ALL, otherwise=_owner_not_allowed)
    else:
        authorize(caller, Permission.TASKS_READ, owner_id, otherwise=_owner_not_allowed)


def _owner_not_allowed(metadata: dict[str, str]) -> PermissionDenied:
    """The refusal a regular user watching another owner's tasks has always had."""
    return PermissionDenied("OWNER_NOT_ALLOWED", "you may only watch your own tasks", metadata)

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
credential is checked again every AUTH_RECHECK_SECONDS, once for all the streams presenting it
(`taskservice.watch.credentials`), so an expired or revoked token ends the stream within seconds
while an idle stream wakes only for its bookmarks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from taskservice.db.models import TaskPriority
from taskservice.errors import InvalidArgument, OutOfRange
from taskservice.services.authorization import Permission, may_for_every_owner
from taskservice.services.filtering import Filter, matches, parse
from taskservice.services.principal import Principal
from taskservice.services.task_lists import TASK_FILTER_SCHEMA
from taskservice.tracing.spans import add_event
from taskservice.watch import changes
from taskservice.watch.access import ListAccess, is_access
from taskservice.watch.changes import Change, TaskSnapshot
from taskservice.watch.credentials import Check, CredentialChecks, authorize_watch
from taskservice.watch.feed import ChangeFeed, Subscription, compacted

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

    def __init__(
        self, feed: ChangeFeed, bookmark_seconds: float, credentials: CredentialChecks
    ) -> None:
        self._feed = feed
        self._bookmark_seconds = bookmark_seconds
        self._credentials = credentials

    async def watch(
        self,
        caller: Principal,
        start_revision: int,
        filter_text: str,
        owner_id: int | None,
        recheck: Check,
        max_changes: int = 1,
    ) -> AsyncIterator[list[Change] | Bookmark]:
        """The stream's changes and bookmarks, until the caller stops or an error ends it.

        Changes come in lists of at most `max_changes` (0 counts as 1), in revision order: a
        list holds what was waiting when the stream sent, so a stream that keeps up sends lists
        of one, and one that is behind catches up in fewer, larger responses.

        `recheck` authenticates the caller's credential again: the stream is handed to the
        credential checks, which end it once the credential fails or the caller's rights shrink
        (an API key's user demoted keeps a valid key) so that it could not start any more.
        """
        access = None
        watched = owner_id
        if not may_for_every_owner(caller, Permission.TASKS_READ):
            access = ListAccess(caller.user_id)
            if owner_id is None:
                watched = caller.user_id
        authorize_watch(caller, watched)
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
        self._credentials.add(recheck, subscription, watched)
        try:
            batches = self._stream(
                subscription,
                start_revision,
                access,
                min(max(max_changes, 1), MAX_CHANGES_PER_RESPONSE),
            )
            async with contextlib.aclosing(batches):
                async for item in batches:
                    yield item
        finally:
            self._credentials.discard(recheck, subscription)
            self._feed.unsubscribe(subscription)

    async def _stream(
        self,
        subscription: Subscription,
        start_revision: int,
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
            if subscription.ended is not None:  # its credential failed meanwhile
                raise subscription.ended
        if not subscription.buffer:  # nothing after live_from is waiting: the feed's revision
            position = max(position, self._feed.revision)  # is as far as this stream has got
        add_event("bookmark", {"taskservice.revision": position})
        yield Bookmark(position)
        next_bookmark = time.monotonic() + self._bookmark_seconds
        self._feed.wake_at(subscription, next_bookmark)
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
            if time.monotonic() < next_bookmark:
                await subscription.wait()  # a change, the stream's end, or its bookmark's time
                continue
            if not subscription.buffer:  # everything up to the feed's revision was sent
                position = max(position, self._feed.revision)
                add_event("bookmark", {"taskservice.revision": position})
                yield Bookmark(position)
            next_bookmark = time.monotonic() + self._bookmark_seconds
            self._feed.wake_at(subscription, next_bookmark)


def _as_sent(change: Change, access: ListAccess | None) -> Change | None:
    """What the stream sends for an accepted change, decided again as it is sent.

    For a member's stream the lists may have changed since the change was buffered: a list the
    user lost since is not sent any more (revocation is immediate), and a task that left the
    user's lists goes as TASK_CHANGE_TYPE_HIDDEN.
    """
    if access is None or is_access(change):
        return change
    return access.sees(change)

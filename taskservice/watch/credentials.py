"""The credentials of open WatchTasks streams, checked again once per credential, not per stream.

A stream outlives the check of its credential made when it started: an access token expires or
is revoked, an API key is deleted, a user is deactivated or loses a role. Every
AUTH_RECHECK_SECONDS, one pass checks each distinct credential of the open streams once (an
access token, an API key, the account of a client certificate), however many streams present
it, and ends only the streams whose credential failed, or whose caller may no longer watch what
they watch. A client's streams usually share one token, so ten thousand idle watchers cost a
handful of checks per pass, and an idle stream keeps no timer of its own for its credential.

A database outage does not end streams at once: while the database is away a revocation cannot
be seen, but neither can a change be read to deliver, so the streams stay open, sending nothing,
for up to OUTAGE_TOLERANCE_SECONDS since their credential was last confirmed. Expiry is checked
without the database and still ends them. Past that bound they end UNAVAILABLE, and their
clients resume (with backoff) from their last revision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

from taskservice.background import Background
from taskservice.calls.errors import database_unavailable
from taskservice.db.outages import describe, is_outage
from taskservice.errors import DomainError, InvalidArgument, PermissionDenied
from taskservice.services.authorization import Permission, authorize
from taskservice.services.principal import Principal
from taskservice.watch.feed import Subscription

logger = logging.getLogger(__name__)

#: Seconds between checks of each credential of the open streams (expiry, revocation, rights):
#: well within the 5 s the API promises.
AUTH_RECHECK_SECONDS = 2.0
#: Longest a stream rides through a database outage, in seconds, since its credential was last
#: confirmed (see the module's docstring).
OUTAGE_TOLERANCE_SECONDS = 30.0
#: Longest one check of a credential may take; a database that does not answer by then is away.
RECHECK_TIMEOUT_SECONDS = 5.0

#: Authenticates a credential again: the caller now, or Unauthenticated.
Check = Callable[[], Awaitable[Principal]]


class _Credential:
    """One credential of the open streams: how to check it, and the streams presenting it."""

    __slots__ = ("check", "confirmed", "joined", "principal", "streams")

    def __init__(self, check: Check) -> None:
        self.check = check
        #: The streams presenting it, each with the owner it watches (None: every owner).
        self.streams: dict[Subscription, int | None] = {}
        #: When it was last confirmed (monotonic seconds).
        self.confirmed = time.monotonic()
        #: The caller its last check found; None: every stream's rights are checked next time.
        self.principal: Principal | None = None
        #: Streams added since the last check: their rights are checked at the next one even
        #: if the caller is the one the last check found (they started under their own).
        self.joined: list[Subscription] = []


class CredentialChecks:
    """Checks the credential of every open stream once per AUTH_RECHECK_SECONDS, in one pass.

    Started and stopped with the server. `checks_total`, `passes_total` (complete passes),
    `checks_last_pass` and `streams_ended_total` tell what it did (the first and the last are
    exported as metrics).
    """

    def __init__(self, interval: float = AUTH_RECHECK_SECONDS) -> None:
        self._interval = interval
        self._credentials: dict[Hashable, _Credential] = {}
        self._checking = Background("stream-credential-checks", self._run)
        #: Credential checks made since start (one per distinct credential per pass).
        self.checks_total = 0
        #: Passes made since start.
        self.passes_total = 0
        #: Credentials the last complete pass checked.
        self.checks_last_pass = 0
        #: Streams the checks ended: a credential failed, rights shrank, or an outage lasted.
        self.streams_ended_total = 0

    @property
    def credentials(self) -> int:
        """Distinct credentials of the open streams."""
        return len(self._credentials)

    def start(self) -> None:
        """Check every AUTH_RECHECK_SECONDS from now on."""
        self._checking.start()

    async def stop(self) -> None:
        """Stop checking (the streams are ended by the feed as the server stops)."""
        await self._checking.stop()

    def add(self, check: Check, subscription: Subscription, owner_id: int | None) -> None:
        """Check `subscription`'s credential from now on; it watches `owner_id` (None: all).

        `check` is the stream's `recheck()`: streams whose checks share a `key` (the same token,
        API key or certificate account) share one check. The stream has just been authenticated,
        so its credential counts as confirmed now.
        """
        key = _key(check)
        credential = self._credentials.get(key)
        if credential is None:
            credential = self._credentials[key] = _Credential(check)
        else:
            credential.confirmed = time.monotonic()
            credential.joined.append(subscription)
        credential.streams[subscription] = owner_id

    def discard(self, check: Check, subscription: Subscription) -> None:
        """Stop checking for `subscription` (idempotent)."""
        key = _key(check)
        credential = self._credentials.get(key)
        if credential is not None:
            credential.streams.pop(subscription, None)
            if not credential.streams:
                del self._credentials[key]

    async def _run(self) -> None:
        next_pass = time.monotonic() + self._interval
        while True:
            await asyncio.sleep(max(0.0, next_pass - time.monotonic()))
            next_pass = time.monotonic() + self._interval
            try:
                await self.check_all()
            except Exception:  # a bug: the next pass tries again
                logger.exception("stream credential checks: a pass failed")

    async def check_all(self) -> None:
        """One pass: check each credential once, ending the streams it no longer allows.

        Checks run one after another (one database connection at most, however many
        credentials). Once one finds the database away, the rest of the pass only checks what
        needs no database (expiry): each is given no time to wait for it, so a silent database
        costs a pass RECHECK_TIMEOUT_SECONDS, not that much per credential. The longest
        unconfirmed go first, so a pass cut short reaches the others first next time.
        """
        away = False
        checked = tolerated = ended = 0
        for key, credential in sorted(self._credentials.items(), key=lambda c: c[1].confirmed):
            if self._credentials.get(key) is not credential:
                continue  # its last stream left during the pass
            self.checks_total += 1
            checked += 1
            joined = len(credential.joined)  # those joining during the check wait for the next
            try:
                async with asyncio.timeout(0 if away else RECHECK_TIMEOUT_SECONDS):
                    principal = await credential.check()
            except Exception as exc:
                silent = isinstance(exc, TimeoutError) and not is_outage(exc)
                if not (silent or is_outage(exc)):
                    ended += _end(credential, exc)
                    continue
                if not away:
                    reason = "gave no answer" if silent else f"is unavailable ({describe(exc)})"
                    logger.info("stream credential checks: the database %s", reason)
                away = True
                if time.monotonic() - credential.confirmed < OUTAGE_TOLERANCE_SECONDS:
                    tolerated += 1
                else:
                    ended += _end(credential, None)
                continue
            credential.confirmed = time.monotonic()
            if principal != credential.principal:  # every stream's rights, once per change
                credential.principal = principal
                to_authorize = list(credential.streams.items())
            else:  # only the newcomers'
                to_authorize = [
                    (newcomer, credential.streams[newcomer])
                    for newcomer in credential.joined[:joined]
                    if newcomer in credential.streams
                ]
            del credential.joined[:joined]
            for subscription, owner_id in to_authorize:
                try:
                    authorize_watch(principal, owner_id)
                except PermissionDenied as denied:
                    subscription.end(denied)
                    ended += 1
        self.passes_total += 1
        self.streams_ended_total += ended
        self.checks_last_pass = checked
        if tolerated:
            logger.info(
                "watch streams: the database is unavailable; the stream stays open for up to "
                "%.0f s since its token was last checked (%d credentials unconfirmed)",
                OUTAGE_TOLERANCE_SECONDS,
                tolerated,
            )
        if ended:
            logger.info("stream credential checks: %d streams ended", ended)


def _key(check: Check) -> Hashable:
    """What streams sharing a credential share: its `key`, or the check itself if it has none."""
    return getattr(check, "key", check)


def _end(credential: _Credential, error: Exception | None) -> int:
    """End every stream of a credential that failed (None: the database stayed away too long).

    Each stream gets an error of its own: one exception raised in many streams would gather
    every stream's traceback.
    """
    streams = list(credential.streams)
    if error is None:
        logger.warning(
            "watch streams: the database stayed unavailable over %.0f s; ending %d streams "
            "UNAVAILABLE",
            OUTAGE_TOLERANCE_SECONDS,
            len(streams),
        )
    elif not isinstance(error, DomainError):
        logger.error("watch streams: checking a credential failed", exc_info=error)
    for subscription in streams:
        subscription.end(_copy(error))
    return len(streams)


def _copy(error: Exception | None) -> Exception:
    """A fresh error like `error` for one stream (None: the database is unavailable)."""
    if error is None:
        return database_unavailable()
    if isinstance(error, DomainError) and not isinstance(error, InvalidArgument):
        return type(error)(error.reason, error.message, dict(error.metadata))
    failure = RuntimeError("checking the stream's credential failed")
    failure.__cause__ = error
    return failure


def authorize_watch(caller: Principal, owner_id: int | None) -> None:
    """Refuse a stream of `owner_id`'s tasks (None: every owner's) the caller may not read."""
    if owner_id is None:
        authorize(caller, Permission.TASKS_READ_ALL, otherwise=_owner_not_allowed)
    else:
        authorize(caller, Permission.TASKS_READ, owner_id, otherwise=_owner_not_allowed)


def _owner_not_allowed(metadata: dict[str, str]) -> PermissionDenied:
    """The refusal a regular user watching another owner's tasks has always had."""
    return PermissionDenied("OWNER_NOT_ALLOWED", "you may only watch your own tasks", metadata)

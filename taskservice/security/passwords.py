"""bcrypt password hashing, run in worker threads so the event loop keeps serving.

bcrypt releases the GIL while it works, so a small dedicated pool hashes in parallel on every core
without starving the default executor. Its threads run at the lowest CPU priority Linux has
(SCHED_IDLE; else nice +HASHING_NICENESS): when logins and other calls compete for the cores, the
event loop wins, so a login storm slows logins rather than every other call. Under sustained full
CPU load logins get only what is left; such a replica needs more CPU or company anyway.

bcrypt only reads the first 72 bytes of a password: longer ones are refused when set (see
`taskservice.services.validation`) and simply fail to match when checked, never truncated, and never
the ValueError bcrypt 5 raises for them. The same goes for passwords containing NUL: bcrypt's key
is the password and a NUL repeated to 72 bytes, so abc NUL abc NUL abc and plain abc would match.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import bcrypt

from taskservice.tracing.spans import child_span

_T = TypeVar("_T")

#: How much lower than the event loop's the hashing threads' CPU priority is.
HASHING_NICENESS = 10
#: bcrypt's input limit, in bytes.
BCRYPT_MAX_PASSWORD_BYTES = 72
#: Where Linux mounts the cgroup tree; in a container (cgroup namespace) it is the container's.
CGROUP_ROOT = Path("/sys/fs/cgroup")

logger = logging.getLogger(__name__)


class PasswordHasher:
    """Hashes and verifies passwords at a fixed bcrypt cost on a private thread pool."""

    def __init__(self, rounds: int, threads: int | None = None) -> None:
        self.rounds = rounds
        #: bcrypt computations started: what throttling must not spend (observable in tests).
        self.computations = 0
        self._executor = ThreadPoolExecutor(
            max_workers=threads or available_cpus(),
            thread_name_prefix="bcrypt",
            initializer=_lower_priority,
        )
        # A real hash at the same cost: checking an unknown email against it takes as long as
        # checking a real user's password, so timing does not tell which emails exist.
        self._dummy_hash = bcrypt.hashpw(b"dummy password", bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> str:
        """Hash a password already checked to fit bcrypt's 72-byte limit and to hold no NUL."""
        encoded = password.encode()
        if len(encoded) > BCRYPT_MAX_PASSWORD_BYTES:
            raise ValueError("password longer than 72 bytes")
        if b"\x00" in encoded:
            raise ValueError("password contains NUL")
        salt = bcrypt.gensalt(self.rounds)
        digest = await self._run("bcrypt hash", bcrypt.hashpw, encoded, salt)
        return digest.decode()

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Check a password in constant time; a None hash (unknown user) checks a dummy instead.

        Always does one full bcrypt computation, whatever the input, so every failure costs the
        same as a success. A password that could never have been set (over 72 bytes, or holding
        a NUL) is refused before bcrypt sees it; bcrypt still runs, on a harmless stand-in, only
        so that the refusal takes as long as any other.
        """
        encoded = password.encode()
        refused = len(encoded) > BCRYPT_MAX_PASSWORD_BYTES or b"\x00" in encoded
        target = self._dummy_hash if password_hash is None else password_hash.encode()
        candidate = (
            encoded.replace(b"\x00", b"")[:BCRYPT_MAX_PASSWORD_BYTES] if refused else encoded
        )
        try:
            matches = await self._run("bcrypt check", bcrypt.checkpw, candidate, target)
        except ValueError:
            # A stored hash bcrypt cannot read is corrupt data, not a wrong password: the
            # operator must hear of it (the user can never log in). The check still fails, and
            # still costs one full computation, like any other failure.
            logger.error("a stored password hash is not a valid bcrypt hash; the check fails")
            await self._run("bcrypt check", bcrypt.checkpw, candidate, self._dummy_hash)
            return False
        return matches and password_hash is not None and not refused

    async def _run(self, span: str, function: Callable[..., _T], *args: object) -> _T:
        """Run one bcrypt computation on the hashing threads, in a span named `span` if traced.

        The span (its time includes any wait for a free thread) carries the cost factor only.
        """
        self.computations += 1
        with child_span(span, {"taskservice.bcrypt.rounds": self.rounds}):
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def close(self) -> None:
        """Stop the worker threads once pending hashes are done."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may actually use: what sizes the hashing pool.

    `os.cpu_count()` counts the machine's CPUs, so a process pinned to one core (taskset,
    cpusets) or a container given one CPU's worth of quota on a 64-core host would start 64
    threads contending for one CPU. So: the CPUs the process may run on (`os.process_cpu_count`
    on Python 3.13+, else the affinity mask), capped by the cgroup's CPU quota rounded up, and at
    least 1.
    """
    process_cpu_count: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if process_cpu_count is not None:
        count = process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count or quota, quota)
    return max(1, count or 1)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup's CPU quota in whole CPUs (rounded up), or None when it sets none.

    cgroup v2 writes it as `<quota> <period>` (or `max <period>`) in `cpu.max`; v1 as
    `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us` under the `cpu` controller's mount.
    Unreadable or malformed files count as no quota: a wrong guess must not stop the server.
    """
    candidates = [
        (cgroup_root / "cpu.max", None),
        *(
            (cgroup_root / mount / "cpu.cfs_quota_us", cgroup_root / mount / "cpu.cfs_period_us")
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
        ),
    ]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota_text, period_text = quota_file.read_text().split()
            else:
                quota_text, period_text = quota_file.read_text(), period_file.read_text()
            if quota_text.strip() in {"max", "-1"}:
                return None
            quota, period = int(quota_text), int(period_text)
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    return None


def _lower_priority() -> None:
    """Lower the calling thread's CPU priority (on Linux, scheduling is per thread).

    SCHED_IDLE kept GetTask's p99 under a login storm lower than nice +10 did, in every one of
    three paired `make bench` runs (docs/benchmarks.md).
    """
    thread = threading.get_native_id()
    try:
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        # Not Linux, or not permitted: a lower niceness, or failing that normal priority.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, thread, HASHING_NICENESS)

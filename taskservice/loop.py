"""The event loop the server runs on: uvloop's where it is installed, asyncio's own elsewhere.

grpc.aio, asyncpg and hypercorn all run on uvloop, whose transports, timers and callbacks are C.
By paired runs on a 2-vCPU machine it cut server CPU per call by 10 to 20% on CreateTask and list
pages, where asyncio's selector loop and socket transports took a sixth of the event loop thread
(docs/benchmarks.md). uvloop does not build on Windows; there, and wherever it is
missing, asyncio's loop serves the same code. The test suite runs on the loop this module gives
(tests/conftest.py), so what the tests show is what `taskservice serve` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The server's loop factory: uvloop's `new_event_loop` if it imports, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on the loop `loop_factory` gives."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

"""Background work: started once, stopped by cancelling and awaiting, twice harmlessly."""

from __future__ import annotations

import asyncio

from taskservice.background import Background


async def test_background_work_runs_once_until_stopped_and_a_second_stop_does_nothing() -> None:
    started = 0
    cancelled = asyncio.Event()

    async def work() -> None:
        nonlocal started
        started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    background = Background("work", work)
    assert not background.running
    background.start()
    background.start()  # already running: not a second task
    await asyncio.sleep(0)
    assert background.running
    assert [t.get_name() for t in asyncio.all_tasks()].count("work") == 1
    await background.stop()
    assert cancelled.is_set()
    assert started == 1
    assert not background.running
    assert "work" not in [t.get_name() for t in asyncio.all_tasks()]
    await background.stop()

"""WatchTasks batching (`max_changes_per_response`) and a stalled reader among many streams.

A client that asks for batches gets the same changes, in the same order, with the same
revisions, as a client built before batching existed, which reads only `revision` and
`change`: on native gRPC and on gRPC-Web. One reader that stops reading costs the others
nothing: they receive every change while it is cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from taskservice.config import Settings
from taskservice.server import Application, build_server
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs, stubs_for
from tests.helpers import Account, fails, register
from tests.http_client import auth_headers, connect_json, grpc_web_stream
from tests.test_watch import create, current_revision, patch, watch, watch_settings
from tests.watching import DEADLINE, ended_with, reached, read_until

TASKS = "/taskservice.v1.TaskService"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return watch_settings(database_url)


@pytest.fixture
async def alice(stubs: Stubs) -> Account:
    return await register(stubs)


def as_sent_one_by_one(responses: list[pb.WatchTasksResponse]) -> list[tuple[int, bytes]]:
    """What a client reading only `revision` and `change` sees: (revision, change) of each."""
    assert not any(r.events for r in responses), "events only for a client that asked"
    return [(r.revision, r.change.SerializeToString()) for r in responses if r.HasField("change")]


def as_sent_in_batches(
    responses: list[pb.WatchTasksResponse], most: int
) -> list[tuple[int, bytes]]:
    """The same from a batching stream's events, checking each response's shape on the way."""
    seen = []
    for response in responses:
        assert not response.HasField("change")
        assert not response.HasField("access_change")
        if response.events:
            assert len(response.events) <= most
            assert response.revision == response.events[-1].revision
        seen += [(e.revision, e.change.SerializeToString()) for e in response.events]
    return seen


async def test_a_batching_stream_sees_exactly_what_a_one_change_stream_sees(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    start = await current_revision(app, stubs, alice)
    first = await create(stubs, alice, "first")
    for number in range(11):
        await create(stubs, alice, f"task {number}")
    await patch(stubs, alice, first.id, title="first, renamed")
    history_end = await current_revision(app, stubs, alice)
    assert history_end == start + 13

    one_by_one = watch(stubs, alice, start)
    batching = watch(stubs, alice, start, max_changes_per_response=5)
    old = await read_until(one_by_one, reached(history_end))
    new = await read_until(batching, reached(history_end))
    replayed = as_sent_one_by_one(old)
    assert [revision for revision, _ in replayed] == list(range(start + 1, history_end + 1))
    assert as_sent_in_batches(new, 5) == replayed
    assert any(len(r.events) > 1 for r in new), "history is replayed several changes a response"

    # Live: a burst of writes while both streams are open.
    await asyncio.gather(*(create(stubs, alice, f"burst {n}") for n in range(8)))
    live_end = await current_revision(app, stubs, alice)
    old += await read_until(one_by_one, reached(live_end))
    new += await read_until(batching, reached(live_end))
    sent = as_sent_one_by_one(old)
    assert [revision for revision, _ in sent] == list(range(start + 1, live_end + 1)), (
        "every change exactly once, in order"
    )
    assert as_sent_in_batches(new, 5) == sent
    one_by_one.cancel()
    batching.cancel()


async def test_a_batching_stream_resumes_from_a_batchs_revision_without_gap_or_repeat(
    app: Application, stubs: Stubs, alice: Account
) -> None:
    start = await current_revision(app, stubs, alice)
    for number in range(7):
        await create(stubs, alice, f"task {number}")
    end = await current_revision(app, stubs, alice)
    stream = watch(stubs, alice, start, max_changes_per_response=3)
    first = await read_until(stream, lambda r: any(x.events for x in r))
    stream.cancel()
    resumed_from = first[-1].revision
    assert start < resumed_from < end
    rest = await read_until(
        watch(stubs, alice, resumed_from, max_changes_per_response=3), reached(end)
    )
    revisions = [e.revision for r in first + rest for e in r.events]
    assert revisions == list(range(start + 1, end + 1))


async def test_a_negative_max_changes_per_response_is_invalid(stubs: Stubs, alice: Account) -> None:
    failure = await fails(
        watch(stubs, alice, max_changes_per_response=-1).read(),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "max_changes_per_response" in failure.fields


async def test_batching_over_grpc_web_sends_events(app: Application, stubs: Stubs) -> None:
    account = await register(stubs)
    start = await current_revision(app, stubs, account)
    for number in range(4):
        await create(stubs, account, f"task {number}")
    end = await current_revision(app, stubs, account)
    request = pb.WatchTasksRequest(start_revision=start, max_changes_per_response=10)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http,
        grpc_web_stream(
            http, f"{TASKS}/WatchTasks", request, **auth_headers(account.token)
        ) as stream,
    ):
        events: list[pb.WatchTasksEvent] = []
        async with asyncio.timeout(DEADLINE):
            while not events or events[-1].revision < end:
                raw = await stream.next_message()
                assert raw is not None, stream.trailers
                response = pb.WatchTasksResponse.FromString(raw)
                assert not response.HasField("change")
                events += response.events
        created = await connect_json(
            http, f"{TASKS}/CreateTask", {"task": {"title": "live"}}, **auth_headers(account.token)
        )
        assert created.status_code == 200, created.text
        async with asyncio.timeout(DEADLINE):
            while events[-1].change.task.title != "live":
                raw = await stream.next_message()
                assert raw is not None, stream.trailers
                events += pb.WatchTasksResponse.FromString(raw).events
    assert [e.revision for e in events] == list(range(start + 1, end + 2))
    assert [e.change.task.title for e in events] == [f"task {n}" for n in range(4)] + ["live"]


#: Streams that keep reading while one reader stalls (spread over channels of at most 100).
READERS = 200


@pytest.fixture
async def stall_app(database_url: str) -> AsyncIterator[Application]:
    """A server with a small buffer per stream, so a stalled reader is cut off quickly."""
    application = await build_server(
        watch_settings(database_url, watch_buffer_events=8, max_concurrent_rpcs=READERS + 50)
    )
    await application.start()
    yield application
    await application.stop(grace=None)


async def test_a_stalled_reader_among_many_delays_no_other_reader(
    stall_app: Application,
) -> None:
    """One stream stops reading; 200 others get every change while it is cut off.

    Each change is large, so the stalled stream's flow-control window fills within a few of
    them: its sends then wait on the client, and its buffer fills and it ends
    RESOURCE_EXHAUSTED (WATCHER_TOO_SLOW), as documented. The others are read throughout;
    each change must reach every one of them, in order, while the stalled one is stuck.
    """
    feed = stall_app.feed
    assert feed is not None
    target = f"127.0.0.1:{stall_app.port}"
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(3)]
    # The stalled reader's own connection, its flow-control window kept at its initial 64 KiB
    # (no BDP probing, which would grow it to megabytes).
    stalled_channel = grpc.aio.insecure_channel(
        target, options=[*options, ("grpc.http2.bdp_probe", 0)]
    )
    try:
        async with stubs_for(stall_app) as stubs:
            alice = await register(stubs)
            start = await current_revision(stall_app, stubs, alice)
            stalled = Stubs.over(stalled_channel).tasks.WatchTasks(
                pb.WatchTasksRequest(start_revision=start), metadata=alice.metadata
            )
            await read_until(stalled, lambda r: len(r) == 1)
            # The readers watch the small changes only: the large ones that fill the stalled
            # stream's window would cost this test's own event loop (client and server) more
            # than the point needs. The feed offers every change to every stream either way.
            readers = [
                Stubs.over(channels[n % len(channels)]).tasks.WatchTasks(
                    pb.WatchTasksRequest(start_revision=start, filter='title = "small"'),
                    metadata=alice.metadata,
                )
                for n in range(READERS)
            ]
            received: list[list[int]] = [[] for _ in readers]

            async def read(number: int) -> None:
                async for response in readers[number]:
                    if response.HasField("change"):
                        received[number].append(response.revision)

            reading = [asyncio.ensure_future(read(n)) for n in range(READERS)]
            big = "x" * 10_000  # fills the stalled stream's window in a few changes
            small: list[int] = []  # the revisions of the small changes
            async with asyncio.timeout(120):
                while feed.too_slow_total == 0 or len(small) < 10:
                    await create(stubs, alice, "large", description=big)
                    await create(stubs, alice, "small")
                    small.append(await current_revision(stall_app, stubs, alice))
                    # Every reader has this change before the next write: none waits on the
                    # stalled stream, whose sends are stuck on its full window.
                    async with asyncio.timeout(DEADLINE):
                        while any(not r or r[-1] < small[-1] for r in received):  # noqa: ASYNC110
                            await asyncio.sleep(0.01)
            assert feed.too_slow_total == 1, "only the stalled reader was cut off"
            for revisions in received:
                assert revisions == small
            _, error = await ended_with(stalled)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for task in reading:
                task.cancel()
    finally:
        for channel in [*channels, stalled_channel]:
            await channel.close()

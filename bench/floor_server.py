"""The floor: a bare grpc.aio server on uvloop whose one method reads one task row with asyncpg.

Each call takes a connection from a plain `asyncio.Queue`, runs one `fetchrow` of the same task
row GetTask reads (`SELECT * FROM tasks WHERE id = $1`, prepared once by asyncpg's statement
cache), puts the connection back, and returns the row's title. No protobuf, interceptors,
authentication, logging or metrics: the least CPU a unary call that reads the database once can
cost with grpc.aio and asyncpg. `make bench` reports each scenario's server CPU per call as a
multiple of this one, measured in the same run. `Calls` reports how many reads were served, so
the harness can confirm every call succeeded (h2load sees HTTP statuses, not grpc-status).
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg
import grpc

from bench.echo_server import serve_methods
from taskservice.loop import run

SERVICE = "bench.v1.FloorService"
READ_PATH = f"/{SERVICE}/Read"
CALLS_PATH = f"/{SERVICE}/Calls"
#: Connections in the queue: the server's default pool size (DB_POOL_SIZE).
CONNECTIONS = 10


async def serve(host: str, port: int, dsn: str, task_id: int) -> None:
    """Serve until terminated; print the bound port on stdout once listening."""
    connections: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        connections.put_nowait(await asyncpg.connect(dsn))
    calls = 0

    async def read(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal calls
        connection = await connections.get()
        try:
            row = await connection.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
        finally:
            connections.put_nowait(connection)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no task {task_id}")
        calls += 1
        return row["title"].encode()

    async def count(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return str(calls).encode()

    await serve_methods(host, port, SERVICE, {"Read": read, "Calls": count})


def main() -> None:
    """Entry point of `python -m bench.floor_server`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dsn", required=True, help="the PostgreSQL database (asyncpg DSN)")
    parser.add_argument("--task-id", type=int, required=True, help="the task row each call reads")
    args = parser.parse_args()
    run(serve(args.host, args.port, args.dsn, args.task_id))


if __name__ == "__main__":
    main()

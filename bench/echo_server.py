"""The baseline: a bare grpc.aio server whose one method returns its request unchanged.

No protobuf, interceptors, logging or database: the least work a grpc.aio unary call can do, so
a scenario's ratio to it is the share of grpc.aio's ceiling that taskservice keeps. `Calls`
reports how many echoes were served, which lets the harness confirm every call succeeded
(h2load sees HTTP statuses, not grpc-status).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import grpc

SERVICE = "bench.v1.EchoService"
ECHO_PATH = f"/{SERVICE}/Echo"
CALLS_PATH = f"/{SERVICE}/Calls"


async def serve_methods(
    host: str, port: int, service: str, methods: dict[str, Callable[..., Awaitable[bytes]]]
) -> None:
    """Serve `service`'s raw-bytes unary methods until terminated; print the bound port first."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service,
                {name: grpc.unary_unary_rpc_method_handler(m) for name, m in methods.items()},
            ),
        )
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(bound, flush=True)
    await server.wait_for_termination()


async def serve(host: str, port: int) -> None:
    """Serve until terminated; print the bound port on stdout once listening."""
    calls = 0

    async def echo(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        nonlocal calls
        calls += 1
        return request

    async def count(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return str(calls).encode()

    await serve_methods(host, port, SERVICE, {"Echo": echo, "Calls": count})


def main() -> None:
    """Entry point of `python -m bench.echo_server`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

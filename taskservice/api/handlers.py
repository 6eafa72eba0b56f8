"""Wrapping gRPC method handlers, which interceptors do to run code around a call."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

#: A unary-unary behaviour: (request, context) -> response.
UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
#: A unary-stream behaviour as interceptors see it: (request, context) -> async iterator.
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def wrap_unary_unary(
    handler: grpc.RpcMethodHandler, wrap: Callable[[UnaryBehavior], UnaryBehavior]
) -> grpc.RpcMethodHandler:
    """The same handler with its unary-unary behaviour replaced by `wrap(behaviour)`."""
    return handler._replace(unary_unary=wrap(handler.unary_unary))  # type: ignore[attr-defined]


def wrap_unary_stream(
    handler: grpc.RpcMethodHandler, wrap: Callable[[StreamBehavior], StreamBehavior]
) -> grpc.RpcMethodHandler:
    """The same handler with its unary-stream behaviour replaced by `wrap(behaviour)`.

    The behaviour given to `wrap` is always an async generator function, whether the servicer
    method yields its responses or writes them with `context.write` (as grpcio's health Watch
    does), so wrappers can iterate it either way. Wrappers iterate it under
    `contextlib.aclosing`, so its `finally` runs when theirs does, not when it is collected.
    """
    return handler._replace(  # type: ignore[attr-defined]
        unary_stream=wrap(as_async_iterator(handler.unary_stream))
    )


def as_async_iterator(behavior: Callable[..., Any]) -> StreamBehavior:
    """A unary-stream behaviour as an async generator function.

    grpc.aio accepts both shapes: an async generator of responses, or a coroutine that writes
    them itself; the latter yields nothing here (its writes go straight to the call). An async
    generator function (every servicer stream of ours, and every interceptor's wrapper) is
    returned as it is: a generator around it would cost each open stream its suspended frame
    at every interceptor, for nothing.
    """
    if inspect.isasyncgenfunction(behavior):
        return behavior

    async def iterate(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        result = behavior(request, context)
        if inspect.isasyncgen(result):
            async with contextlib.aclosing(result):  # its `finally` runs now, not at GC
                async for response in result:
                    yield response
        elif inspect.isawaitable(result):
            await result

    return iterate


def replace_behavior(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> Any:
    """The same handler shape (so (de)serialisers still fit) with every behaviour replaced."""
    return handler._replace(  # type: ignore[attr-defined]
        unary_unary=behavior if handler.unary_unary else None,
        unary_stream=behavior if handler.unary_stream else None,
        stream_unary=behavior if handler.stream_unary else None,
        stream_stream=behavior if handler.stream_stream else None,
    )


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that rewrites the method handler of each call that has one.

    Subclasses implement `intercept_handler`, which depends on the method only (per-call data
    comes from the context when the call runs), so each method's rewritten handler is built once
    and reused: gRPC asks the interceptors for a handler on every call. Unknown methods (no
    handler) pass through.
    """

    def __init__(self) -> None:
        # method -> (the handler from further in, our rewrite of it)
        self._rewritten: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Resolve the handler further in, then let the subclass rewrite it."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._rewritten.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        rewritten = self.intercept_handler(handler, method)
        self._rewritten[method] = (handler, rewritten)
        return rewritten

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """The handler to use for `method` instead of `handler`."""
        raise NotImplementedError

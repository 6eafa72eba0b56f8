"""The calling client's address, for per-address throttling, on either edge.

gRPC names the peer as `ipv4:1.2.3.4:5678` or `ipv6:[::1]:5678`; the HTTP edge calls servicers
without a gRPC context and notes the peer's IP on the call instead. Behind TRUSTED_PROXIES the
client is read from `x-forwarded-for` by the transport-neutral rule in
`taskservice.services.client_address`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from taskservice.calls.context import current_call
from taskservice.config import IPNetwork
from taskservice.services.client_address import client_address

FORWARDED_FOR_KEY = "x-forwarded-for"


def peer_ip(peer: str | None) -> str | None:
    """The IP in a gRPC peer string, or None for other kinds of peer (Unix sockets)."""
    if not peer:
        return None
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0] or None
    if scheme == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


def caller_address(
    context: grpc.aio.ServicerContext | None, trusted: Sequence[IPNetwork]
) -> str | None:
    """The client's address: the peer's, or from a trusted proxy's `x-forwarded-for`."""
    if context is None:  # the HTTP edge: what it noted on the call
        call = current_call()
        if call is None:
            return None
        return client_address(call.peer_ip, call.forwarded_for, trusted)
    forwarded = [
        entry.value
        for entry in context.invocation_metadata() or ()
        if entry.key == FORWARDED_FOR_KEY and isinstance(entry.value, str)
    ]
    return client_address(peer_ip(context.peer()), forwarded, trusted)

"""Which address a call came from, for per-address throttling, whatever the transport.

Each edge passes the peer's IP and the `x-forwarded-for` values it received. The header is
believed only when the peer is one of TRUSTED_PROXIES, and then only as far as trusted proxies
wrote it: walking from the right (the hop nearest us), trusted proxies are skipped and the first
address that is not one is the client. With every proxy trusted and configured to append, that
is the header's first address; a client cannot pose as another by sending a forged header of its
own, because its forged entries sit to the left of the real one a trusted proxy appended.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from taskservice.config import IPNetwork


def client_address(
    peer_ip: str | None, forwarded_for: Iterable[str], trusted: Sequence[IPNetwork]
) -> str | None:
    """The client's address as text (None when the peer has none, e.g. a Unix socket)."""
    peer = _ip(peer_ip)
    if peer is None:
        return None
    if not _trusted(peer, trusted):
        return str(peer)
    hops = [item.strip() for value in forwarded_for for item in value.split(",")]
    client = peer
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:  # garbage in the header: stop at the last address we trust
            break
        client = address
        if not _trusted(address, trusted):
            break
    return str(client)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[IPNetwork]
) -> bool:
    return any(address.version == network.version and address in network for network in trusted)

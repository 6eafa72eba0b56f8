"""Ports for the servers the bench and the tests start themselves on 127.0.0.1.

Such a server binds the port it is told some time after the port was chosen. A port the kernel
picked (binding port 0) lies in the ephemeral range, which every outgoing connection and every
other test's port-0 bind draws from meanwhile, so under load another process can take it first
(seen as "Address already in use" from a Patroni node). Ports here come from below that range,
where only explicit binds land, at random, never the same one twice in a process, and only if
nothing listens there now.
"""

from __future__ import annotations

import random
import socket

#: Below Linux's default ephemeral range (32768-60999), above the well-known and common ports.
LOW, HIGH = 20000, 32000
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no caller here was given."""
    return free_ports(1)


def free_ports(count: int) -> int:
    """The first of `count` consecutive such ports (a server with workers on PORT + slot)."""
    for _ in range(200):
        first = random.randint(LOW, HIGH - count + 1)  # noqa: S311 - not a secret
        ports = range(first, first + count)
        if _handed_out.intersection(ports) or not all(map(_nothing_listens, ports)):
            continue
        _handed_out.update(ports)
        return first
    raise RuntimeError(f"no {count} free consecutive ports between {LOW} and {HIGH}")


def _nothing_listens(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

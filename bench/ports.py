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
    for _ in range(200):
        port = random.randint(LOW, HIGH)  # noqa: S311 - not a secret
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {LOW} and {HIGH}")

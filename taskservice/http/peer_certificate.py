"""The HTTP edge's view of a connection's client certificate, which hypercorn does not give.

hypercorn 0.18 verifies client certificates (`ca_certs`, `verify_mode`) but does not implement
the ASGI TLS extension (pgjones/hypercorn#62, open): no scope carries the peer's certificate,
and no public hook sees the TLS connection. Every connection, though, is served by one
`TCPServer.run` task, and each request's application task is started from within it, so a
context variable set at the top of `run` reaches every request of that connection and no other.
`install()` puts in place, once per process, the subclass of hypercorn's `TCPServer` that sets
it; hypercorn is pinned exactly, and a test over a real TLS connection fails if an upgrade
breaks this.
"""

from __future__ import annotations

from contextvars import ContextVar

import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer

from taskservice.calls.certificates import CertificateIdentities

#: The DER client certificate of the connection the current request came on (None: none sent).
_peer_certificate: ContextVar[bytes | None] = ContextVar(
    "taskservice_peer_certificate", default=None
)


def peer_certificate() -> bytes | None:
    """The verified client certificate (DER) of the current request's connection, if any."""
    return _peer_certificate.get()


def certificate_account(identities: CertificateIdentities, token: str | None) -> int | None:
    """The account the connection's client certificate maps to, read only when it could matter."""
    if token is not None or not identities:
        return None
    return identities.account_of(peer_certificate())


class _CertificateNotingTCPServer(TCPServer):
    """hypercorn's connection server, noting the peer's certificate for the requests it serves."""

    async def run(self) -> None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            _peer_certificate.set(ssl_object.getpeercert(binary_form=True))
        await super().run()


def install() -> None:
    """Make hypercorn serve connections with the certificate-noting server (idempotent)."""
    hypercorn_run.TCPServer = _CertificateNotingTCPServer  # type: ignore[misc]

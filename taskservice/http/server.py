"""The HTTP listener: hypercorn on the server's event loop, HTTP/1.1 and h2c on one port.

hypercorn speaks HTTP/1.1 and HTTP/2 (over TLS by ALPN, in cleartext by prior knowledge or
upgrade) and supports the ASGI trailers gRPC-Web's HTTP/2 needs. It runs in the same event loop
as the gRPC server, with the same TLS files, the same bound on request bodies
(MAX_MESSAGE_BYTES), the same HTTP/2 stream limit and the same graceful drain
(SHUTDOWN_GRACE_SECONDS). The socket is bound here (SO_REUSEPORT only for the workers of one
supervisor), so a busy port fails at build time and an ephemeral port is known at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from hypercorn.asyncio import serve
from hypercorn.config import Config

from taskservice.config import Settings
from taskservice.http import late_request_data, peer_certificate
from taskservice.http.app import ASGIApp

logger = logging.getLogger(__name__)

#: The longest stop(None) waits for connections to close before cancelling them.
CLOSE_IDLE_SECONDS = 0.2


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket for the HTTP edge; RuntimeError when the port is taken."""
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: is the port already in use?") from None
    return sock


class HttpServer:
    """Serves one ASGI app on a bound socket until stopped."""

    def __init__(self, app: ASGIApp, settings: Settings, sock: socket.socket) -> None:
        self.port: int = sock.getsockname()[1]
        self._app = app
        self._config = _config(settings, sock)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving in the background."""
        self._task = asyncio.create_task(self._serve(), name="http-edge")
        logger.info("serving HTTP (Connect, gRPC-Web) on port %d", self.port)

    async def _serve(self) -> None:
        await serve(self._app, self._config, shutdown_trigger=self._stop.wait, mode="asgi")  # type: ignore[arg-type]

    async def stop(self, grace: float | None) -> None:
        """Refuse new connections, let requests in flight finish within `grace` seconds, close.

        None cancels requests in flight almost at once, as for the gRPC server: idle
        keep-alive connections still get CLOSE_IDLE_SECONDS to close cleanly (they close on
        the first loop turns; cancelling them instead makes asyncio log each as an error).
        """
        self._config.graceful_timeout = CLOSE_IDLE_SECONDS if grace is None else grace
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _config(settings: Settings, sock: socket.socket) -> Config:
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here on
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.h2_max_concurrent_streams = settings.max_concurrent_streams
    config.include_server_header = False
    config.accesslog = None  # taskservice.access logs each call
    config.errorlog = logging.getLogger("hypercorn.error")
    late_request_data.install()  # an early answer over HTTP/2 must not drop the connection
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        config.certfile = str(settings.tls_cert_file)
        config.keyfile = str(settings.tls_key_file)
        if settings.tls_client_ca_file is not None:
            config.ca_certs = str(settings.tls_client_ca_file)
            config.verify_mode = ssl.CERT_REQUIRED
            peer_certificate.install()  # so MTLS_IDENTITIES can read the certificates
    return config

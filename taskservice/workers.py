"""Several worker processes on one port, supervised: `WORKERS=N` or `serve --workers N`.

Python serves one core per process, so N processes share the port with SO_REUSEPORT and the
kernel spreads connections over them. The supervisor never imports gRPC (after the pattern of
grpc's `examples/python/multiprocessing`); it reserves the port with a bound, non-listening
SO_REUSEPORT socket (so another program cannot take it, and an ephemeral port is known before the
workers start), starts each worker in a fresh interpreter, replaces any that dies, and on SIGTERM
or SIGINT passes the signal on and waits for every worker to drain.

A supervisor that dies without draining them (SIGKILL, the OOM killer, a crash) must not leave
its workers serving on: nothing would replace them, stop them or report their exit. Each worker
watches a pipe whose write end only its supervisor holds (multiprocessing's parent sentinel:
`multiprocessing.parent_process().sentinel`); the kernel closes it when the supervisor dies
however it dies, the worker reads end-of-file, and drains as on SIGTERM. A pipe rather than
Linux's parent-death signal (prctl PR_SET_PDEATHSIG): it works on every OS, has no window to
close (a pipe closed before the worker looks is still at end-of-file, where a death signal sent
before prctl is lost and needs a getppid re-check), and is not fired by the death of the parent
*thread* that started the worker, which PR_SET_PDEATHSIG is.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Iterator
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from taskservice.config import Settings

logger = logging.getLogger(__name__)

#: Extra seconds, beyond the shutdown grace, a worker may take to exit before it is killed.
EXIT_MARGIN_SECONDS = 5.0


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold the port (SO_REUSEPORT, bound, not listening) for the workers; yield its number.

    Binding first without SO_REUSEPORT fails at once if anything already listens there, so a
    busy port is an error rather than silently shared.
    """
    host = host.removeprefix("[").removesuffix("]")  # GRPC_HOST may be gRPC's "[::]" form
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # TIME_WAIT sockets of a previous run must not block a restart; a listener still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise RuntimeError(
                f"cannot listen on {host}:{port}: is the port already in use?"
            ) from None
        port = probe.getsockname()[1]
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, port))
        yield port


def _worker(settings: Settings) -> None:
    """A worker's entry point, in a fresh interpreter: serve with SO_REUSEPORT on.

    It serves until SIGTERM or SIGINT, or until its supervisor is gone (its parent sentinel
    becomes readable), and drains either way.
    """
    from taskservice import loop
    from taskservice.log import configure_logging
    from taskservice.server import run

    configure_logging(settings.log_level, settings.log_format)
    supervisor = multiprocessing.parent_process()
    sentinel = supervisor.sentinel if supervisor is not None else None
    loop.run(run(settings, reuse_port=True, parent_sentinel=sentinel))


class Supervisor:
    """Starts the workers, replaces those that die, and stops them all on a signal."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []
        self._stopping = False

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; return the exit status."""
        with contextlib.ExitStack() as ports:
            port = ports.enter_context(
                reserve_port(self._settings.grpc_host, self._settings.grpc_port)
            )
            self._settings = self._settings.model_copy(update={"grpc_port": port})
            if self._settings.http_port is not None:  # the HTTP edge's port, shared alike
                http_port = ports.enter_context(
                    reserve_port(self._settings.http_host, self._settings.http_port)
                )
                self._settings = self._settings.model_copy(update={"http_port": http_port})
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
            logger.info(
                "supervising %d workers on %s:%d", self._count, self._settings.grpc_host, port
            )
            self._workers = [self._start(slot) for slot in range(self._count)]
            while not self._stopping:
                wait([w.sentinel for w in self._workers], timeout=1.0)
                for index, worker in enumerate(self._workers):
                    if not worker.is_alive() and not self._stopping:
                        logger.warning(
                            "worker pid %s exited with code %s; replacing it",
                            worker.pid,
                            worker.exitcode,
                        )
                        self._workers[index] = self._start(index)
            return self._drain()

    def _start(self, slot: int) -> BaseProcess:
        """Start the worker for `slot`; its metrics (if on) are served on METRICS_PORT + slot."""
        settings = self._settings
        if settings.metrics_port:
            settings = settings.model_copy(update={"metrics_port": settings.metrics_port + slot})
        worker = self._context.Process(target=_worker, args=(settings,), daemon=False)
        worker.start()
        logger.info("worker started (pid %s)", worker.pid)
        return worker

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _drain(self) -> int:
        logger.info("stop signal received: draining %d workers", len(self._workers))
        for worker in self._workers:
            if worker.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        deadline = self._settings.shutdown_grace_seconds + EXIT_MARGIN_SECONDS
        for worker in self._workers:
            worker.join(deadline)
            if worker.is_alive():
                logger.error("worker pid %s did not stop in time; killing it", worker.pid)
                worker.kill()
                worker.join()
        failed = [w.pid for w in self._workers if w.exitcode not in (0, -signal.SIGTERM)]
        logger.info("all workers stopped")
        return 1 if failed else 0

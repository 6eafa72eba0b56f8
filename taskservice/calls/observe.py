"""One access-log line and one set of metrics per call, whatever the protocol.

Each edge starts an observation when a call begins (which gives the call its request id: the
caller's `x-request-id` when sane, else a new one) and ends it with the call's status code name.
The line carries method, status code, duration, peer, user id, request id and the protocol
(`grpc`, `connect`, `grpc-web`); the metrics are the conventional gRPC server metrics with a
`protocol` label, so one dashboard shows every edge. No request or response content is logged,
so no password, token or hash can reach the log through it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from taskservice.calls.context import CallInfo, begin_call
from taskservice.log import info_fields

access_logger = logging.getLogger("taskservice.access")


class CallMetrics(Protocol):
    """The per-call metrics a server keeps (`taskservice.api.metrics.ServerMetrics`)."""

    started: Any
    handled: Any
    handling_seconds: Any
    permission_denied: Any


@dataclass
class Observation:
    """A call being observed: its context and when it started."""

    info: CallInfo
    started: float


class MethodObserver:
    """Observes the calls of one method over one protocol; its metric children are made once."""

    def __init__(self, metrics: CallMetrics, method: str, call_type: str, protocol: str) -> None:
        service, _, name = method.rpartition("/")
        self._method = method
        self._service = service.lstrip("/")
        self._name = name
        self._protocol = protocol
        self._labels = (call_type, self._service, name, protocol)
        self._handled = metrics.handled
        self._started_total = metrics.started.labels(*self._labels)
        self._handling_seconds = metrics.handling_seconds.labels(*self._labels)
        self._permission_denied = metrics.permission_denied

    def begin(self, caller_request_id: str | None) -> Observation:
        """Start observing a call; this also starts its context and request id."""
        info = begin_call(caller_request_id)
        self._started_total.inc()
        return Observation(info, time.perf_counter())

    def end(self, observation: Observation, code: str, peer: str | None) -> None:
        """Record the call's end with its status code name (`OK`, `NOT_FOUND`, ...)."""
        seconds = time.perf_counter() - observation.started
        self._handled.labels(*self._labels, code).inc()
        self._handling_seconds.observe(seconds)
        if (permission := observation.info.denied_permission) is not None:
            self._permission_denied.labels(self._service, self._name, permission).inc()
        info_fields(
            access_logger,
            f"{self._method} {code}",
            {
                "protocol": self._protocol,
                "grpc_service": self._service,
                "grpc_method": self._name,
                "grpc_code": code,
                "duration_ms": round(seconds * 1000, 3),
                "peer": peer,
                "user_id": observation.info.user_id,
                "request_id": observation.info.request_id,
            },
        )

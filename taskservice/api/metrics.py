"""Prometheus metrics: the conventional gRPC server metrics and the database pool's state.

Names follow go-grpc-prometheus / grpc-ecosystem, which dashboards and alerts already expect:
`grpc_server_started_total`, `grpc_server_handled_total` (by code) and the
`grpc_server_handling_seconds` histogram, labelled by type, service and method, and by
`protocol` (`grpc`, `connect`, `grpc-web`): the HTTP edge serves the same methods. Pool gauges are
read from the engine at scrape time, so they cost nothing per call, and so are the WatchTasks
streams' figures (open streams, their credentials and its checks). When the server traces,
latency observations carry the call's trace id as an exemplar, shown when the scraper asks for
the OpenMetrics format (the exposition negotiates it by the `Accept` header). Each server has a
registry of its own (tests run many in one process); `METRICS_PORT` serves it over HTTP at
`/metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from taskservice.watch.credentials import CredentialChecks
    from taskservice.watch.feed import ChangeFeed

#: Latency buckets in seconds: sub-millisecond reads up to bcrypt-bound logins and timeouts.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServerMetrics:
    """The metrics of one server, and (optionally) the HTTP endpoint that exposes them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.registry = CollectorRegistry()
        labels = ("grpc_type", "grpc_service", "grpc_method", "protocol")
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.throttled = Counter(
            "taskservice_auth_throttled_total",
            "Logins and registrations refused by brute-force throttling, by kind.",
            ("kind",),
            registry=self.registry,
        )
        self.permission_denied = Counter(
            "taskservice_permission_denied_total",
            "Calls refused for a permission the caller lacks, by method and permission.",
            ("grpc_service", "grpc_method", "permission"),
            registry=self.registry,
        )
        self.trace_spans_dropped = Counter(
            "taskservice_trace_spans_dropped",
            "Finished spans that never reached the trace collector, by reason "
            "(queue_full, export_failed, shutdown).",
            ("reason",),
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(engine))
        self._http: Any = None

    def observe_watches(self, feed: ChangeFeed, checks: CredentialChecks) -> None:
        """Export the WatchTasks streams of `feed` and the credential checks of `checks`."""
        self.registry.register(_WatchCollector(feed, checks))

    def serve(self, host: str, port: int) -> int:
        """Expose `/metrics` over HTTP on a background thread; return the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if any."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _PoolCollector(Collector):
    """Connection pool state, read when Prometheus scrapes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._pool = engine.sync_engine.pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Size, checked-out, idle and overflow connections (where the pool has them)."""
        for name, attribute, text in (
            ("taskservice_db_pool_size", "size", "Configured steady connections."),
            ("taskservice_db_pool_checked_out", "checkedout", "Connections in use."),
            ("taskservice_db_pool_checked_in", "checkedin", "Idle connections in the pool."),
            ("taskservice_db_pool_overflow", "overflow", "Connections beyond the pool size."),
        ):
            reader = getattr(self._pool, attribute, None)
            if reader is not None:
                yield GaugeMetricFamily(name, text, value=float(reader()))


class _WatchCollector(Collector):
    """The WatchTasks streams of one process and their credential checks, read when scraped."""

    def __init__(self, feed: ChangeFeed, checks: CredentialChecks) -> None:
        self._feed = feed
        self._checks = checks

    def collect(self) -> Iterator[Metric]:
        """Open streams and credentials (gauges); checks made and streams they ended (counters)."""
        yield GaugeMetricFamily(
            "taskservice_watch_streams",
            "WatchTasks streams open in this process.",
            value=float(self._feed.streams),
        )
        yield GaugeMetricFamily(
            "taskservice_watch_credentials",
            "Distinct credentials of the open WatchTasks streams, each checked once per pass.",
            value=float(self._checks.credentials),
        )
        yield CounterMetricFamily(
            "taskservice_watch_credential_checks",
            "Checks of the open WatchTasks streams' credentials: one per credential per pass.",
            value=float(self._checks.checks_total),
        )
        yield CounterMetricFamily(
            "taskservice_watch_streams_ended",
            "WatchTasks streams ended by a credential check: the credential failed, the caller "
            "may no longer watch what it watches, or the database stayed away too long.",
            value=float(self._checks.streams_ended_total),
        )

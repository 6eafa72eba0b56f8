"""Builds the gRPC server from settings, and runs it until a signal asks it to stop.

`build_server` is the one place where the engine, services, servicers, health and reflection are
wired together; the CLI and the tests both go through it, so what is tested is what is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskservice.api.access_log import AccessLogInterceptor
from taskservice.api.api_key_servicer import ApiKeyServicer
from taskservice.api.audit_servicer import AuditServicer
from taskservice.api.auth_servicer import AuthServicer
from taskservice.api.authentication import AuthInterceptor
from taskservice.api.availability import AvailabilityInterceptor
from taskservice.api.errors import ErrorInterceptor
from taskservice.api.health import LIVENESS, READINESS, HealthMonitor, HealthServicer
from taskservice.api.limits import UnaryCallLimitInterceptor
from taskservice.api.metrics import ServerMetrics
from taskservice.api.reflection import enable_reflection
from taskservice.api.task_list_servicer import TaskListServicer
from taskservice.api.task_servicer import TaskServicer
from taskservice.api.user_servicer import UserServicer
from taskservice.calls.certificates import CertificateIdentities
from taskservice.calls.context import current_call
from taskservice.calls.limits import UnaryCallLimit
from taskservice.calls.refusals import RefusalAudit
from taskservice.calls.spans import server_address
from taskservice.config import ConfigError, Settings
from taskservice.db.engine import Database, create_engine, open_fast_reads
from taskservice.db.spans import instrument_engine
from taskservice.http.edge import build_http_server
from taskservice.http.rest.routes import RestServices
from taskservice.http.server import HttpServer
from taskservice.security.credentials import CredentialHasher
from taskservice.security.passwords import PasswordHasher
from taskservice.security.tokens import TokenCodec
from taskservice.services.api_keys import ApiKeyService
from taskservice.services.audit import AuditTrail
from taskservice.services.auth import AuthPolicy, AuthService
from taskservice.services.auth_state import AuthStateStore
from taskservice.services.clock import Clock, system_clock
from taskservice.services.pagination import PageTokens
from taskservice.services.shared_lists import TaskListService
from taskservice.services.tasks import TaskService
from taskservice.services.throttle import Throttle
from taskservice.services.trash import TrashSweeper
from taskservice.services.users import UserService
from taskservice.tracing.provider import Tracing
from taskservice.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    task_list_service_pb2,
    task_list_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    user_service_pb2,
    user_service_pb2_grpc,
)
from taskservice.watch.credentials import CredentialChecks
from taskservice.watch.feed import ChangeFeed
from taskservice.watch.streams import Watches

logger = logging.getLogger(__name__)

#: Fully qualified names of our services: health answers for each, reflection lists them.
SERVICE_NAMES: tuple[str, ...] = (
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    user_service_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    task_list_service_pb2.DESCRIPTOR.services_by_name["TaskListService"].full_name,
    api_key_service_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)

#: Health names that follow the database besides `readiness`: "" is the whole server (what
#: grpcurl and `grpc_health_probe` ask by default), then each service.
HEALTH_NAMES: tuple[str, ...] = ("", *SERVICE_NAMES)
#: Every health name answered.
ALL_HEALTH_NAMES: tuple[str, ...] = (LIVENESS, READINESS, *HEALTH_NAMES)


@dataclass
class Application:
    """A built server and what it owns: started by `start`, torn down by `stop`."""

    settings: Settings
    server: grpc.aio.Server
    database: Database
    auth_states: AuthStateStore
    health: HealthMonitor
    hasher: PasswordHasher
    metrics: ServerMetrics
    port: int
    tracing: Tracing = field(default_factory=Tracing)
    tasks: TaskService | None = None
    trash: TrashSweeper | None = None
    feed: ChangeFeed | None = None
    stream_credentials: CredentialChecks | None = None
    api_keys: ApiKeyService | None = None
    audit: AuditTrail | None = None
    auth: AuthService | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    metrics_port: int | None = None
    http: HttpServer | None = None
    http_port: int | None = None

    async def start(self) -> None:
        """Start accepting calls, then report readiness as the database allows."""
        await self.auth_states.start()
        if self.feed is not None:
            await self.feed.start()
        if self.stream_credentials is not None:
            self.stream_credentials.start()
        if self.settings.metrics_port is not None:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port
            )
        await self.server.start()
        if self.http is not None:
            await self.http.start()
        if self.health_server is not None:
            await self.health_server.start()
        await self.health.start()
        if self.trash is not None:
            self.trash.start()
        logger.info(
            "serving gRPC on %s:%d (database: %s)",
            self.settings.grpc_host,
            self.port,
            self.settings.sqlalchemy_url.render_as_string(hide_password=True),
        )

    async def stop(self, grace: float | None) -> None:
        """Drain: refuse new calls, report NOT_SERVING, let calls in flight finish, close.

        New calls are refused before any watcher hears NOT_SERVING or sees its stream end:
        a client that reconnects on that signal must be refused by the transport (UNAVAILABLE,
        so it goes elsewhere) rather than reach a server that has begun to stop, where gRPC
        core cancels a call that arrived but was not yet dispatched. Calls in flight may
        finish within `grace` seconds (None: cancel them at once). Watch streams never finish
        by themselves: they are ended with UNAVAILABLE at once, so clients resume elsewhere
        instead of holding the drain for the whole grace period.
        """
        edges = [self.server.stop(grace)]
        if self.http is not None:  # both edges drain at once, each within the grace
            edges.append(self.http.stop(grace))
        draining = asyncio.gather(*edges)
        # One loop turn runs each edge's stop up to its first wait: gRPC core has stopped
        # listening and sent GOAWAY by then.
        await asyncio.sleep(0)
        await self.health.shutdown()
        if self.feed is not None:
            self.feed.close_streams()
        if self.trash is not None:
            await self.trash.stop()
        if self.health_server is not None:
            await self.health_server.stop(None)
        await draining
        if self.feed is not None:
            await self.feed.stop()
        if self.stream_credentials is not None:
            await self.stream_credentials.stop()
        await self.auth_states.stop()
        await self.tracing.shutdown()  # the calls' spans are all ended: export them
        self.metrics.close()
        await self.database.close()
        self.hasher.close()


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """GRPC core channel arguments: limits, keepalive, connection ageing.

    `max_connection_age` closes connections gracefully now and then, so long-lived clients
    re-resolve and spread over new replicas. Clients must not ping more often than
    `keepalive_min_ping_interval` or the server answers GOAWAY `too_many_pings`.
    """
    ms = 1000
    return [
        # A second server on a busy port must fail, not silently share it; only the workers of
        # one supervisor share their port on purpose.
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", settings.keepalive_time_seconds * ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_seconds * ms),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            settings.keepalive_min_ping_interval_seconds * ms,
        ),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            settings.keepalive_min_ping_interval_seconds * ms,
        ),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_age_ms", settings.max_connection_age_seconds * ms),
        ("grpc.max_connection_age_grace_ms", settings.max_connection_age_grace_seconds * ms),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Transport security from the TLS_* files, or None for plaintext.

    TLS_CERT_FILE and TLS_KEY_FILE serve TLS; with TLS_CLIENT_CA_FILE, clients must present a
    certificate signed by that CA (mutual TLS). The files are checked here, so a bad one stops the
    start with a clear message instead of a vague bind failure.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        key = settings.tls_key_file.read_bytes()
        chain = settings.tls_cert_file.read_bytes()
        client_ca = (
            settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
        )
    except OSError as exc:
        raise ConfigError(f"TLS files: cannot read {exc.filename} ({exc.strerror})") from None
    for name, check in (
        ("TLS_CERT_FILE", lambda: x509.load_pem_x509_certificates(chain)),
        ("TLS_KEY_FILE", lambda: serialization.load_pem_private_key(key, password=None)),
        ("TLS_CLIENT_CA_FILE", lambda: client_ca and x509.load_pem_x509_certificates(client_ca)),
    ):
        try:
            check()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}: not usable PEM ({exc})") from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def build_server(
    settings: Settings, *, reuse_port: bool = False, clock: Clock = system_clock
) -> Application:
    """Wire a complete server for `settings`, bound to its port but not yet started.

    `clock` is the time credentials, throttling and the audit trail go by (tests move it).

    Raises RuntimeError when the address cannot be bound (for example, the port is taken).
    """
    tokens = TokenCodec.from_settings(settings)
    credentials = server_credentials(settings)  # before anything that would need closing
    # Also before: a wrong OTEL_* setting is refused. Drops are counted in `metrics`, made
    # below (no span can end before the server is built).
    tracing = Tracing.from_environment(
        lambda reason, count: metrics.trace_spans_dropped.labels(reason).inc(count)
    )
    engine = create_engine(settings)
    if tracing.enabled:
        instrument_engine(engine)
    database = Database(engine, await open_fast_reads(settings, engine))
    hasher = PasswordHasher(settings.bcrypt_rounds)
    auth_states = AuthStateStore(database, sole_owner=settings.is_sqlite and settings.workers == 1)
    page_tokens = PageTokens(tokens.derive_key(b"page-tokens"))
    metrics = ServerMetrics(engine)
    audit = AuditTrail(
        database,
        page_tokens,
        clock,
        _request_id,
        timedelta(days=settings.audit_retention_days),
    )
    credential_hasher = CredentialHasher(
        settings.credential_hash_key.get_secret_value().encode()
        if settings.credential_hash_key is not None
        else tokens.derive_key(b"credentials")
    )
    api_keys = ApiKeyService(database, credential_hasher, auth_states, page_tokens, audit, clock)
    auth = AuthService(
        database,
        hasher,
        tokens,
        auth_states,
        credentials=credential_hasher,
        api_keys=api_keys,
        throttle=Throttle(database, timedelta(seconds=settings.throttle_window_seconds), clock),
        audit_trail=audit,
        policy=AuthPolicy(
            refresh_lifetime=timedelta(days=settings.refresh_token_expire_days),
            max_failures_per_account=settings.login_max_failures_per_account,
            max_failures_per_address=settings.login_max_failures_per_address,
            max_registrations_per_address=settings.register_max_per_address,
        ),
        clock=clock,
        on_throttled=lambda kind: metrics.throttled.labels(kind).inc(),
    )
    users = UserService(database, page_tokens, auth_states, audit)
    tasks = TaskService(
        database,
        page_tokens,
        timedelta(days=settings.trash_retention_days),
        audit_trail=audit,
    )
    task_lists = TaskListService(
        database, page_tokens, timedelta(days=settings.trash_retention_days)
    )
    feed = ChangeFeed(
        database,
        buffer_events=settings.watch_buffer_events,
        max_streams=settings.watch_max_streams,
        retention=timedelta(hours=settings.watch_retention_hours),
        clock=clock,
        tracer=tracing.tracer,
    )

    monitor = HealthMonitor(HealthServicer(), database.ping, HEALTH_NAMES)
    refusals = RefusalAudit(audit, clock=clock)
    await monitor.not_serving_yet()
    server = grpc.aio.server(
        # Outermost first: every call is logged; unary calls over MAX_CONCURRENT_RPCS are
        # refused; errors are mapped around everything further in; calls fail fast while the
        # database is down; then the caller is authenticated. No `maximum_concurrent_rpcs`:
        # it would count watch streams too (see `taskservice.calls.limits`).
        interceptors=[
            AccessLogInterceptor(metrics, tracing.tracer, server_address(settings.grpc_host)),
            UnaryCallLimitInterceptor(UnaryCallLimit(settings.max_concurrent_rpcs)),
            ErrorInterceptor(on_database_error=monitor.suspect, refusals=refusals),
            AvailabilityInterceptor(monitor),
            AuthInterceptor(auth, CertificateIdentities(settings.mtls_identity_accounts)),
        ],
        options=server_options(settings, reuse_port=reuse_port),
    )
    health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)

    # One servicer per service, served by both edges.
    stream_credentials = CredentialChecks()
    metrics.observe_watches(feed, stream_credentials)
    watches = Watches(feed, settings.watch_bookmark_seconds, stream_credentials)
    servicers = {
        "AuthService": AuthServicer(auth, settings.trusted_proxy_networks),
        "ApiKeyService": ApiKeyServicer(api_keys),
        "AuditService": AuditServicer(audit),
        "UserService": UserServicer(users),
        "TaskService": TaskServicer(tasks, watches),
        "TaskListService": TaskListServicer(task_lists),
    }
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicers["AuthService"], server)
    api_key_service_pb2_grpc.add_ApiKeyServiceServicer_to_server(servicers["ApiKeyService"], server)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(servicers["AuditService"], server)
    user_service_pb2_grpc.add_UserServiceServicer_to_server(servicers["UserService"], server)
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicers["TaskService"], server)
    task_list_service_pb2_grpc.add_TaskListServiceServicer_to_server(
        servicers["TaskListService"], server
    )
    enable_reflection(
        server, (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    )

    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        await database.close()
        hasher.close()
        await tracing.shutdown()
        raise RuntimeError(f"cannot listen on {address}: is the port already in use?") from None
    application = Application(
        settings, server, database, auth_states, monitor, hasher, metrics, port, tracing
    )
    application.tasks = tasks
    application.trash = TrashSweeper(tasks, also=(auth.purge_expired, audit.purge_expired))
    application.auth = auth
    application.api_keys = api_keys
    application.audit = audit
    application.feed = feed
    application.stream_credentials = stream_credentials
    if settings.http_port is not None:
        try:
            application.http = build_http_server(
                settings,
                servicers,
                auth=auth,
                health=monitor,
                metrics=metrics,
                rest=RestServices(auth, users, tasks, monitor.servicer),
                reuse_port=reuse_port,
                refusals=refusals,
                tracer=tracing.tracer,
            )
        except RuntimeError:
            await server.stop(None)
            await database.close()
            hasher.close()
            await tracing.shutdown()
            raise
        application.http_port = application.http.port
    if settings.health_port is not None:
        application.health_server, application.health_port = _health_only_server(
            settings, monitor.servicer
        )
    return application


def _request_id() -> str | None:
    """The request id of the call in progress (on either edge), for audit rows."""
    call = current_call()
    return None if call is None else call.request_id


def _health_only_server(
    settings: Settings, servicer: HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server answering only `grpc.health.v1.Health`, on HEALTH_PORT.

    Kubernetes' native gRPC probes cannot speak TLS; with TLS on the main port, they probe this
    one instead. It shares the main server's health statuses and exposes nothing else.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"{settings.grpc_host}:{settings.health_port}"
    try:
        return server, server.add_insecure_port(address)
    except RuntimeError:
        raise RuntimeError(f"cannot listen on {address}: is the port already in use?") from None


async def run(
    settings: Settings, *, reuse_port: bool = False, parent_sentinel: int | None = None
) -> None:
    """Serve until SIGTERM or SIGINT (or, for a worker, its supervisor's death), then drain.

    The signal handlers go in before anything starts, so a stop signal during start-up ends the
    process cleanly (started, then drained at once) rather than killing it mid-way.

    `parent_sentinel` is a file descriptor that becomes readable when the supervisor is gone
    (see `taskservice.workers`): the worker then drains exactly as on SIGTERM. Readability is a
    lasting state, so a supervisor that died before this point is noticed at once.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if parent_sentinel is not None:

        def parent_gone() -> None:
            loop.remove_reader(parent_sentinel)  # stays readable: once is enough
            logger.warning("supervisor gone: draining calls in flight")
            stop.set()

        loop.add_reader(parent_sentinel, parent_gone)
    try:
        app = await build_server(settings, reuse_port=reuse_port)
        try:
            await app.start()
            await stop.wait()
            logger.info("stop signal received: draining calls in flight")
        finally:
            await app.stop(settings.shutdown_grace_seconds)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(signum)
        if parent_sentinel is not None:
            loop.remove_reader(parent_sentinel)
    logger.info("stopped")

"""Settings: read from the environment (and an optional `.env`) once, validated, then immutable.

Everything configurable lives here so that a bad value stops the process at start with one clear
line, instead of surfacing as a strange failure on the first request that happens to need it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: HMAC keys shorter than the hash output are refused (RFC 7518 §3.2): 32 bytes for HS256.
MIN_SECRET_KEY_BYTES = 32
_MIN_KEY_BYTES_BY_ALGORITHM = {"HS256": 32, "HS384": 48, "HS512": 64}

#: Where the embedded default keeps its generated development signing key (git-ignored).
DEV_KEY_FILE = Path(".taskservice-dev-jwt-key")

#: The embedded default database: a SQLite file in the working directory.
DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///taskservice.db"

#: Async drivers we ship, and the sync spellings we quietly map onto them.
_ASYNC_DRIVERS = {"postgresql+asyncpg", "sqlite+aiosqlite"}
_DRIVER_ALIASES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


#: One allowed origin: exactly what a browser sends in `Origin`, never a wildcard.
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


def _split_origins(value: str) -> tuple[str, ...]:
    return tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())


#: A SPIFFE ID: `spiffe://` and a trust domain, then path segments of letters, digits, `.-_`.
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*")
#: A DNS name as certificates carry it (a leading `*.` wildcard allowed).
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


def parse_mtls_identities(value: str) -> dict[str, int]:
    """`identity=user_id` pairs, comma-separated, split at each pair's last `=`.

    ValueError names the first pair that is not one: an identity that is neither a SPIFFE ID
    nor a DNS name, a user id that is not a positive integer, or an identity given twice.
    """
    accounts: dict[str, int] = {}
    for pair in (part.strip() for part in value.split(",")):
        if not pair:
            continue
        identity, equals, user_id = pair.rpartition("=")
        identity, user_id = identity.strip(), user_id.strip()
        if not equals or not user_id.isdigit() or int(user_id) < 1:
            raise ValueError(f"{pair!r} is not identity=user_id with a positive user id")
        if identity.lower().startswith("spiffe:"):
            segments = identity.split("/")[3:]
            if not _SPIFFE_ID.fullmatch(identity) or {".", ".."} & set(segments):
                raise ValueError(f"{identity!r} is not a SPIFFE ID (spiffe://trust-domain/path)")
        elif "://" in identity or not _DNS_NAME.fullmatch(identity) or len(identity) > 253:
            raise ValueError(f"{identity!r} is neither a SPIFFE ID nor a DNS name")
        if identity.lower() in {known.lower() for known in accounts}:
            raise ValueError(f"{identity!r} is listed twice")
        accounts[identity] = int(user_id)
    return accounts


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Every knob of the service. Field names are the environment variable names, lower-cased."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    database_url: str | None = Field(
        default=None,
        repr=False,  # it may carry a password
        description="Any SQLAlchemy async URL; wins over DB_* when set.",
    )
    db_host: str | None = Field(
        default=None,
        description="PostgreSQL host, or hosts (h1,h2:5433) to fail over between; enables DB_*.",
    )
    db_port: int = Field(default=5432, ge=1, le=65535)
    db_name: str = Field(default="taskservice", min_length=1)
    db_user: str = Field(default="postgres", min_length=1)
    db_password: SecretStr = Field(default=SecretStr(""))
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_max_overflow: int = Field(default=10, ge=0, le=1000)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    db_statement_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    grpc_host: str = Field(default="0.0.0.0", min_length=1)  # noqa: S104 - a server binds all
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Client certificate identities that authenticate as service accounts, comma-separated
    # `identity=user_id` pairs; the identity a SPIFFE ID (URI SAN) or a DNS SAN.
    mtls_identities: str = Field(default="", max_length=100_000)
    health_port: int | None = Field(default=None, ge=0, le=65535)
    # The HTTP edge (Connect, gRPC-Web; HTTP/1.1 and h2c): HTTP_PORT=off turns it off.
    http_host: str = Field(default="0.0.0.0", min_length=1)  # noqa: S104 - a server binds all
    http_port: int | None = Field(default=8080, ge=0, le=65535)
    # Origins (scheme://host[:port], comma-separated) browsers may call from; empty: none.
    cors_allowed_origins: str = Field(default="", max_length=10_000)
    metrics_host: str = Field(default="0.0.0.0", min_length=1)  # noqa: S104 - scraped remotely
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_concurrent_rpcs: int = Field(default=1000, ge=1, le=100_000)
    max_concurrent_streams: int = Field(default=100, ge=1, le=10_000)
    keepalive_time_seconds: int = Field(default=60, ge=1, le=24 * 3600)
    keepalive_timeout_seconds: int = Field(default=20, ge=1, le=3600)
    keepalive_min_ping_interval_seconds: int = Field(default=10, ge=1, le=3600)
    max_connection_age_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    max_connection_age_grace_seconds: int = Field(default=30, ge=1, le=3600)

    jwt_secret_key: SecretStr | None = None
    jwt_algorithm: Literal[
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"
    ] = "HS256"
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_issuer: str = Field(default="taskservice", min_length=1, max_length=200)
    jwt_audience: str = Field(default="taskservice", min_length=1, max_length=200)
    access_token_expire_minutes: int = Field(default=30, ge=1, le=7 * 24 * 60)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    refresh_token_expire_days: int = Field(default=30, ge=1, le=3650)
    # Key of the HMAC that API keys and refresh tokens are stored under; derived from the JWT
    # signing key when unset (then rotating that key also invalidates every API key).
    credential_hash_key: SecretStr | None = None
    # Failed logins tolerated per account and per client address within the window, and
    # anonymous registrations per client address; past them, calls are RESOURCE_EXHAUSTED.
    login_max_failures_per_account: int = Field(default=5, ge=1, le=1_000_000)
    login_max_failures_per_address: int = Field(default=50, ge=1, le=1_000_000)
    register_max_per_address: int = Field(default=20, ge=1, le=1_000_000)
    throttle_window_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    # Peers (addresses or CIDR networks, comma-separated) whose `x-forwarded-for` is believed.
    trusted_proxies: str = ""
    # Days security events stay in `audit_events` (ListAuditEvents) before the sweep deletes them;
    # fractions allowed. The structured log lines are the log pipeline's to keep.
    audit_retention_days: float = Field(default=365.0, gt=0, le=36500)
    # How long a deleted task stays in the trash before it is purged; fractions allowed.
    trash_retention_days: float = Field(default=30.0, gt=0, le=3650)
    # WatchTasks: seconds between bookmarks on a stream; hours of change history kept (fractions
    # allowed); changes buffered per stream before a slow reader is cut off; streams per process.
    watch_bookmark_seconds: float = Field(default=15.0, gt=0, le=3600)
    watch_retention_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    watch_buffer_events: int = Field(default=1000, ge=1, le=1_000_000)
    watch_max_streams: int = Field(default=10_000, ge=1, le=1_000_000)

    debug: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "database_url",
        "db_host",
        "jwt_secret_key",
        "jwt_private_key_file",
        "jwt_public_key_file",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "metrics_port",
        "health_port",
        "credential_hash_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """Treat `VAR=` like an unset variable, as shells and `.env` files commonly produce it."""
        return None if value == "" else value

    @field_validator("db_host")
    @classmethod
    def _hosts_are_names(cls, value: str | None) -> str | None:
        if value is not None and "," in value:
            _host_list(value)
        return value

    @field_validator("http_port", mode="before")
    @classmethod
    def _http_port_off(cls, value: object) -> object:
        """`HTTP_PORT=off` (or empty) turns the HTTP edge off."""
        if isinstance(value, str) and value.strip().lower() in {"", "off"}:
            return None
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins_are_exact(cls, value: str) -> str:
        for origin in _split_origins(value):
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: list scheme://host[:port] values, no '*', "
                    "no path, separated by commas"
                )
        return value

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """The origins allowed to call the HTTP edge from a browser."""
        return _split_origins(self.cors_allowed_origins)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return normalize_database_url(value).render_as_string(hide_password=False)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("mtls_identities")
    @classmethod
    def _identities_map_to_ids(cls, value: str) -> str:
        parse_mtls_identities(value)
        return value

    @property
    def mtls_identity_accounts(self) -> dict[str, int]:
        """MTLS_IDENTITIES as a mapping: certificate identity → service account's user id."""
        return parse_mtls_identities(self.mtls_identities)

    @field_validator("credential_hash_key")
    @classmethod
    def _long_hash_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_KEY_BYTES} bytes long")
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        """TRUSTED_PROXIES as networks (a single address is a /32 or /128)."""
        return parse_networks(self.trusted_proxies)

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        if self.mtls_identities.strip() and self.tls_client_ca_file is None:
            raise ValueError("MTLS_IDENTITIES needs mutual TLS: set TLS_CLIENT_CA_FILE")
        return self

    @property
    def sqlalchemy_url(self) -> URL:
        """The database to use: DATABASE_URL, else PostgreSQL from DB_*, else embedded SQLite."""
        if self.database_url is not None:
            return make_url(self.database_url)
        if self.db_host is not None and "," in self.db_host:  # several hosts: read-write one
            hosts = tuple(_host_list(self.db_host, self.db_port))
            return URL.create(
                "postgresql+asyncpg",
                username=self.db_user,
                password=self.db_password.get_secret_value() or None,
                database=self.db_name,
                query={"host": hosts, "target_session_attrs": "read-write"},
            )
        if self.db_host is not None:
            return URL.create(
                "postgresql+asyncpg",
                username=self.db_user,
                password=self.db_password.get_secret_value() or None,
                host=self.db_host,
                port=self.db_port,
                database=self.db_name,
            )
        return make_url(DEFAULT_SQLITE_URL)

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded kind, where development conveniences are allowed."""
        return self.sqlalchemy_url.get_backend_name() == "sqlite"


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR networks; ValueError naming the first bad one."""
    networks = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not an IP address or CIDR network") from None
    return tuple(networks)


#: PostgreSQL's port, for hosts of a multi-host URL that name none.
DEFAULT_POSTGRES_PORT = 5432


def normalize_database_url(raw: str) -> URL:
    """Parse a database URL and make sure it names one of the async drivers we ship.

    Both multi-host spellings are accepted: libpq's `postgresql://u:p@h1:5432,h2:5433/db`, which
    database providers hand out, and SQLAlchemy's `postgresql://u:p@/db?host=h1:5432&host=h2:5433`.
    With several hosts and no `target_session_attrs`, `read-write` is implied: every connection
    of every pool goes to the node that takes writes, as a service that writes needs.
    """
    try:
        url = make_url(_libpq_hosts(raw.strip()))
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"not a database URL ({exc})") from None
    driver = _DRIVER_ALIASES.get(url.drivername, url.drivername)
    if driver not in _ASYNC_DRIVERS:
        raise ValueError(
            f"unsupported driver {url.drivername!r}; use postgresql+asyncpg or sqlite+aiosqlite"
        )
    url = url.set(drivername=driver)
    hosts = url.query.get("host")
    if isinstance(hosts, tuple) and len(hosts) > 1 and "target_session_attrs" not in url.query:
        url = url.update_query_dict({"target_session_attrs": "read-write"})
    return url


def _libpq_hosts(raw: str) -> str:
    """A multi-host URL in libpq's form (`h1:p1,h2:p2` before the path) in SQLAlchemy's.

    SQLAlchemy's parser reads the authority as one host and port, so `h1:5432,h2:5433` fails
    there as a port. A URL with one host is returned unchanged.
    """
    scheme, separator, rest = raw.partition("://")
    if not separator:
        return raw
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host_list = authority.rpartition("@")
    if "," not in host_list:
        return raw
    hosts = _host_list(host_list)
    userinfo = userinfo.replace("@", "%40")  # an unencoded @ in the password stays in it
    path, _, query = tail.partition("?")
    parameters = "&".join(f"host={host}" for host in hosts)
    return f"{scheme}://{userinfo}{at}{path or '/'}?{parameters}{'&' + query if query else ''}"


def _host_list(text: str, default_port: int = DEFAULT_POSTGRES_PORT) -> list[str]:
    """`h1,h2:5433` as `["h1:<default_port>", "h2:5433"]`; ValueError naming what is wrong."""
    hosts = [host.strip() for host in text.split(",")]
    for host in hosts:
        if not host:
            raise ValueError("a multi-host list names an empty host")
        if host.startswith("[") or host.count(":") > 1:
            raise ValueError(
                f"{host!r}: IPv6 addresses are not supported in a multi-host list; use host names"
            )
    return [_with_port(host, default_port) for host in hosts]


def _with_port(host: str, default: int = DEFAULT_POSTGRES_PORT) -> str:
    """`host:port`, with the default port when the host names none."""
    if not host:
        return host
    return host if ":" in host else f"{host}:{default}"


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings, or raise ConfigError with a one-line message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def with_signing_key(settings: Settings) -> Settings:
    """Settle the JWT signing key, for commands that sign or check tokens.

    Asymmetric algorithms use PEM key files instead (checked when the token codec loads them).
    Outside SQLite the key must be given and be at least MIN_SECRET_KEY_BYTES long. On the embedded
    default a missing key is generated once and kept in DEV_KEY_FILE, so that restarts and sibling
    processes agree, with a warning that it is for development only.
    """
    if not settings.jwt_algorithm.startswith("HS"):
        return settings
    key = settings.jwt_secret_key
    if key is None:
        if not settings.is_sqlite:
            raise ConfigError(
                "JWT_SECRET_KEY: required when the database is not the embedded SQLite default"
            )
        logger.warning(
            "JWT_SECRET_KEY is not set: using a generated development key kept in %s. "
            "Set JWT_SECRET_KEY for anything but local development.",
            DEV_KEY_FILE,
        )
        return settings.model_copy(update={"jwt_secret_key": SecretStr(_dev_signing_key())})
    minimum = _MIN_KEY_BYTES_BY_ALGORITHM[settings.jwt_algorithm]
    if len(key.get_secret_value().encode()) < minimum:
        raise ConfigError(
            f"JWT_SECRET_KEY: must be at least {minimum} bytes long for {settings.jwt_algorithm}"
        )
    return settings


def _dev_signing_key() -> str:
    """Return the development key in DEV_KEY_FILE, creating it atomically if it does not exist yet.

    The key is written to a private temporary file and hard-linked into place, so a concurrent
    process either wins the link or reads the complete key the winner wrote.
    """
    path = DEV_KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".jwt-key-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(64))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_key(path)


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if len(key.encode()) < MIN_SECRET_KEY_BYTES:
        raise ConfigError(f"{path}: development key is too short; delete the file to regenerate it")
    return key


def _one_line(exc: ValidationError) -> str:
    """Render pydantic's errors as `VAR: problem; VAR: problem`, never echoing secret values."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts)

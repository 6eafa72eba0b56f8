"""Settings are read once, validated, and refuse bad or unsafe values with one clear line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from taskservice.config import (
    DEFAULT_SQLITE_URL,
    MIN_SECRET_KEY_BYTES,
    ConfigError,
    Settings,
    load_settings,
    with_signing_key,
)

#: Every variable the service reads.
ENV_NAMES = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts from no configuration at all, in an empty working directory."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_sqlite_database_on_port_50051() -> None:
    settings = load_settings()
    assert settings.sqlalchemy_url.render_as_string() == DEFAULT_SQLITE_URL
    assert settings.is_sqlite
    assert (settings.grpc_host, settings.grpc_port) == ("0.0.0.0", 50051)
    assert settings.jwt_algorithm == "HS256"
    assert settings.access_token_expire_minutes == 30


def test_db_host_selects_postgresql_through_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "DB_HOST": "db.internal",
        "DB_PORT": "6543",
        "DB_NAME": "tasks",
        "DB_USER": "svc",
        "DB_PASSWORD": "p@ss",
    }.items():
        monkeypatch.setenv(name, value)
    url = load_settings().sqlalchemy_url
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "db.internal",
        6543,
        "tasks",
        "svc",
        "p@ss",
    )


def test_database_url_wins_over_db_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "ignored")
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///other.db")
    assert load_settings().sqlalchemy_url.database == "other.db"


def test_a_sync_postgresql_url_is_mapped_to_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/d")
    assert load_settings().sqlalchemy_url.drivername == "postgresql+asyncpg"


def test_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GRPC_PORT=6000\nLOG_LEVEL=debug\n")
    settings = load_settings()
    assert (settings.grpc_port, settings.log_level) == (6000, "DEBUG")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRPC_PORT", "not-a-port"),
        ("GRPC_PORT", "70000"),
        ("DB_PORT", "0"),
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
        ("JWT_ALGORITHM", "none"),
        ("LOG_LEVEL", "chatty"),
        ("DEBUG", "maybe"),
        ("DATABASE_URL", "mysql+aiomysql://u@h/d"),
        ("DATABASE_URL", "::not a url::"),
        ("WATCH_BOOKMARK_SECONDS", "0"),
        ("WATCH_RETENTION_HOURS", "-1"),
        ("WATCH_RETENTION_HOURS", "soon"),
        ("WATCH_BUFFER_EVENTS", "0"),
        ("WATCH_MAX_STREAMS", "1.5"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(f"{name}:")
    assert "\n" not in message


def test_postgresql_without_a_signing_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db")
    with pytest.raises(ConfigError, match=r"^JWT_SECRET_KEY: required"):
        with_signing_key(load_settings())


def test_postgresql_with_a_short_signing_key_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_HOST", "db")
    monkeypatch.setenv("JWT_SECRET_KEY", "k" * (MIN_SECRET_KEY_BYTES - 1))
    with pytest.raises(ConfigError, match=f"at least {MIN_SECRET_KEY_BYTES} bytes"):
        with_signing_key(load_settings())


def test_postgresql_with_a_long_enough_key_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db")
    monkeypatch.setenv("JWT_SECRET_KEY", "k" * MIN_SECRET_KEY_BYTES)
    key = with_signing_key(load_settings()).jwt_secret_key
    assert key is not None
    assert key.get_secret_value() == "k" * MIN_SECRET_KEY_BYTES


def test_embedded_default_generates_a_private_development_key_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = with_signing_key(load_settings()).jwt_secret_key
    second = with_signing_key(load_settings()).jwt_secret_key
    assert first is not None
    assert second is not None
    assert first.get_secret_value() == second.get_secret_value()
    assert len(first.get_secret_value()) >= MIN_SECRET_KEY_BYTES
    key_file = tmp_path / ".taskservice-dev-jwt-key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert "development key" in caplog.text
    assert first.get_secret_value() not in caplog.text


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.grpc_port = 1  # type: ignore[misc]


def test_secrets_are_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("DB_PASSWORD", "hunter2-password")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:url-password@h/d")
    text = repr(Settings())
    assert "s" * 40 not in text
    assert "hunter2-password" not in text
    assert "url-password" not in text


def test_watch_retention_takes_fractions_of_an_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCH_RETENTION_HOURS", "0.25")
    settings = load_settings()
    assert settings.watch_retention_hours == 0.25
    assert (settings.watch_bookmark_seconds, settings.watch_buffer_events) == (15.0, 1000)
    assert settings.watch_max_streams == 10_000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRUSTED_PROXIES", "10.0.0.0/8, not-a-network"),
        ("CREDENTIAL_HASH_KEY", "too short"),
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "0"),
        ("THROTTLE_WINDOW_SECONDS", "0"),
        ("REFRESH_TOKEN_EXPIRE_DAYS", "0"),
    ],
)
def test_credential_and_throttle_settings_are_validated(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()

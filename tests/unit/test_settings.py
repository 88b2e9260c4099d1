"""Process settings: defaults, ``TOKENHUB_*`` variables, listen address, database URL mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from tokenhub.config import Settings, to_async_db_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the real environment: drop any TOKENHUB_* variable the shell may have set."""
    for name in list(os.environ):
        if name.upper().startswith("TOKENHUB_"):
            monkeypatch.delenv(name)


def test_defaults_listen_on_loopback_with_a_local_sqlite_file() -> None:
    settings = Settings()

    assert settings.listen_addr == "127.0.0.1:8090"
    assert (settings.host, settings.port) == ("127.0.0.1", 8090)
    assert settings.config is None
    assert settings.db_url == "sqlite:///data/tokenhub.db"
    assert settings.async_db_url == "sqlite+aiosqlite:///data/tokenhub.db"
    assert settings.log_level == "info"
    assert settings.log_format == "json"
    assert settings.default_mode == "normal"
    assert settings.provider_timeout_secs == 60.0
    assert settings.request_timeout_secs == 300.0
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.log_flush_interval_ms == 200


def test_tokenhub_variables_set_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENHUB_LISTEN_ADDR", "10.1.2.3:9000")
    monkeypatch.setenv("TOKENHUB_CONFIG", "/etc/tokenhub/catalog.yaml")
    monkeypatch.setenv("TOKENHUB_DB_URL", "postgresql://u:p@db:5432/hub")
    monkeypatch.setenv("TOKENHUB_LOG_LEVEL", "debug")
    monkeypatch.setenv("TOKENHUB_LOG_FORMAT", "console")
    monkeypatch.setenv("TOKENHUB_DEFAULT_MODE", "cheap")
    monkeypatch.setenv("TOKENHUB_PROVIDER_TIMEOUT_SECS", "12.5")
    monkeypatch.setenv("TOKENHUB_REQUEST_TIMEOUT_SECS", "90")
    monkeypatch.setenv("TOKENHUB_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("TOKENHUB_LOG_FLUSH_INTERVAL_MS", "50")

    settings = Settings()

    assert (settings.host, settings.port) == ("10.1.2.3", 9000)
    assert settings.config == Path("/etc/tokenhub/catalog.yaml")
    assert settings.db_url == "postgresql://u:p@db:5432/hub"
    assert settings.async_db_url == "postgresql+asyncpg://u:p@db:5432/hub"
    assert settings.log_level == "debug"
    assert settings.log_format == "console"
    assert settings.default_mode == "cheap"
    assert settings.provider_timeout_secs == 12.5
    assert settings.request_timeout_secs == 90.0
    assert settings.max_body_bytes == 1024
    assert settings.log_flush_interval_ms == 50


def test_log_level_and_format_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENHUB_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("TOKENHUB_LOG_FORMAT", "Console")

    settings = Settings()

    assert (settings.log_level, settings.log_format) == ("warning", "console")


def test_constructor_arguments_outrank_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENHUB_LISTEN_ADDR", "10.1.2.3:9000")

    assert Settings(listen_addr="127.0.0.1:7000").port == 7000


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_ADDR", "10.1.2.3:9000")
    monkeypatch.setenv("DB_URL", "postgresql://elsewhere/db")

    settings = Settings()

    assert settings.listen_addr == "127.0.0.1:8090"
    assert settings.db_url == "sqlite:///data/tokenhub.db"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENHUB_LOG_LEVEL", "verbose"),
        ("TOKENHUB_DEFAULT_MODE", "fastest"),
        ("TOKENHUB_PROVIDER_TIMEOUT_SECS", "0"),
        ("TOKENHUB_REQUEST_TIMEOUT_SECS", "-1"),
        ("TOKENHUB_MAX_BODY_BYTES", "lots"),
    ],
)
def test_a_bad_variable_is_a_validation_error(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("listen_addr", "host", "port"),
    [
        ("127.0.0.1:8090", "127.0.0.1", 8090),
        ("10.1.2.3:80", "10.1.2.3", 80),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:9000", "::1", 9000),
        ("gateway.internal:0", "gateway.internal", 0),
    ],
)
def test_listen_addr_splits_into_host_and_port(listen_addr: str, host: str, port: int) -> None:
    settings = Settings(listen_addr=listen_addr)

    assert (settings.host, settings.port) == (host, port)


@pytest.mark.parametrize(
    "listen_addr",
    ["localhost", "8090", ":8090", "localhost:", "localhost:http", "localhost:65536", "localhost:-1"],
)
def test_a_listen_addr_that_is_not_host_colon_port_is_refused(listen_addr: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(listen_addr=listen_addr)

    assert "host:port" in str(info.value)


def test_a_bad_listen_addr_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENHUB_LISTEN_ADDR", "8090")

    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x", "sqlite+aiosqlite:///x"),
        ("sqlite:///data/tokenhub.db", "sqlite+aiosqlite:///data/tokenhub.db"),
        ("sqlite:////abs/path.db", "sqlite+aiosqlite:////abs/path.db"),
        ("postgresql://u:p@db:5432/hub", "postgresql+asyncpg://u:p@db:5432/hub"),
        ("postgres://u:p@db/hub?sslmode=require", "postgresql+asyncpg://u:p@db/hub?sslmode=require"),
    ],
)
def test_plain_database_urls_map_to_the_async_driver(url: str, expected: str) -> None:
    assert to_async_db_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["sqlite+aiosqlite:///x.db", "postgresql+asyncpg://u@db/hub", "postgresql+psycopg://u@db/hub"],
)
def test_urls_that_already_name_a_driver_are_unchanged(url: str) -> None:
    assert to_async_db_url(url) == url


def test_a_string_without_a_scheme_is_not_a_database_url() -> None:
    with pytest.raises(ValueError, match="not a database URL"):
        to_async_db_url("data/tokenhub.db")


def test_async_db_url_follows_the_configured_db_url() -> None:
    assert Settings(db_url="postgres://db/hub").async_db_url == "postgresql+asyncpg://db/hub"

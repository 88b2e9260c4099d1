"""Process settings, read once at start-up from ``TOKENHUB_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Mode = Literal["cheap", "normal", "high_confidence", "planning", "adversarial"]
MODES: tuple[Mode, ...] = ("cheap", "normal", "high_confidence", "planning", "adversarial")

DEFAULT_DB_URL = "sqlite:///data/tokenhub.db"


class Settings(BaseSettings):
    """Everything the process needs that is not the provider/model catalogue.

    Constructor arguments outrank the environment, so tests build ``Settings(...)``.
    """

    model_config = SettingsConfigDict(env_prefix="TOKENHUB_", extra="ignore", frozen=True)

    listen_addr: str = "127.0.0.1:8090"
    config: Path | None = None
    db_url: str = DEFAULT_DB_URL
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    default_mode: Mode = "normal"
    # One upstream attempt (non-stream), or the wait for the first and each later chunk (stream).
    provider_timeout_secs: float = Field(default=60.0, gt=0, le=3600)
    # The whole request, failover included; below the openai SDK's own 600 s default.
    request_timeout_secs: float = Field(default=300.0, gt=0, le=3600)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    log_flush_interval_ms: int = Field(default=200, gt=0, le=60_000)

    # "keys": every /v1 request needs an API key; "none": open to anyone who can reach it (logged loudly);
    # unset: keys are required as soon as one exists.
    auth: Literal["keys", "none"] | None = None
    # Proxies whose X-Forwarded-For names the client (comma-separated addresses or networks; "*": any).
    forwarded_allow_ips: str = "127.0.0.1"
    # Encrypts provider API keys stored through the admin API; without it, only api_key_env is accepted.
    # Also keys the hashes of client API keys (else a random pepper kept in the database does).
    secret_key: str | None = Field(default=None, min_length=16)
    # How often every process checks the store for catalogue changes made elsewhere.
    catalog_poll_ms: int = Field(default=1000, ge=50, le=60_000)
    # Admin API: Authorization: Bearer <token>. Unset means the admin API refuses every request.
    admin_token: str | None = Field(default=None, min_length=16)
    # Show prompt and answer text in GET /admin/v1/workflows/{id}; off by default (summaries only).
    admin_show_content: bool = False
    # Keep-alive comments on GET /admin/v1/events, for proxies that close idle connections sooner.
    admin_events_keepalive_ms: int = Field(default=15_000, ge=100, le=300_000)

    # Temporal. The flag's start value only: PUT /admin/v1/temporal changes it, and the change persists.
    temporal_enabled: bool = False
    temporal_host: str = "localhost:7233"
    temporal_namespace: str = "tokenhub"
    temporal_task_queue: str = "tokenhub-tasks"
    # Run a worker inside the gateway process (eager start needs it); false when `tokenhub worker` runs apart.
    temporal_worker: bool = True
    # Bounds on the Temporal path before a request falls back to the direct path.
    temporal_start_timeout_ms: int = Field(default=2000, gt=0, le=60_000)
    temporal_pickup_timeout_ms: int = Field(default=3000, gt=0, le=60_000)
    # Consecutive Temporal faults that open the breaker, and how long it stays open before one probe.
    temporal_breaker_threshold: int = Field(default=3, ge=1, le=1000)
    temporal_breaker_cooldown_ms: int = Field(default=10_000, gt=0, le=3_600_000)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("listen_addr")
    @classmethod
    def _check_listen_addr(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, for example 127.0.0.1:8090")
        return value

    @property
    def host(self) -> str:
        return self.listen_addr.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen_addr.rpartition(":")[2])

    @property
    def async_db_url(self) -> str:
        return to_async_db_url(self.db_url)


def to_async_db_url(url: str) -> str:
    """Map a plain SQLAlchemy URL onto the async driver we ship for it.

    ``sqlite:///x.db`` → ``sqlite+aiosqlite:///x.db``; ``postgresql://`` and ``postgres://`` →
    ``postgresql+asyncpg://``. URLs that already name a driver are returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    if scheme == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    return url

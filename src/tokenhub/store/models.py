"""Rows as they cross into and out of the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RequestLog:
    """One request that reached the engine, however it ended.

    ``status`` is what the client was told: 200, an error status, or 499 when the client went away.
    A stream that broke after its first byte keeps the status its error maps to (it was not a success).
    """

    id: str
    request_id: str
    created_at: datetime
    model: str
    provider: str
    mode: str
    path: str
    stream: bool
    status: int
    reason: str
    attempts: int
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None = None
    error_class: str | None = None
    error_message: str | None = None
    api_key_id: str | None = None

    def as_row(self) -> dict[str, Any]:
        # Every field is a plain value: a shallow copy does what asdict's recursive deep copy would, ~50x
        # faster (measured 0.6 against 35 us a row).
        return dict(self.__dict__)


@dataclass(frozen=True)
class ProviderRow:
    """A provider as stored. ``api_key_encrypted`` is ciphertext (see ``store.secret_keys``), never a key."""

    id: str
    type: str
    base_url: str | None
    api_key_env: str | None
    api_key_encrypted: str | None
    options: dict[str, Any]
    enabled: bool
    updated_at: datetime


@dataclass(frozen=True)
class ModelRow:
    id: str
    provider_id: str
    upstream_model: str | None
    weight: float
    max_context_tokens: int
    input_per_1k: float
    output_per_1k: float
    enabled: bool
    updated_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class RelayedEvent:
    id: int
    at: datetime
    source: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class ApiKeyRow:
    """An API key as stored: never the secret, only its keyed hash (and the previous one's, in a grace)."""

    id: str
    name: str
    prefix: str
    hash: str
    previous_hash: str | None
    previous_valid_until: datetime | None
    scopes: list[str]
    models: list[str] | None
    budget_usd: float | None
    budget_period: str | None
    rpm: int | None
    tpm: int | None
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

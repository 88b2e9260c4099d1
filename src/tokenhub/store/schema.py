"""Table definitions (SQLAlchemy Core). One metadata object; SQLite and PostgreSQL share it."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

request_logs = Table(
    "request_logs",
    metadata,
    # Generated per request by the gateway, so a retried log write (a Temporal activity retry) is a no-op.
    Column("id", String(36), primary_key=True),
    Column("request_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("api_key_id", String(64), nullable=True),
    Column("model", String(128), nullable=False),
    Column("provider", String(128), nullable=False),
    Column("mode", String(32), nullable=False),
    Column("path", String(16), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_class", String(32), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("reason", String(64), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
)
# The log page reads newest first and continues from (created_at, id); the stats window scans created_at.
Index("ix_request_logs_created_at_id", request_logs.c.created_at, request_logs.c.id)
Index("ix_request_logs_request_id", request_logs.c.request_id)

# Settings changed at runtime (the Temporal flag, …) that must outlive a restart.
runtime_settings = Table(
    "runtime_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The providers and models the engine routes to. The config file seeds them at first start; the admin API
# changes them at runtime. A provider's literal API key is stored encrypted (never in plain text).
providers = Table(
    "providers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("base_url", Text, nullable=True),
    Column("api_key_env", String(128), nullable=True),
    Column("api_key_encrypted", Text, nullable=True),
    Column("options", Text, nullable=False),  # JSON
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("provider_id", String(128), nullable=False),
    Column("upstream_model", String(256), nullable=True),
    Column("weight", Float, nullable=False),
    Column("max_context_tokens", Integer, nullable=False),
    Column("input_per_1k", Float, nullable=False),
    Column("output_per_1k", Float, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Every admin change: who (the admin token's id), what, when.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("detail", Text, nullable=False),  # JSON
)

# Events from processes without an HTTP server (``tokenhub worker``), relayed to the gateways' event streams.
relayed_events = Table(
    "relayed_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("source", String(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("data", Text, nullable=False),  # JSON
)
Index("ix_relayed_events_at", relayed_events.c.at)


# API keys: only a keyed hash of each secret is kept. ``previous_hash`` stays valid until
# ``previous_valid_until`` after a rotation.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("previous_hash", String(64), nullable=True, unique=True),
    Column("previous_valid_until", DateTime(timezone=True), nullable=True),
    Column("scopes", Text, nullable=False),  # JSON list
    Column("models", Text, nullable=True),  # JSON list, or null for every model
    Column("budget_usd", Float, nullable=True),
    Column("budget_period", String(8), nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

# Spend per key and budget period, reserved before a call and settled after it (``store.spend``).
key_spend = Table(
    "key_spend",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("period", String(16), primary_key=True),
    Column("spent_usd", Float, nullable=False),
    Column("reserved_usd", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# GCRA state for rate limits shared by replicas (``store.ratelimit``): each bucket's theoretical arrival time
# (epoch seconds), and a time by which it has passed and the row can be pruned.
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("bucket", String(200), primary_key=True),
    Column("tat", Float, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
Index("ix_rate_counters_expires_at", rate_counters.c.expires_at)

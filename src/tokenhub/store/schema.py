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
Index("ix_request_logs_created_at", request_logs.c.created_at)
Index("ix_request_logs_request_id", request_logs.c.request_id)

# Settings changed at runtime (the Temporal flag, …) that must outlive a restart.
runtime_settings = Table(
    "runtime_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

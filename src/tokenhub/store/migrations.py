"""Versioned schema migrations: forward-only, numbered, applied at start-up or by ``tokenhub migrate``.

Each migration is a function of Alembic's ``Operations`` (so column changes work on SQLite too, in batch
mode) and records its number in ``schema_migrations`` in the same transaction. Migrations are history: a
migration's tables are written out as they were at that version, never imported from ``schema.py`` (which
is the current shape the queries use). Several processes starting at once are safe: PostgreSQL serialises
them on an advisory lock; on SQLite the loser of the race finds the version recorded and moves on.

Alembic's runner (``alembic.ini``, ``env.py``, autogenerate) is not used: the migrations ship inside the
package and need nothing but a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

log = structlog.get_logger(__name__)
LOCK_ID = 7_364_823  # any constant; names TokenHub's migration lock on PostgreSQL

_meta = MetaData()
schema_migrations = Table(
    "schema_migrations",
    _meta,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    upgrade: Callable[[Operations], None]


def _v1_baseline(op: Operations) -> None:
    if inspect(op.get_bind()).has_table("request_logs"):
        return  # a database made before migrations existed (by create_all): it already has this version
    op.create_table(
        "request_logs",
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
    op.create_index("ix_request_logs_created_at_id", "request_logs", ["created_at", "id"])
    op.create_index("ix_request_logs_request_id", "request_logs", ["request_id"])
    op.create_table(
        "runtime_settings",
        Column("key", String(64), primary_key=True),
        Column("value", Text, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "providers",
        Column("id", String(128), primary_key=True),
        Column("type", String(32), nullable=False),
        Column("base_url", Text, nullable=True),
        Column("api_key_env", String(128), nullable=True),
        Column("api_key_encrypted", Text, nullable=True),
        Column("options", Text, nullable=False),
        Column("enabled", Boolean, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "models",
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
    op.create_table(
        "audit_log",
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("actor", String(64), nullable=False),
        Column("action", String(64), nullable=False),
        Column("target", String(256), nullable=False),
        Column("detail", Text, nullable=False),
    )
    op.create_table(
        "relayed_events",
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("source", String(128), nullable=False),
        Column("type", String(64), nullable=False),
        Column("data", Text, nullable=False),
    )
    op.create_index("ix_relayed_events_at", "relayed_events", ["at"])


def _v2_access(op: Operations) -> None:
    op.create_table(
        "api_keys",
        Column("id", String(32), primary_key=True),
        Column("name", String(128), nullable=False),
        Column("prefix", String(16), nullable=False),
        Column("hash", String(64), nullable=False, unique=True),
        Column("previous_hash", String(64), nullable=True, unique=True),
        Column("previous_valid_until", DateTime(timezone=True), nullable=True),
        Column("scopes", Text, nullable=False),
        Column("models", Text, nullable=True),
        Column("budget_usd", Float, nullable=True),
        Column("budget_period", String(8), nullable=True),
        Column("rpm", Integer, nullable=True),
        Column("tpm", Integer, nullable=True),
        Column("expires_at", DateTime(timezone=True), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("revoked_at", DateTime(timezone=True), nullable=True),
        Column("last_used_at", DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "key_spend",
        Column("key_id", String(32), primary_key=True),
        Column("period", String(16), primary_key=True),
        Column("spent_usd", Float, nullable=False),
        Column("reserved_usd", Float, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rate_counters",
        Column("bucket", String(200), primary_key=True),
        Column("count", Integer, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rate_counters_expires_at", "rate_counters", ["expires_at"])


def _v3_gcra_rate_limits(op: Operations) -> None:
    # Rate limits refill continuously (GCRA) instead of counting per minute: one time per bucket replaces
    # the per-window counts. Those only ever held the current minute, so they are dropped, not converted.
    op.drop_index("ix_rate_counters_expires_at", "rate_counters")
    op.drop_table("rate_counters")
    op.create_table(
        "rate_counters",
        Column("bucket", String(200), primary_key=True),
        Column("tat", Float, nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rate_counters_expires_at", "rate_counters", ["expires_at"])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "request logs, runtime settings, catalogue, audit log, event relay", _v1_baseline),
    Migration(2, "API keys, their spend, rate-limit counters", _v2_access),
    Migration(3, "rate limits as continuously refilled buckets", _v3_gcra_rate_limits),
)


def migrate(conn: Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the migrations ``conn``'s database lacks, each in its own transaction; the versions applied."""
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        with conn.begin():
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": LOCK_ID})
    try:
        with conn.begin():
            schema_migrations.create(conn, checkfirst=True)
        applied = []
        for migration in migrations:
            try:
                with conn.begin():
                    done = conn.execute(
                        select(schema_migrations.c.version).where(
                            schema_migrations.c.version == migration.version
                        )
                    ).first()
                    if done is not None:
                        continue
                    migration.upgrade(Operations(MigrationContext.configure(conn)))
                    conn.execute(
                        insert(schema_migrations).values(
                            version=migration.version,
                            description=migration.description,
                            applied_at=datetime.now(UTC),
                        )
                    )
            except IntegrityError:
                continue  # another process applied it first (SQLite has no advisory lock)
            applied.append(migration.version)
            log.info("schema_migrated", version=migration.version, description=migration.description)
        return applied
    finally:
        if postgres:
            with conn.begin():
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": LOCK_ID})


def current_version(conn: Connection) -> int:
    """The newest migration applied (0 for a database without any)."""
    if not inspect(conn).has_table("schema_migrations"):
        return 0
    return int(
        conn.execute(
            select(schema_migrations.c.version).order_by(schema_migrations.c.version.desc())
        ).scalar()
        or 0
    )

"""Persistence. A leaf package: anyone may import it; it imports no other part of TokenHub."""

from tokenhub.store.audit import AuditStore, EventRelayStore
from tokenhub.store.catalog import CatalogStore
from tokenhub.store.models import AuditEntry, ModelRow, ProviderRow, RelayedEvent, RequestLog
from tokenhub.store.secret_keys import Secrets, SecretsUnavailable
from tokenhub.store.sql import SettingsStore, SQLStore, Store
from tokenhub.store.writer import RequestLogWriter

__all__ = [
    "AuditEntry",
    "AuditStore",
    "CatalogStore",
    "EventRelayStore",
    "ModelRow",
    "ProviderRow",
    "RelayedEvent",
    "RequestLog",
    "RequestLogWriter",
    "SQLStore",
    "Secrets",
    "SecretsUnavailable",
    "SettingsStore",
    "Store",
]

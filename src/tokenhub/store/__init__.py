"""Persistence. A leaf package: anyone may import it; it imports no other part of TokenHub."""

from tokenhub.store.models import RequestLog
from tokenhub.store.sql import SettingsStore, SQLStore, Store
from tokenhub.store.writer import RequestLogWriter

__all__ = ["RequestLog", "RequestLogWriter", "SQLStore", "SettingsStore", "Store"]

"""Configuration: process settings from the environment and the providers/models file."""

from tokenhub.config.catalog import (
    Catalog,
    ConfigError,
    FailKind,
    HTTPOptions,
    ModelConfig,
    ProviderConfig,
    ProviderType,
    SimulatedOptions,
    load_catalog,
)
from tokenhub.config.settings import MODES, Mode, Settings, to_async_db_url

__all__ = [
    "MODES",
    "Catalog",
    "ConfigError",
    "FailKind",
    "HTTPOptions",
    "Mode",
    "ModelConfig",
    "ProviderConfig",
    "ProviderType",
    "Settings",
    "SimulatedOptions",
    "load_catalog",
    "to_async_db_url",
]

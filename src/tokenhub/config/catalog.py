"""The providers/models file: loading, validation, and the one clear message a bad file gets."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ProviderType = Literal["openai", "anthropic", "simulated"]
FailKind = Literal["rate_limited", "transient", "timeout", "fatal", "context_overflow"]

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(Exception):
    """A configuration problem, worded for the operator: file, entry, field, what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatedOptions(_Strict):
    ttft_ms: float = Field(default=50.0, ge=0)
    tokens_per_s: float = Field(default=200.0, gt=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    fail_kind: FailKind = "transient"
    seed: int | None = None
    # How many tokens an answer has when the request sets no max_tokens.
    output_tokens: int = Field(default=24, ge=1, le=100_000)


class HTTPOptions(_Strict):
    """Options of the providers reached over HTTP."""

    max_connections: int = Field(default=256, ge=1, le=10_000)
    # Anthropic only: the API version header and the max_tokens it requires when a request sets none.
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(default=4096, ge=1)


class ProviderConfig(_Strict):
    id: str = Field(pattern=_ID)
    type: ProviderType
    base_url: str | None = None
    api_key_env: str | None = None
    options: SimulatedOptions | HTTPOptions = Field(default_factory=HTTPOptions)
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _typed_options(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_key" in data:
            raise ValueError(
                "api_key: keys never sit in the file; name an environment variable in api_key_env"
            )
        if isinstance(data, Mapping):
            options = data.get("options") or {}
            if not isinstance(options, Mapping):
                return data
            kind = SimulatedOptions if data.get("type") == "simulated" else HTTPOptions
            try:
                parsed = kind.model_validate(options)
            except ValidationError as exc:
                raise _NestedError("options", exc) from None
            return {**data, "options": parsed}
        return data

    @field_validator("base_url")
    @classmethod
    def _normalise_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not one
        except ValueError:
            raise ValueError("must be an http:// or https:// URL with a valid port") from None
        if not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        value = value.rstrip("/")
        scheme_and_host = value.split("/", 3)
        has_path = len(scheme_and_host) == 4
        return value[: -len("/v1")] if has_path and value.endswith("/v1") else value

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError("must be the name of an environment variable, not a key")
        return value

    @model_validator(mode="after")
    def _check_type_fields(self) -> ProviderConfig:
        if self.type != "simulated" and not self.base_url:
            raise ValueError(f"base_url: required for a provider of type {self.type}")
        return self


class ModelConfig(_Strict):
    id: str = Field(pattern=_ID)
    provider_id: str
    upstream_model: str | None = None
    weight: float = Field(default=5.0, ge=0, le=10)
    max_context_tokens: int = Field(default=8192, ge=1)
    input_per_1k: float = Field(default=0.0, ge=0)
    output_per_1k: float = Field(default=0.0, ge=0)
    enabled: bool = True


class _CatalogFile(_Strict):
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)


class _NestedError(ValueError):
    """Carries a nested ValidationError out of a before-validator with its location prefix."""

    def __init__(self, prefix: str, error: ValidationError) -> None:
        first = error.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        super().__init__(f"{prefix}.{loc}: {_short(first['msg'])}" if loc else f"{prefix}: {first['msg']}")


@dataclass(frozen=True)
class Catalog:
    """The validated providers and models of a config file (keys stay in their environment variables)."""

    providers: tuple[ProviderConfig, ...]
    models: tuple[ModelConfig, ...]

    @classmethod
    def empty(cls) -> Catalog:
        return cls(providers=(), models=())


def load_catalog(path: Path, environ: Mapping[str, str] | None = None) -> Catalog:
    """Read and validate the providers/models YAML file.

    Raises ``ConfigError`` whose message names the file, the entry and the field.
    """
    env = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: YAML error{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must be a mapping with 'providers' and 'models' lists")
    try:
        parsed = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, raw)}") from None
    return _check_references(path, parsed, env)


def _check_references(path: Path, parsed: _CatalogFile, env: Mapping[str, str]) -> Catalog:
    provider_ids: dict[str, int] = {}
    for i, provider in enumerate(parsed.providers):
        where = f'providers[{i}] (id "{provider.id}")'
        if provider.id in provider_ids:
            raise ConfigError(f"{path}: {where}: id: duplicate of providers[{provider_ids[provider.id]}]")
        provider_ids[provider.id] = i
        if provider.api_key_env and not env.get(provider.api_key_env):
            raise ConfigError(
                f"{path}: {where}: api_key_env: environment variable {provider.api_key_env} is not set"
            )
    model_ids: dict[str, int] = {}
    for i, model in enumerate(parsed.models):
        where = f'models[{i}] (id "{model.id}")'
        if model.id in model_ids:
            raise ConfigError(f"{path}: {where}: id: duplicate of models[{model_ids[model.id]}]")
        model_ids[model.id] = i
        if model.provider_id not in provider_ids:
            known = ", ".join(sorted(provider_ids)) or "none"
            raise ConfigError(
                f'{path}: {where}: provider_id: no provider "{model.provider_id}" (providers: {known})'
            )
        if model.id == "auto":
            raise ConfigError(f'{path}: {where}: id: "auto" is reserved for letting the engine choose')
    return Catalog(providers=tuple(parsed.providers), models=tuple(parsed.models))


def _describe(exc: ValidationError, raw: Mapping[str, Any]) -> str:
    """One line for the first error: the entry (with its id when it has one), the field, the problem."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    msg = _short(error["msg"])
    if len(loc) >= 2 and loc[0] in ("providers", "models") and isinstance(loc[1], int):
        section, index = str(loc[0]), loc[1]
        entries = raw.get(section)
        entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
        ident = entry.get("id") if isinstance(entry, Mapping) else None
        where = f"{section}[{index}]" + (f' (id "{ident}")' if isinstance(ident, str) else "")
        field = ".".join(str(p) for p in loc[2:] if not _is_union_tag(p))
        if not field and error["type"] == "value_error":
            return f"{where}: {msg}"
        if error["type"] == "extra_forbidden":
            return f"{where}: {field}: unknown field"
        return f"{where}: {field or '(entry)'}: {msg}"
    field = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown top-level key (expected 'providers' and 'models')"
    return f"{field}: {msg}"


def _is_union_tag(part: object) -> bool:
    return part in ("SimulatedOptions", "HTTPOptions")


def _short(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")

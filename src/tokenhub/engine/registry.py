"""The models the engine may route to, and the providers that serve them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from tokenhub.engine.providers.base import Provider, Target


@dataclass(frozen=True)
class ModelSpec:
    id: str
    provider_id: str
    upstream_model: str
    weight: float
    max_context_tokens: int
    input_per_1k: float
    output_per_1k: float
    created: int
    enabled: bool = True

    @cached_property
    def target(self) -> Target:
        return Target(model_id=self.id, upstream_model=self.upstream_model)

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens / 1000 * self.input_per_1k + output_tokens / 1000 * self.output_per_1k


class Registry:
    """A consistent view of models and providers. Lookups are dict reads; nothing here does I/O."""

    def __init__(
        self, models: Iterable[ModelSpec], providers: Mapping[str, Provider], enabled_providers: Iterable[str]
    ) -> None:
        self._providers = dict(providers)
        enabled = set(enabled_providers)
        self._models = {m.id: m for m in models}
        self._routable = tuple(
            m
            for m in self._models.values()
            if m.enabled and m.provider_id in enabled and m.provider_id in self._providers
        )
        self._routable_ids = {m.id: m for m in self._routable}

    def routable(self) -> tuple[ModelSpec, ...]:
        """Enabled models whose provider is enabled, in configuration order."""
        return self._routable

    def get_routable(self, model_id: str) -> ModelSpec | None:
        return self._routable_ids.get(model_id)

    def provider(self, provider_id: str) -> Provider:
        return self._providers[provider_id]

    def providers(self) -> Mapping[str, Provider]:
        return self._providers

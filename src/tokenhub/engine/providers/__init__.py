"""Provider adapters, and the one function that builds an adapter from its configuration."""

from tokenhub.config import ProviderConfig, SimulatedOptions
from tokenhub.engine.providers.anthropic import AnthropicProvider
from tokenhub.engine.providers.base import Chunk, Provider, Target
from tokenhub.engine.providers.openai_compat import OpenAICompatProvider
from tokenhub.engine.providers.simulated import SimulatedProvider
from tokenhub.engine.providers.upstream import UpstreamClient

__all__ = [
    "AnthropicProvider",
    "Chunk",
    "OpenAICompatProvider",
    "Provider",
    "SimulatedProvider",
    "Target",
    "UpstreamClient",
    "build_provider",
]


def build_provider(config: ProviderConfig, api_key: str | None, *, connect_timeout: float) -> Provider:
    """An adapter for ``config``; HTTP providers get their own pooled client (opened by ``start()``)."""
    if isinstance(config.options, SimulatedOptions):
        return SimulatedProvider(config.id, config.options)
    options = config.options
    headers: dict[str, str] = {}
    if config.type == "anthropic":
        headers["anthropic-version"] = options.anthropic_version
        if api_key:
            headers["x-api-key"] = api_key
    elif api_key:
        headers["authorization"] = f"Bearer {api_key}"
    client = UpstreamClient(
        provider_id=config.id,
        base_url=config.base_url or "",
        headers=headers,
        max_connections=options.max_connections,
        connect_timeout=connect_timeout,
        secret=api_key,
    )
    if config.type == "anthropic":
        return AnthropicProvider(config.id, client, default_max_tokens=options.default_max_tokens)
    return OpenAICompatProvider(config.id, client)

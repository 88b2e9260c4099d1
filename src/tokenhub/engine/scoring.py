"""Which models may take a request, and in what order to try them.

Score (lower is better) = wC·cost + wL·latency + wF·error_rate - wW·weight, each term normalised by its
maximum over the candidates, with per-mode weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenhub.config import Mode
from tokenhub.engine.errors import IneligibleReason
from tokenhub.engine.health import HealthTracker
from tokenhub.engine.registry import ModelSpec
from tokenhub.engine.types import Policy

# (cost, latency, failure, weight)
MODE_WEIGHTS: dict[Mode, tuple[float, float, float, float]] = {
    "cheap": (0.7, 0.1, 0.1, 0.1),
    "normal": (0.25, 0.25, 0.25, 0.25),
    "high_confidence": (0.05, 0.1, 0.15, 0.7),
    "planning": (0.1, 0.1, 0.2, 0.6),
    "adversarial": (0.1, 0.1, 0.2, 0.6),
}
# Estimates are ~4 characters a token; leave room for a tokenizer that counts more.
CONTEXT_SAFETY = 1.1
DEFAULT_OUTPUT_ESTIMATE = 512


@dataclass(frozen=True)
class Estimate:
    input_tokens: int
    output_limit: int | None

    @property
    def output_tokens(self) -> int:
        return self.output_limit or DEFAULT_OUTPUT_ESTIMATE


# Below this many affordable output tokens a model is not worth calling under a budget.
MIN_USEFUL_OUTPUT = 16


def output_cap(model: ModelSpec, policy: Policy, estimate: Estimate) -> int | None:
    """The most output tokens ``model`` may generate within ``policy.max_budget_usd``, or None when the
    budget does not constrain it. Sent as the call's max_tokens, it makes the budget a hard limit."""
    if policy.max_budget_usd is None or model.output_per_1k <= 0:
        return None
    input_cost = int(estimate.input_tokens * CONTEXT_SAFETY) / 1000 * model.input_per_1k
    affordable = int((policy.max_budget_usd - input_cost) / model.output_per_1k * 1000)
    return affordable if estimate.output_limit is None else min(affordable, estimate.output_limit)


def ineligibility(
    model: ModelSpec, policy: Policy, estimate: Estimate, health: HealthTracker
) -> IneligibleReason | None:
    """Why ``model`` may not take the request, or None when it may."""
    if model.weight < policy.min_weight:
        return "min_weight"
    if int(estimate.input_tokens * CONTEXT_SAFETY) + (estimate.output_limit or 0) > model.max_context_tokens:
        return "context_window"
    budget = policy.max_budget_usd
    if budget is not None and not _affordable(model, budget, output_cap(model, policy, estimate), estimate):
        return "budget"
    if not health.is_available(model.provider_id):
        return "unhealthy"
    latency = health.latency_ms(model.provider_id)
    if policy.max_latency_ms is not None and latency is not None and latency > policy.max_latency_ms:
        return "latency"
    return None


def _affordable(model: ModelSpec, budget: float, cap: int | None, estimate: Estimate) -> bool:
    if cap is None:  # output is free: only the prompt costs
        return model.cost_usd(int(estimate.input_tokens * CONTEXT_SAFETY), 0) <= budget
    return cap >= min(MIN_USEFUL_OUTPUT, estimate.output_limit or MIN_USEFUL_OUTPUT)


def rank(
    models: Sequence[ModelSpec], policy: Policy, estimate: Estimate, health: HealthTracker
) -> list[ModelSpec]:
    """Order eligible ``models`` best first (ties: heavier weight, then id)."""
    return [model for model, _ in scores(models, policy, estimate, health)]


def scores(
    models: Sequence[ModelSpec], policy: Policy, estimate: Estimate, health: HealthTracker
) -> list[tuple[ModelSpec, float]]:
    """Each eligible model with its score (lower is better), best first. Each criterion counts as its share
    of the largest value among ``models`` (none, when that is 0), times the mode's weight for it."""
    w_cost, w_latency, w_failure, w_weight = MODE_WEIGHTS[policy.mode]
    inputs, outputs = estimate.input_tokens, estimate.output_tokens
    # One pass for the values and their maxima (a pass per criterion cost twice as much, on every request).
    rows = []
    top_cost = top_latency = top_failure = top_weight = 0.0
    for m in models:
        cost = m.cost_usd(inputs, outputs)
        latency = health.latency_ms(m.provider_id) or 0.0
        failure = health.error_rate(m.provider_id)
        rows.append((m, cost, latency, failure))
        if cost > top_cost:
            top_cost = cost
        if latency > top_latency:
            top_latency = latency
        if failure > top_failure:
            top_failure = failure
        if m.weight > top_weight:
            top_weight = m.weight
    scored = [
        (
            m,
            (w_cost * (cost / top_cost) if top_cost > 0 else 0.0)
            + (w_latency * (latency / top_latency) if top_latency > 0 else 0.0)
            + (w_failure * (failure / top_failure) if top_failure > 0 else 0.0)
            - (w_weight * (m.weight / top_weight) if top_weight > 0 else 0.0),
        )
        for m, cost, latency, failure in rows
    ]
    if len(scored) > 1:
        scored.sort(key=lambda pair: (pair[1], -pair[0].weight, pair[0].id))
    return scored

"""Which models may take a request, in what order, and how provider health moves between states."""

from __future__ import annotations

import pytest

from tokenhub.config import Mode
from tokenhub.engine import HealthTracker, ModelSpec, Policy, UpstreamError
from tokenhub.engine.health import HealthState, counts_against_provider
from tokenhub.engine.scoring import MODE_WEIGHTS, Estimate, ineligibility, output_cap, rank, scores


class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spec(
    model_id: str,
    *,
    provider_id: str | None = None,
    weight: float = 5.0,
    max_context_tokens: int = 8192,
    input_per_1k: float = 0.0,
    output_per_1k: float = 0.0,
) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider_id=provider_id or f"p-{model_id}",
        upstream_model=model_id,
        weight=weight,
        max_context_tokens=max_context_tokens,
        input_per_1k=input_per_1k,
        output_per_1k=output_per_1k,
        created=0,
    )


def transient(status: int | None = 503) -> UpstreamError:
    return UpstreamError("transient", "upstream 5xx", status=status)


def fail(health: HealthTracker, provider_id: str, times: int, error: UpstreamError | None = None) -> None:
    for _ in range(times):
        health.record_failure(provider_id, error or transient())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> HealthTracker:
    return HealthTracker(clock=clock)


# A typical catalogue: price rises with quality.
MINI = spec("mini", weight=3, input_per_1k=0.00015, output_per_1k=0.0006)
MID = spec("mid", weight=6, input_per_1k=0.001, output_per_1k=0.004)
LARGE = spec("large", weight=9, input_per_1k=0.01, output_per_1k=0.03)
ESTIMATE = Estimate(input_tokens=500, output_limit=200)


# --- ranking ---------------------------------------------------------------------------------------


def ranked_ids(models: list[ModelSpec], mode: Mode, health: HealthTracker) -> list[str]:
    return [m.id for m in rank(models, Policy(mode=mode), ESTIMATE, health)]


def test_cheap_mode_prefers_the_cheapest_model(health: HealthTracker) -> None:
    assert ranked_ids([LARGE, MID, MINI], "cheap", health) == ["mini", "mid", "large"]


@pytest.mark.parametrize("mode", ["high_confidence", "planning", "adversarial"])
def test_confidence_modes_prefer_the_heaviest_model(health: HealthTracker, mode: Mode) -> None:
    assert ranked_ids([MINI, MID, LARGE], mode, health) == ["large", "mid", "mini"]


def test_cheap_mode_takes_a_cheaper_model_even_when_it_is_much_lighter(health: HealthTracker) -> None:
    light_cheap = spec("light", weight=1, input_per_1k=0.0001, output_per_1k=0.0001)
    heavy_dear = spec("heavy", weight=10, input_per_1k=0.01, output_per_1k=0.01)

    assert ranked_ids([heavy_dear, light_cheap], "cheap", health) == ["light", "heavy"]
    assert ranked_ids([light_cheap, heavy_dear], "high_confidence", health) == ["heavy", "light"]


def test_equal_models_are_ordered_by_id(health: HealthTracker) -> None:
    models = [spec("charlie"), spec("alpha"), spec("bravo")]

    assert ranked_ids(models, "normal", health) == ["alpha", "bravo", "charlie"]


def test_a_provider_with_recent_errors_ranks_after_a_clean_one(health: HealthTracker) -> None:
    fail(health, "p-alpha", 1)  # one error: still healthy and available, but its error rate is up

    assert health.is_available("p-alpha")
    assert ranked_ids([spec("alpha"), spec("bravo")], "normal", health) == ["bravo", "alpha"]


def test_a_slower_provider_ranks_after_a_faster_one(health: HealthTracker) -> None:
    health.record_success("p-alpha", 2000.0)
    health.record_success("p-bravo", 200.0)

    assert ranked_ids([spec("alpha"), spec("bravo")], "normal", health) == ["bravo", "alpha"]


def test_ranking_one_or_no_model_returns_it_unchanged(health: HealthTracker) -> None:
    assert rank([], Policy(), ESTIMATE, health) == []
    assert rank([MINI], Policy(), ESTIMATE, health) == [MINI]


def test_a_score_is_each_criterion_as_a_share_of_its_largest_value_times_the_modes_weight(
    health: HealthTracker,
) -> None:
    """What ``/admin/v1/simulate`` shows: per criterion, the model's share of the largest value among the
    candidates, weighted by the mode; weight counts in the model's favour. One model alone scores its
    criteria at 1 where they are above 0."""
    health.record_success("p-mini", 400.0)
    health.record_success("p-large", 100.0)
    fail(health, "p-large", 1)
    w_cost, w_latency, w_failure, w_weight = MODE_WEIGHTS["normal"]
    cost = {m.id: m.cost_usd(500, 200) for m in (MINI, MID, LARGE)}
    failure = health.error_rate("p-large")

    scored = {m.id: score for m, score in scores([MINI, MID, LARGE], Policy(), ESTIMATE, health)}

    assert scored["mini"] == pytest.approx(
        w_cost * cost["mini"] / cost["large"] + w_latency - w_weight * 3 / 9
    )
    assert scored["mid"] == pytest.approx(w_cost * cost["mid"] / cost["large"] - w_weight * 6 / 9)
    assert scored["large"] == pytest.approx(w_cost + w_latency * 100 / 400 + w_failure - w_weight)
    assert failure > 0
    [(alone, score)] = scores([MID], Policy(), ESTIMATE, health)
    assert alone is MID and score == pytest.approx(w_cost - w_weight)


# --- eligibility -----------------------------------------------------------------------------------


def test_a_model_lighter_than_min_weight_is_ineligible(health: HealthTracker) -> None:
    policy = Policy(min_weight=6)

    assert ineligibility(MINI, policy, ESTIMATE, health) == "min_weight"
    assert ineligibility(MID, policy, ESTIMATE, health) is None  # exactly the minimum is enough


def test_a_prompt_over_the_context_window_with_safety_margin_is_ineligible(health: HealthTracker) -> None:
    model = spec("small", max_context_tokens=1000)

    # 900 input tokens with the 10% margin is 990: fits. 910 becomes 1001: does not.
    assert ineligibility(model, Policy(), Estimate(900, None), health) is None
    assert ineligibility(model, Policy(), Estimate(910, None), health) == "context_window"


def test_the_requested_output_limit_counts_against_the_context_window(health: HealthTracker) -> None:
    model = spec("small", max_context_tokens=1000)

    assert ineligibility(model, Policy(), Estimate(400, 500), health) is None  # 440 + 500
    assert ineligibility(model, Policy(), Estimate(400, 600), health) == "context_window"  # 440 + 600


def test_a_budget_caps_the_output_and_rules_out_models_that_cannot_say_anything(
    health: HealthTracker,
) -> None:
    # 1000 estimated input tokens, counted as 1100 for safety, at 0.01/1k = 0.011; output at 0.03/1k.
    model = spec("dear", input_per_1k=0.01, output_per_1k=0.03)

    # The prompt alone eats the budget: nothing left to answer with.
    assert ineligibility(model, Policy(max_budget_usd=0.011), Estimate(1000, None), health) == "budget"
    # 0.001 left buys 33 output tokens: worth a call, and the call is capped at 33.
    assert ineligibility(model, Policy(max_budget_usd=0.012), Estimate(1000, None), health) is None
    assert output_cap(model, Policy(max_budget_usd=0.012), Estimate(1000, None)) == 33
    # The client's own max_tokens stands when the budget affords it...
    assert output_cap(model, Policy(max_budget_usd=0.02), Estimate(1000, 100)) == 100
    # ...and is cut to what the budget affords when it does not (0.0016 / 0.03 per 1k = 53.3, rounded down).
    assert output_cap(model, Policy(max_budget_usd=0.0126), Estimate(1000, 100)) == 53
    # Fewer than 16 affordable tokens is not a useful answer.
    assert ineligibility(model, Policy(max_budget_usd=0.0112), Estimate(1000, 100), health) == "budget"
    # Without a budget nothing is capped.
    assert output_cap(model, Policy(), Estimate(1000, None)) is None


def test_a_model_on_a_provider_that_is_down_is_ineligible_until_the_cooldown_ends(
    health: HealthTracker, clock: FakeClock
) -> None:
    fail(health, MID.provider_id, 5)

    assert ineligibility(MID, Policy(), ESTIMATE, health) == "unhealthy"
    clock.advance(30)
    assert ineligibility(MID, Policy(), ESTIMATE, health) is None


def test_a_model_on_a_rate_limited_provider_is_ineligible_while_it_backs_off(
    health: HealthTracker, clock: FakeClock
) -> None:
    health.record_failure(MID.provider_id, UpstreamError("rate_limited", "429", status=429, retry_after=3))

    assert ineligibility(MID, Policy(), ESTIMATE, health) == "unhealthy"
    clock.advance(3)
    assert ineligibility(MID, Policy(), ESTIMATE, health) is None


def test_a_model_slower_than_max_latency_is_ineligible(health: HealthTracker) -> None:
    health.record_success(MID.provider_id, 900.0)

    assert ineligibility(MID, Policy(max_latency_ms=500), ESTIMATE, health) == "latency"
    assert ineligibility(MID, Policy(max_latency_ms=1000), ESTIMATE, health) is None


def test_a_model_with_no_latency_data_passes_a_latency_limit(health: HealthTracker) -> None:
    assert ineligibility(MID, Policy(max_latency_ms=1), ESTIMATE, health) is None


def test_a_model_within_every_limit_is_eligible(health: HealthTracker) -> None:
    policy = Policy(max_budget_usd=1.0, max_latency_ms=10_000, min_weight=1)

    assert ineligibility(LARGE, policy, ESTIMATE, health) is None


# --- health ----------------------------------------------------------------------------------------


def test_an_unknown_provider_is_healthy_and_available(health: HealthTracker) -> None:
    snap = health.snapshot("p")

    assert health.is_available("p")
    assert (snap.state, snap.consecutive_errors, snap.ewma_latency_ms, snap.error_rate) == (
        "healthy",
        0,
        None,
        0.0,
    )
    assert health.retry_after("p") == 0.0


def test_health_goes_degraded_after_two_errors_and_down_after_five(clock: FakeClock) -> None:
    changes: list[tuple[str, HealthState, HealthState]] = []
    health = HealthTracker(clock=clock, on_change=lambda p, old, new: changes.append((p, old, new)))

    fail(health, "p", 1)
    assert health.snapshot("p").state == "healthy"
    fail(health, "p", 1)
    assert health.snapshot("p").state == "degraded"
    assert health.is_available("p")  # degraded providers still take traffic
    fail(health, "p", 2)
    assert health.snapshot("p").state == "degraded"
    fail(health, "p", 1)

    snap = health.snapshot("p")
    assert (snap.state, snap.consecutive_errors) == ("down", 5)
    assert not health.is_available("p")
    assert snap.cooldown_remaining_s == 30.0
    assert changes == [("p", "healthy", "degraded"), ("p", "degraded", "down")]


def test_a_down_provider_is_retried_after_the_cooldown_and_recovers_on_success(
    health: HealthTracker, clock: FakeClock
) -> None:
    fail(health, "p", 5)

    clock.advance(29.5)
    assert not health.is_available("p")
    assert health.retry_after("p") == pytest.approx(0.5)
    clock.advance(0.5)
    assert health.is_available("p")
    health.record_success("p", 120.0)

    snap = health.snapshot("p")
    assert (snap.state, snap.consecutive_errors, snap.cooldown_remaining_s) == ("healthy", 0, 0.0)


def test_a_failure_after_the_cooldown_puts_the_provider_down_again(
    health: HealthTracker, clock: FakeClock
) -> None:
    fail(health, "p", 5)
    clock.advance(30)

    fail(health, "p", 1)

    assert health.snapshot("p").state == "down"
    assert not health.is_available("p")
    assert health.retry_after("p") == 30.0


def test_a_success_resets_the_consecutive_error_count(health: HealthTracker) -> None:
    fail(health, "p", 1)
    health.record_success("p", None)
    fail(health, "p", 1)

    assert health.snapshot("p").state == "healthy"
    assert health.snapshot("p").consecutive_errors == 1


def test_a_success_brings_a_degraded_provider_back_to_healthy(health: HealthTracker) -> None:
    fail(health, "p", 3)

    health.record_success("p", None)

    assert health.snapshot("p").state == "healthy"


def test_rate_limiting_cools_the_provider_down_for_retry_after_without_changing_state(
    health: HealthTracker, clock: FakeClock
) -> None:
    health.record_failure("p", UpstreamError("rate_limited", "slow down", status=429, retry_after=7))

    snap = health.snapshot("p")
    assert (snap.state, snap.consecutive_errors) == ("healthy", 0)
    assert not health.is_available("p")
    assert health.retry_after("p") == 7.0
    clock.advance(6.9)
    assert not health.is_available("p")
    clock.advance(0.1)
    assert health.is_available("p")


def test_rate_limiting_without_retry_after_backs_off_for_one_second(
    health: HealthTracker, clock: FakeClock
) -> None:
    health.record_failure("p", UpstreamError("rate_limited", "slow down", status=429))

    assert health.retry_after("p") == 1.0
    clock.advance(1)
    assert health.is_available("p")


def test_rate_limiting_never_shortens_a_longer_cooldown(health: HealthTracker) -> None:
    fail(health, "p", 5)

    health.record_failure("p", UpstreamError("rate_limited", "slow down", status=429, retry_after=1))

    assert health.retry_after("p") == 30.0


def test_repeated_rate_limits_never_make_a_provider_degraded(health: HealthTracker) -> None:
    for _ in range(10):
        health.record_failure("p", UpstreamError("rate_limited", "slow down", status=429, retry_after=1))

    assert health.snapshot("p").state == "healthy"


@pytest.mark.parametrize(
    "error",
    [
        UpstreamError("fatal", "bad request", status=400),
        UpstreamError("fatal", "not found", status=404),
        UpstreamError("fatal", "too large", status=413),
        UpstreamError("fatal", "unprocessable", status=422),
        UpstreamError("context_overflow", "prompt too long", status=400),
    ],
    ids=["fatal-400", "fatal-404", "fatal-413", "fatal-422", "context-overflow"],
)
def test_client_fault_errors_do_not_count_against_the_provider(
    clock: FakeClock, error: UpstreamError
) -> None:
    changes: list[tuple[str, HealthState, HealthState]] = []
    health = HealthTracker(clock=clock, on_change=lambda p, old, new: changes.append((p, old, new)))

    fail(health, "p", 10, error)

    snap = health.snapshot("p")
    assert not counts_against_provider(error)
    assert (snap.state, snap.consecutive_errors, snap.error_rate) == ("healthy", 0, 0.0)
    assert health.is_available("p")
    assert changes == []


@pytest.mark.parametrize(
    "error",
    [
        UpstreamError("fatal", "bad key", status=401),
        UpstreamError("fatal", "forbidden", status=403),
        UpstreamError("timeout", "no first token"),
        UpstreamError("transient", "connection reset"),
    ],
    ids=["fatal-401", "fatal-403", "timeout", "transient-no-status"],
)
def test_provider_side_failures_count_against_the_provider(
    health: HealthTracker, error: UpstreamError
) -> None:
    fail(health, "p", 2, error)

    assert counts_against_provider(error)
    assert health.snapshot("p").state == "degraded"


def test_latency_is_an_ewma_of_non_streaming_calls(health: HealthTracker) -> None:
    health.record_success("p", 100.0)
    assert health.snapshot("p").ewma_latency_ms == 100.0

    health.record_success("p", 200.0)  # 0.9 * 100 + 0.1 * 200
    assert health.snapshot("p").ewma_latency_ms == pytest.approx(110.0)

    health.record_success("p", None)  # a stream's length says nothing of speed
    assert health.snapshot("p").ewma_latency_ms == pytest.approx(110.0)


def test_error_rate_rises_on_failure_and_decays_on_success(health: HealthTracker) -> None:
    fail(health, "p", 1)
    assert health.snapshot("p").error_rate == pytest.approx(0.1)

    health.record_success("p", None)
    assert health.snapshot("p").error_rate == pytest.approx(0.09)


def test_providers_are_tracked_independently(health: HealthTracker) -> None:
    fail(health, "a", 5)

    assert not health.is_available("a")
    assert health.is_available("b")
    assert health.snapshot("b").state == "healthy"


def test_last_error_is_recorded_for_operators(health: HealthTracker) -> None:
    health.record_failure("p", UpstreamError("transient", "connection reset", provider_id="p", model_id="m"))

    assert health.snapshot("p").last_error == "p/m: transient: connection reset"

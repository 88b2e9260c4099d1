"""The engine: choose models for a request, call them, fail over by error class.

``route_and_send`` answers a non-streaming request; ``open_stream`` returns a stream whose first content
is in hand (failover ends there, since the client has seen nothing before it). Both are bounded by the
request deadline and honour cancellation: cancelling the caller closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import orjson

from tokenhub.engine.errors import (
    IneligibleReason,
    ModelNotAllowed,
    ModelNotFound,
    NoEligibleModel,
    OutputInvalid,
    RoutingFailed,
    UpstreamError,
)
from tokenhub.engine.health import HealthTracker
from tokenhub.engine.orchestration import (
    CallResult,
    ModelCall,
    OrchestrationDirective,
    OrchestrationResult,
    orchestrate,
)
from tokenhub.engine.providers.base import UpstreamChunk, estimate_tokens
from tokenhub.engine.registry import ModelSpec, Registry
from tokenhub.engine.scoring import (
    CONTEXT_SAFETY,
    DEFAULT_OUTPUT_ESTIMATE,
    Estimate,
    ineligibility,
    output_cap,
    scores,
)
from tokenhub.engine.shaping import Shaping, shape_completion, validate_value
from tokenhub.engine.streaming import ChatStream, ChunkNormaliser, is_substantive
from tokenhub.engine.types import ChatCompletion, ChatRequest, Decision, Policy, TokenCount
from tokenhub.engine.upstream_time import charge
from tokenhub.telemetry import EventBus, Metrics

T = TypeVar("T")
AUTO = "auto"
_NO_TIMER = contextlib.nullcontext()


@dataclass(frozen=True)
class Routed:
    """A non-streaming answer and how it was obtained."""

    completion: ChatCompletion
    decision: Decision
    tokens: TokenCount
    cost_usd: float


@dataclass(frozen=True)
class Simulation:
    """A routing decision laid open: eligible models best first with their scores (lower is better), and
    why every other model was skipped."""

    ranked: list[tuple[ModelSpec, float]]
    ineligible: Mapping[str, IneligibleReason]
    estimate: Estimate


@dataclass(frozen=True)
class Reservation:
    """Money set aside for one call; ``settle`` it with what the call really cost."""

    account: str
    period: str
    amount_usd: float


class SpendGuard(Protocol):
    """Budgets of the accounts paying for calls. ``reserve`` raises ``QuotaExceeded`` when there is no
    room, and returns None for an account without a budget (nothing to hold back). ``settle`` completes
    even when its caller is cancelled meanwhile."""

    def spends(self, account: str) -> bool:
        """Whether calls ``account`` pays for reserve and settle in a budget (and so wait on a store)."""
        ...

    async def reserve(self, account: str, amount_usd: float) -> Reservation | None: ...

    async def settle(self, reservation: Reservation, actual_usd: float) -> None: ...


@dataclass(frozen=True)
class Limits:
    """Seconds. ``attempt``: one non-stream call, or the wait for each chunk of a stream.
    ``request``: everything for one request, failover included."""

    attempt: float
    request: float
    transient_retries: int = 2
    backoff_base: float = 0.1


class Engine:
    def __init__(
        self,
        registry: Registry,
        health: HealthTracker,
        metrics: Metrics,
        events: EventBus,
        limits: Limits,
        *,
        spend: SpendGuard | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.health = health
        self._metrics = metrics
        self._events = events
        self._limits = limits
        self._spend = spend
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def plan(
        self,
        request: ChatRequest,
        policy: Policy,
        *,
        pin: bool = False,
        exclude: Collection[str] = (),
        avoid: Collection[str] = (),
    ) -> tuple[list[ModelSpec], Estimate]:
        """The models to try, best first. A named model goes first when it may take the request; with
        ``pin`` it is the only one. Models in ``exclude`` are never tried, those in ``avoid`` last.

        Raises ``ModelNotFound`` for an unknown name and ``NoEligibleModel`` when nothing may serve.
        """
        ranked, reasons, estimate = self._consider(request, policy, pin, exclude, avoid)
        if not ranked:
            raise self._none_eligible(reasons)
        return [model for model, _ in ranked], estimate

    def _none_eligible(self, reasons: dict[str, IneligibleReason]) -> NoEligibleModel:
        waits = [
            self.health.retry_after(m.provider_id)
            for m in self.registry.routable()
            if reasons.get(m.id) == "unhealthy"
        ]
        return NoEligibleModel(reasons, retry_after=min(waits) if waits else None)

    def simulate(
        self,
        request: ChatRequest,
        policy: Policy,
        *,
        pin: bool = False,
        exclude: Collection[str] = (),
        avoid: Collection[str] = (),
    ) -> Simulation:
        """How ``plan`` would decide, without deciding: every candidate's score and every skipped model's
        reason. Raises ``ModelNotFound`` for an unknown name."""
        ranked, reasons, estimate = self._consider(request, policy, pin, exclude, avoid)
        return Simulation(ranked=ranked, ineligible=reasons, estimate=estimate)

    def _consider(
        self,
        request: ChatRequest,
        policy: Policy,
        pin: bool,
        exclude: Collection[str],
        avoid: Collection[str],
    ) -> tuple[list[tuple[ModelSpec, float]], dict[str, IneligibleReason], Estimate]:
        named = self._named(request, policy)
        estimate = _estimate(request)
        considered = (named,) if pin and named is not None else self.registry.routable()
        ranked, reasons = self._rank(considered, policy, estimate, exclude, avoid)
        # A stable sort: a named model first, the order of the others stays.
        if named is not None:
            ranked.sort(key=lambda pair: pair[0] is not named)
        return ranked, reasons, estimate

    def _named(self, request: ChatRequest, policy: Policy) -> ModelSpec | None:
        """The model the request names (None for ``auto``); ``ModelNotFound``, ``ModelNotAllowed``."""
        if not request.model or request.model == AUTO:
            return None
        named = self.registry.get_routable(request.model)
        if named is None:
            raise ModelNotFound(request.model)
        if policy.allowed_models is not None and named.id not in policy.allowed_models:
            raise ModelNotAllowed(named.id)
        return named

    def _rank(
        self,
        considered: Sequence[ModelSpec],
        policy: Policy,
        estimate: Estimate,
        exclude: Collection[str],
        avoid: Collection[str],
    ) -> tuple[list[tuple[ModelSpec, float]], dict[str, IneligibleReason]]:
        """The eligible models of ``considered`` with their scores, best first, avoided ones last; and why
        each other one is not eligible."""
        if policy.allowed_models is not None:
            considered = tuple(m for m in considered if m.id in policy.allowed_models)
        eligible: list[ModelSpec] = []
        reasons: dict[str, IneligibleReason] = {}
        for model in (m for m in considered if m.id not in exclude):
            why = ineligibility(model, policy, estimate, self.health)
            if why is None:
                eligible.append(model)
            else:
                reasons[model.id] = why
        ranked = scores(eligible, policy, estimate, self.health)
        if avoid:  # stable: the order within each group stays
            ranked.sort(key=lambda pair: pair[0].id in avoid)
        return ranked, reasons

    def _lineup(
        self,
        request: ChatRequest,
        policy: Policy,
        *,
        pin: bool = False,
        exclude: Collection[str] = (),
        avoid: Collection[str] = (),
    ) -> tuple[ModelSpec, Callable[[Collection[str]], list[ModelSpec]], Estimate]:
        """``plan``'s first model, and the others as ``following(tried)``, ranked once a model has failed, by
        the health known then: a provider that has just gone down or asked to wait is not called again
        through another of its models. A named model that may take the request goes first without ranking
        anything, since ranking scores every routable model (with 30 models in the catalogue, that was 15 %
        of the gateway's CPU a request: ``bench/ab.py --models 30``, both ways round)."""
        named = self._named(request, policy)
        estimate = _estimate(request)
        if (
            named is not None
            and named.id not in exclude
            and ineligibility(named, policy, estimate, self.health) is None
        ):
            first = named
        else:  # nothing named, or a named model that may not take it (so not among the ranked): the best
            considered = (named,) if pin and named is not None else self.registry.routable()
            ranked, reasons = self._rank(considered, policy, estimate, exclude, avoid)
            if not ranked:
                raise self._none_eligible(reasons)
            first = ranked[0][0]

        def following(tried: Collection[str]) -> list[ModelSpec]:
            if pin and named is not None:  # the named model alone
                return []
            ranked, _ = self._rank(self.registry.routable(), policy, estimate, {*exclude, *tried}, avoid)
            return [model for model, _ in ranked]

        return first, following, estimate

    async def route_and_send(
        self,
        request: ChatRequest,
        policy: Policy,
        *,
        pin: bool = False,
        exclude: Collection[str] = (),
        avoid: Collection[str] = (),
    ) -> Routed:
        """Answer ``request``; ``pin``, ``exclude`` and ``avoid`` as in ``plan``."""
        first, following, estimate = self._lineup(request, policy, pin=pin, exclude=exclude, avoid=avoid)

        async def attempt(model: ModelSpec, timeout: float) -> tuple[ChatCompletion, TokenCount, float]:
            provider = self.registry.provider(model.provider_id)
            capped = _within_budget(request, output_cap(model, policy, estimate))
            reservation = await self._reserve(policy, model, estimate, capped)
            started = time.monotonic()
            try:
                completion = await provider.send(capped, model.target, timeout)
            except BaseException:
                charge(time.monotonic() - started)
                await self._settle(reservation, 0.0)
                raise
            waited = time.monotonic() - started
            charge(waited)
            self.health.record_success(model.provider_id, waited * 1000)
            tokens = _tokens_of(completion, estimate)
            cost = model.cost_usd(tokens.input_tokens, tokens.output_tokens)
            await self._settle(reservation, cost)
            return completion, tokens, cost

        (completion, tokens, cost), model, decision = await self._with_failover(
            request, policy, first, following, attempt
        )
        completion.model = model.id  # the provider's own object, made for this call (a copy cost 1.5 us)
        return Routed(completion, decision, tokens, cost)

    async def complete(self, request: ChatRequest, policy: Policy, shaping: Shaping) -> Routed:
        """``route_and_send``, then the answer in the form the client asked for (``OutputInvalid`` if it
        cannot take it: the call was still made, and the error says what it cost)."""
        routed = await self.route_and_send(request, policy)
        if shaping.empty:
            return routed
        try:
            return replace(routed, completion=shape_completion(routed.completion, shaping))
        except OutputInvalid as exc:
            raise _priced(
                exc, routed.decision.model_id, routed.decision.provider_id, routed.tokens, routed.cost_usd
            ) from None

    async def call(self, call: ModelCall) -> CallResult:
        """One orchestration call (the ``Calls`` protocol)."""
        routed = await self.route_and_send(
            call.request, call.policy, pin=call.pin, exclude=call.exclude, avoid=call.avoid
        )
        text = "".join(c.message.content or "" for c in routed.completion.choices[:1])
        return CallResult(
            content=text,
            model_id=routed.decision.model_id,
            provider_id=routed.decision.provider_id,
            cost_usd=routed.cost_usd,
            tokens=routed.tokens,
            completion=routed.completion,
        )

    async def rank(self, request: ChatRequest, policy: Policy, exclude: list[str]) -> list[str]:
        """Eligible model ids, best first (the ``Calls`` protocol)."""
        candidates, _ = self.plan(request.model_copy(update={"model": ""}), policy, exclude=exclude)
        return [m.id for m in candidates]

    async def orchestrate(
        self, request: ChatRequest, directive: OrchestrationDirective, shaping: Shaping, policy: Policy
    ) -> OrchestrationResult:
        """Run an orchestration directly, every call against this engine under ``policy``'s account."""
        return check_result(await orchestrate(request, directive, self, policy), shaping)

    async def open_stream(self, request: ChatRequest, policy: Policy) -> ChatStream:
        first, following, estimate = self._lineup(request, policy)
        started = time.monotonic()
        deadline = started + self.request_deadline(policy)

        reserved: dict[str, Reservation | None] = {}

        async def attempt(
            model: ModelSpec, timeout: float
        ) -> tuple[AsyncIterator[Sequence[UpstreamChunk]], list[UpstreamChunk]]:
            provider = self.registry.provider(model.provider_id)
            capped = _within_budget(request, output_cap(model, policy, estimate))
            reservation = reserved[model.id] = await self._reserve(policy, model, estimate, capped)
            # Each chunk's wait is the provider's limit; ``timeout`` bounds the wait for the first token.
            upstream = aiter(provider.stream(capped, model.target, self._limits.attempt))
            prefix: list[UpstreamChunk] = []
            committed = False
            waiting = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    while not committed:
                        batch = await anext(upstream)
                        prefix += batch
                        committed = any(is_substantive(chunk) for chunk in batch)
            except StopAsyncIteration:
                raise UpstreamError("transient", "upstream ended the stream without any content") from None
            except TimeoutError:
                raise UpstreamError("timeout", f"no first token within {timeout:g}s") from None
            finally:
                charge(time.monotonic() - waiting)  # the wait for the first token: what the client waits on
                if not committed:
                    await _aclose(upstream)
                    await self._settle(reservation, 0.0)
            self.health.record_success(model.provider_id, None)
            return upstream, prefix

        (upstream, prefix), model, decision = await self._with_failover(
            request, policy, first, following, attempt
        )
        normaliser = ChunkNormaliser(
            model_id=model.id,
            include_usage=request.include_usage,
            prompt_tokens_estimate=estimate.input_tokens,
        )
        return ChatStream(
            upstream=upstream,
            prefix=prefix,
            normaliser=normaliser,
            model=model,
            decision=decision,
            ttft_ms=(time.monotonic() - started) * 1000,
            deadline=deadline,
            on_error=lambda exc: self._record_failure(model, exc),
            on_close=lambda stream: self._settle(reserved[model.id], stream.cost_usd()),
        )

    async def _with_failover(
        self,
        request: ChatRequest,
        policy: Policy,
        first: ModelSpec,
        following: Callable[[Collection[str]], list[ModelSpec]],
        attempt: Callable[[ModelSpec, float], Awaitable[T]],
    ) -> tuple[T, ModelSpec, Decision]:
        """Try ``first``, then the best of ``following(tried)``: transient errors retry the same model with
        jittered backoff, context overflow skips to larger-context models, everything else moves to the next
        model.

        The request's deadline needs no timer of its own: each attempt is given the time left when that is
        less than the provider's limit, and its timeout then ends the request, counted against no provider
        (the deadline was the client's). A timer per request cost 4.3 us under uvloop, ~2.5 % of the gateway's
        CPU under load. Only calls on a spending account, whose budget waits on the store, keep the timer."""
        failures: list[UpstreamError] = []
        upcoming: ModelSpec | None = first
        model, tried = first, set[str]()
        overflowed = 0  # the largest context window a prompt did not fit: only larger ones after it
        limit = self.request_deadline(policy)
        deadline = time.monotonic() + limit
        try:
            async with asyncio.timeout(limit) if self._spends(policy) else _NO_TIMER:
                while upcoming is not None:
                    model = upcoming
                    tried.add(model.id)
                    for retry in range(self._limits.transient_retries + 1):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError
                        try:
                            result = await attempt(model, min(left, self._limits.attempt))
                        except UpstreamError as exc:
                            if exc.error_class == "timeout" and left <= self._limits.attempt:
                                raise TimeoutError from None  # the request's time is up
                            self._record_failure(model, exc)
                            failures.append(exc)
                            if exc.error_class != "transient" or retry == self._limits.transient_retries:
                                break
                            await asyncio.sleep(min(self._backoff(retry), deadline - time.monotonic()))
                        else:
                            return result, model, self._decision(request, policy, model, failures)
                    if failures[-1].error_class == "context_overflow":
                        overflowed = max(overflowed, model.max_context_tokens)
                    fits = (m for m in following(tried) if m.max_context_tokens > overflowed)
                    upcoming = next(fits, None)
                    if upcoming is not None:
                        self._announce_failover(model, upcoming, failures[-1])
        except TimeoutError:
            failures.append(
                UpstreamError(
                    "timeout",
                    f"request exceeded its {limit:g}s limit",
                    provider_id=model.provider_id,
                    model_id=model.id,
                )
            )
        raise RoutingFailed(failures)

    def _decision(
        self, request: ChatRequest, policy: Policy, model: ModelSpec, failures: list[UpstreamError]
    ) -> Decision:
        if not failures:
            reason = "requested-model" if model.id == request.model else f"routed-{policy.mode}"
            return Decision(model_id=model.id, provider_id=model.provider_id, reason=reason)
        if failures[-1].error_class == "context_overflow":
            reason = "escalated-context-overflow"
        elif failures[-1].model_id == model.id:
            reason = "retried-transient"
        else:
            reason = f"failover-after-{failures[-1].error_class}"
        return Decision(
            model_id=model.id,
            provider_id=model.provider_id,
            reason=reason,
            attempts=len(failures) + 1,
            failovers=tuple(dict.fromkeys(f.model_id for f in failures if f.model_id != model.id)),
        )

    def _spends(self, policy: Policy) -> bool:
        """Whether calls under ``policy`` reserve and settle money in a budget."""
        return self._spend is not None and policy.account is not None and self._spend.spends(policy.account)

    async def _reserve(
        self, policy: Policy, model: ModelSpec, estimate: Estimate, request: ChatRequest
    ) -> Reservation | None:
        """Hold back the call's estimated cost from the paying key's budget (``QuotaExceeded`` if it has no
        room). The estimate counts the whole output the call may write, so a call never outspends it."""
        if self._spend is None or policy.account is None:
            return None
        output = request.output_limit or DEFAULT_OUTPUT_ESTIMATE
        amount = model.cost_usd(int(estimate.input_tokens * CONTEXT_SAFETY), output)
        return await self._spend.reserve(policy.account, amount)

    async def _settle(self, reservation: Reservation | None, actual_usd: float) -> None:
        if reservation is not None and self._spend is not None:
            await self._spend.settle(reservation, actual_usd)

    def _record_failure(self, model: ModelSpec, exc: UpstreamError) -> None:
        exc.provider_id = exc.provider_id or model.provider_id
        exc.model_id = exc.model_id or model.id
        self.health.record_failure(model.provider_id, exc)
        self._metrics.upstream_error(model.provider_id, exc.error_class)

    def _announce_failover(self, failed: ModelSpec, following: ModelSpec, error: UpstreamError) -> None:
        self._metrics.failover(failed.id, error.error_class)
        self._events.publish(
            "failover",
            {
                "from_model": failed.id,
                "to_model": following.id,
                "error_class": error.error_class,
                "error": error.message,
            },
        )

    def request_deadline(self, policy: Policy) -> float:
        """Seconds one request may take, failover included: the policy's latency budget, capped."""
        if policy.max_latency_ms is not None:
            return min(self._limits.request, policy.max_latency_ms / 1000)
        return self._limits.request

    def _backoff(self, retry: int) -> float:
        return self._limits.backoff_base * (2.0**retry) * self._rng.uniform(0.5, 1.5)


def check_result(result: OrchestrationResult, shaping: Shaping) -> OrchestrationResult:
    """An orchestration's composite answer checked against the output schema, if one was given."""
    if shaping.output_schema is None:
        return result
    problem = validate_value(result.response_json(), shaping.output_schema)
    if problem is None:
        return result
    raise _priced(
        OutputInvalid(f"The answer does not match the output schema: {problem}"),
        result.negotiated_model,
        result.provider_id,
        result.tokens,
        result.cost_usd,
    )


def _priced(
    exc: OutputInvalid, model_id: str, provider_id: str, tokens: TokenCount, cost: float
) -> OutputInvalid:
    return OutputInvalid(
        exc.message,
        model_id=model_id,
        provider_id=provider_id,
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        cost_usd=cost,
    )


def _within_budget(request: ChatRequest, cap: int | None) -> ChatRequest:
    """``request`` with its output limited to ``cap`` tokens (what the budget affords), if it asked more."""
    if cap is None or (request.output_limit is not None and request.output_limit <= cap):
        return request
    field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    return request.model_copy(update={field: cap})


def _estimate(request: ChatRequest) -> Estimate:
    return Estimate(input_tokens=_estimate_input(request), output_limit=request.output_limit)


def _estimate_input(request: ChatRequest) -> int:
    tokens = sum(estimate_tokens(m.text()) + 4 for m in request.messages)
    if request.tools:
        tokens += estimate_tokens(orjson.dumps([t.model_dump() for t in request.tools]).decode())
    return tokens


def _tokens_of(completion: ChatCompletion, estimate: Estimate) -> TokenCount:
    usage = completion.usage
    if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
        return TokenCount(usage.prompt_tokens, usage.completion_tokens)
    text = "".join(c.message.content or "" for c in completion.choices)
    return TokenCount(estimate.input_tokens, estimate_tokens(text), estimated=True)


async def _aclose(iterator: AsyncIterator[object]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()

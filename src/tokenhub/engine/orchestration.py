"""Orchestration: several model calls composed into one answer (adversarial, vote, refine, planning).

The composition is written once, against ``Calls`` — "make this model call", "rank the models" — and run
two ways: directly against the engine (``EngineCalls``), and inside a Temporal workflow where each call is
an activity. So it must stay deterministic: no clocks, no randomness, no I/O but through ``Calls``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tokenhub.config import Mode
from tokenhub.engine.errors import EngineError, NoEligibleModel, PhaseFailed, QuotaExceeded
from tokenhub.engine.types import ChatCompletion, ChatRequest, Policy, TokenCount

OrchestrationMode = Literal["adversarial", "vote", "refine", "planning"]

PLAN_SYSTEM = "You are a planning assistant. Write a detailed plan that addresses the user's request."
CRITIQUE_SYSTEM = (
    "You are a critical reviewer. Analyse the plan below and give specific, constructive criticism: what is "
    "wrong, missing or risky, and how to fix it."
)
REFINE_PLAN_SYSTEM = "You are a planning assistant. Improve your plan using the critique provided."
JUDGE_SYSTEM = (
    "You are a judge. Several AI responses to the same request follow. Select the best one. "
    "Reply with ONLY its number."
)
IMPROVE_SYSTEM = (
    "Review and improve the following response. Fix any errors, add missing details, and improve clarity. "
    "Reply with the improved response only."
)
# The request fields an orchestration keeps for its own calls (sampling, not shape or tools).
_CALL_FIELDS = {
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "user",
    "presence_penalty",
    "frequency_penalty",
}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class OrchestrationDirective(_Model):
    mode: OrchestrationMode = "planning"
    # 0 means the mode's default: one adversarial round, three voters, two refinements.
    iterations: int = Field(default=0, ge=0, le=10)
    primary_model_id: str | None = None
    review_model_id: str | None = None
    primary_min_weight: float = Field(default=0.0, ge=0, le=10)
    review_min_weight: float = Field(default=0.0, ge=0, le=10)
    return_plan_only: bool = False


class ModelCall(_Model):
    """One model call of an orchestration. ``phase`` names it (``critique-2``); ``pin`` allows no other
    model than the request's; ``exclude`` are never asked; ``avoid`` are asked only when nothing else can."""

    phase: str
    request: ChatRequest
    policy: Policy
    pin: bool = False
    exclude: list[str] = []
    avoid: list[str] = []


class CallResult(_Model):
    content: str
    model_id: str
    provider_id: str
    cost_usd: float
    tokens: TokenCount
    completion: ChatCompletion


class AdversarialResponse(_Model):
    initial_plan: str
    critique: str | None = None
    refined_plan: str | None = None


class VoteEntry(_Model):
    model: str
    content: str
    selected: bool


class VoteResponse(_Model):
    responses: list[VoteEntry]
    selected: int
    judge: str
    judge_error: str | None = None


class RefineResponse(_Model):
    refined_response: str
    iterations: int
    model: str


class OrchestrationResult(_Model):
    """The composed answer. Exactly one of the mode fields is set; ``response_json()`` is what clients get."""

    negotiated_model: str
    provider_id: str
    routing_reason: str
    cost_usd: float
    tokens: TokenCount
    calls: int
    adversarial: AdversarialResponse | None = None
    vote: VoteResponse | None = None
    refine: RefineResponse | None = None
    planning: ChatCompletion | None = None

    def response_json(self) -> dict[str, Any]:
        if self.planning is not None:
            return self.planning.model_dump(mode="json", exclude_unset=True)
        shaped = self.adversarial or self.vote or self.refine
        return {} if shaped is None else shaped.model_dump(mode="json", exclude_none=True)


class Calls(Protocol):
    """What an orchestration may do. Both raise ``EngineError`` when they fail."""

    async def call(self, call: ModelCall) -> CallResult: ...

    async def rank(self, request: ChatRequest, policy: Policy, exclude: list[str]) -> list[str]: ...


async def orchestrate(
    request: ChatRequest, directive: OrchestrationDirective, calls: Calls, base: Policy | None = None
) -> OrchestrationResult:
    """Run ``directive.mode`` over ``request``. ``base`` carries what every call shares (the paying key,
    its allowed models). Raises ``PhaseFailed`` naming the phase that failed."""
    run = _Run(request, directive, calls, base or Policy())
    if directive.mode == "adversarial":
        return await run.adversarial()
    if directive.mode == "vote":
        return await run.vote()
    if directive.mode == "refine":
        return await run.refine()
    return await run.planning()


class _Run:
    """One orchestration: its calls so far, their summed cost and tokens."""

    def __init__(
        self, request: ChatRequest, directive: OrchestrationDirective, calls: Calls, base: Policy
    ) -> None:
        self.request = request
        self.directive = directive
        self.calls = calls
        self.base = base
        self.cost = 0.0
        self.tokens = TokenCount(0, 0)
        self.count = 0
        self.asked = "\n".join(m.text() for m in request.messages if m.role == "user")
        self.primary = directive.primary_model_id or (request.model if request.model != "auto" else "") or ""

    def policy(self, mode: Mode, min_weight: float) -> Policy:
        """A call's policy: the phase's mode and minimum weight, the request's account and allowed models."""
        return replace(self.base, mode=mode, min_weight=min_weight)

    async def ask(self, phase: str, call: ModelCall) -> CallResult:
        """Make ``call``; count what it cost; a failure ends the orchestration, naming ``phase``."""
        try:
            result = await self.calls.call(call)
        except EngineError as exc:
            raise self.failed(phase, exc) from None
        self.cost += result.cost_usd
        self.tokens = TokenCount(
            self.tokens.input_tokens + result.tokens.input_tokens,
            self.tokens.output_tokens + result.tokens.output_tokens,
            self.tokens.estimated or result.tokens.estimated,
        )
        self.count += 1
        return result

    def failed(self, phase: str, cause: EngineError) -> PhaseFailed:
        """``phase`` failed with ``cause``, after what the orchestration has spent so far."""
        return PhaseFailed(
            phase,
            cause,
            calls=self.count,
            input_tokens=self.tokens.input_tokens,
            output_tokens=self.tokens.output_tokens,
            cost_usd=self.cost,
        )

    def done(self, last: CallResult, reason: str, **response: Any) -> OrchestrationResult:
        return OrchestrationResult(
            negotiated_model=last.model_id,
            provider_id=last.provider_id,
            routing_reason=reason,
            cost_usd=self.cost,
            tokens=self.tokens,
            calls=self.count,
            **response,
        )

    def derive(self, messages: list[dict[str, Any]], model: str = "") -> ChatRequest:
        """A request for one call: the client's sampling settings, these messages, ``model`` preferred."""
        kept = self.request.model_dump(exclude_unset=True, include=_CALL_FIELDS)
        return ChatRequest.model_validate({**kept, "model": model, "messages": messages}, strict=False)

    async def adversarial(self) -> OrchestrationResult:
        d = self.directive
        planning = self.policy("planning", d.primary_min_weight)
        reviewing = self.policy("adversarial", d.review_min_weight)
        own = [m.model_dump(exclude_unset=True) for m in self.request.messages]
        plan = await self.ask(
            "adversarial plan",
            ModelCall(
                phase="plan",
                policy=planning,
                request=self.derive([{"role": "system", "content": PLAN_SYSTEM}, *own], self.primary),
            ),
        )
        if d.return_plan_only:
            return self.done(
                plan, "adversarial-plan-only", adversarial=AdversarialResponse(initial_plan=plan.content)
            )
        current, critique, last = plan.content, "", plan
        for round_ in range(1, (d.iterations or 1) + 1):
            review = await self.ask(
                "adversarial critique",
                ModelCall(
                    phase=f"critique-{round_}",
                    policy=reviewing,
                    avoid=[last.model_id],
                    request=self.derive(
                        [
                            {"role": "system", "content": CRITIQUE_SYSTEM},
                            {
                                "role": "user",
                                "content": f"Original request:\n{self.asked}\n\nProposed plan:\n{current}\n\n"
                                "Provide your critique:",
                            },
                        ],
                        d.review_model_id or "",
                    ),
                ),
            )
            critique = review.content
            last = await self.ask(
                "adversarial refine",
                ModelCall(
                    phase=f"refine-{round_}",
                    policy=planning,
                    request=self.derive(
                        [
                            {"role": "system", "content": REFINE_PLAN_SYSTEM},
                            {
                                "role": "user",
                                "content": f"Original request:\n{self.asked}\n\nYour plan:\n{current}\n\n"
                                f"Critique:\n{critique}\n\nProvide a refined plan:",
                            },
                        ],
                        self.primary or plan.model_id,
                    ),
                ),
            )
            current = last.content
        response = AdversarialResponse(initial_plan=plan.content, critique=critique, refined_plan=current)
        return self.done(last, "adversarial-orchestration", adversarial=response)

    async def vote(self) -> OrchestrationResult:
        d = self.directive
        voting = self.policy("normal", d.primary_min_weight)
        try:
            ranked = await self.calls.rank(
                self.request, voting, [d.review_model_id] if d.review_model_id else []
            )
        except EngineError as exc:
            raise PhaseFailed("vote voting", exc, calls=self.count) from None
        voters = ranked[: d.iterations if d.iterations >= 2 else 3]
        own = [m.model_dump(exclude_unset=True) for m in self.request.messages]
        outcomes = await asyncio.gather(
            *(
                self.ask(
                    "vote voting",
                    ModelCall(
                        phase=f"vote-{i + 1}", policy=voting, pin=True, request=self.derive(own, voter)
                    ),
                )
                for i, voter in enumerate(voters)
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, PhaseFailed):
                raise outcome  # cancellation or a bug: not a voter's failure
            if isinstance(outcome, PhaseFailed) and _out_of_budget(outcome):
                raise self.failed(outcome.phase, outcome.cause)  # with the other voters' spend
        answers = [o for o in outcomes if isinstance(o, CallResult)]
        if not answers:
            failure = next((o for o in outcomes if isinstance(o, PhaseFailed)), None)
            raise failure or PhaseFailed("vote voting", NoEligibleModel({}))
        if len(answers) == 1:
            only = VoteEntry(model=answers[0].model_id, content=answers[0].content, selected=True)
            return self.done(
                answers[0], "vote-single-response", vote=VoteResponse(responses=[only], selected=0, judge="")
            )
        listing = "\n\n".join(
            f"--- Response {i + 1} (model: {a.model_id}) ---\n{a.content}" for i, a in enumerate(answers)
        )
        judging = ModelCall(
            phase="judge",
            policy=self.policy("high_confidence", d.review_min_weight),
            exclude=[a.model_id for a in answers],  # never a voter, not even as a fallback
            request=self.derive(
                [
                    {"role": "system", "content": JUDGE_SYSTEM},
                    {
                        "role": "user",
                        "content": f"Request:\n{self.asked}\n\n{listing}\n\nThe number of the best response:",
                    },
                ],
                d.review_model_id or "",
            ),
        )
        judge, judge_error, selected = "", None, 0
        try:
            verdict = await self.ask("vote judge", judging)
            judge = verdict.model_id
            picked = _pick(verdict.content, len(answers))
            if picked is None:
                judge_error = f"the judge's reply named no response: {verdict.content[:200]!r}"
            else:
                selected = picked
        except PhaseFailed as exc:
            if _out_of_budget(exc):
                raise
            judge_error = exc.message
        entries = [
            VoteEntry(model=a.model_id, content=a.content, selected=i == selected)
            for i, a in enumerate(answers)
        ]
        reason = "vote-judge-failed" if judge_error else "vote-orchestration"
        return self.done(
            answers[selected],
            reason,
            vote=VoteResponse(responses=entries, selected=selected, judge=judge, judge_error=judge_error),
        )

    async def refine(self) -> OrchestrationResult:
        d = self.directive
        own = [m.model_dump(exclude_unset=True) for m in self.request.messages]
        polishing = self.policy("high_confidence", d.primary_min_weight)
        first = await self.ask(
            "refine initial",
            ModelCall(phase="initial", policy=polishing, request=self.derive(own, self.primary)),
        )
        current, completed = first.content, 0
        for round_ in range(1, (d.iterations or 2) + 1):
            try:
                better = await self.ask(
                    "refine",
                    ModelCall(
                        phase=f"refine-{round_}",
                        policy=polishing,
                        pin=True,
                        request=self.derive(
                            [
                                {"role": "system", "content": IMPROVE_SYSTEM},
                                {
                                    "role": "user",
                                    "content": f"Original request:\n{self.asked}\n\nCurrent response:\n"
                                    f"{current}\n\nProvide an improved version:",
                                },
                            ],
                            first.model_id,
                        ),
                    ),
                )
            except PhaseFailed as exc:
                if _out_of_budget(exc):
                    raise
                break  # keep the best answer so far; ``iterations`` says how many rounds completed
            current, completed = better.content, completed + 1
        response = RefineResponse(refined_response=current, iterations=completed, model=first.model_id)
        return self.done(first, "refine-orchestration", refine=response)

    async def planning(self) -> OrchestrationResult:
        own = [m.model_dump(exclude_unset=True) for m in self.request.messages]
        result = await self.ask(
            "planning",
            ModelCall(
                phase="planning",
                policy=self.policy("planning", self.directive.primary_min_weight),
                request=self.derive(own, self.primary),
            ),
        )
        return self.done(result, "planning", planning=result.completion)


def _out_of_budget(failure: PhaseFailed) -> bool:
    """The key's budget refused a call: the orchestration ends there, whatever the mode would otherwise
    make of a failed call, so the client hears ``insufficient_quota`` rather than a degraded answer."""
    return isinstance(failure.cause, QuotaExceeded)


def _pick(reply: str, count: int) -> int | None:
    """The 0-based response a judge's reply names (its first number within range), or None."""
    for number in re.findall(r"\d+", reply):
        if 1 <= int(number) <= count:
            return int(number) - 1
    return None

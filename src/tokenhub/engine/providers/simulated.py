"""An in-process upstream for demos, load tests and failure drills.

A real provider type users may configure: it answers with deterministic text (given a seed), at a set time
to first token and token rate, and fails at a set rate with a set error class.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from tokenhub.config import SimulatedOptions
from tokenhub.engine.errors import ErrorClass, UpstreamError
from tokenhub.engine.providers.base import Chunk, Target, estimate_tokens
from tokenhub.engine.types import ChatCompletion, ChatRequest

_WORDS = [
    "the",
    "gateway",
    "routes",
    "each",
    "request",
    "to",
    "the",
    "model",
    "that",
    "best",
    "fits",
    "its",
    "budget",
    "latency",
    "and",
    "quality",
    "while",
    "failing",
    "over",
    "quietly",
    "when",
    "an",
    "upstream",
    "misbehaves",
    "so",
    "that",
    "applications",
    "keep",
    "working",
]


class SimulatedProvider:
    def __init__(self, provider_id: str, options: SimulatedOptions) -> None:
        self.id = provider_id
        self._options = options
        self._rng = random.Random(options.seed)  # noqa: S311 - deterministic on purpose

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def send(self, request: ChatRequest, target: Target, timeout: float) -> ChatCompletion:
        plan = self._plan(request, target)
        await self._wait(plan.ttft_s + plan.duration_s, timeout)
        plan.fail_if_planned(self.id)
        message: dict[str, Any] = {"role": "assistant", "content": plan.text or None}
        if plan.tool_call is not None:
            message["tool_calls"] = [plan.tool_call]
        return ChatCompletion.model_validate(
            {
                "id": plan.completion_id,
                "object": "chat.completion",
                "created": plan.created,
                "model": target.model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
                "usage": plan.usage,
            },
            strict=False,
        )

    async def stream(
        self, request: ChatRequest, target: Target, timeout: float
    ) -> AsyncIterator[list[Chunk]]:
        plan = self._plan(request, target)
        await self._wait(plan.ttft_s, timeout)
        plan.fail_if_planned(self.id)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> Chunk:
            return {
                "id": plan.completion_id,
                "object": "chat.completion.chunk",
                "created": plan.created,
                "model": target.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        yield [chunk({"role": "assistant", "content": ""})]
        per_token = 1.0 / self._options.tokens_per_s
        if plan.tool_call is not None:
            yield [chunk({"tool_calls": [{"index": 0, **plan.tool_call}]})]
        for i, word in enumerate(plan.words):
            if i:
                await asyncio.sleep(per_token)
            yield [chunk({"content": word if i == 0 else " " + word})]
        usage = {
            "id": plan.completion_id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": target.model_id,
            "choices": [],
            "usage": plan.usage,
        }
        yield [chunk({}, plan.finish_reason), usage]

    def _plan(self, request: ChatRequest, target: Target) -> _Plan:
        if request.n not in (None, 1):
            raise UpstreamError(
                "fatal",
                "the simulated provider answers with one choice only (n=1)",
                provider_id=self.id,
                status=400,
            )
        failing = self._rng.random() < self._options.fail_rate
        count = request.output_limit or self._options.output_tokens
        tool_call = _tool_call_for(request, self._rng)
        words = (
            [] if tool_call is not None else [_WORDS[self._rng.randrange(len(_WORDS))] for _ in range(count)]
        )
        prompt_tokens = sum(estimate_tokens(m.text()) for m in request.messages)
        completion_tokens = len(words) + (
            estimate_tokens(orjson.dumps(tool_call).decode()) if tool_call else 0
        )
        finish = "tool_calls" if tool_call else ("length" if request.output_limit else "stop")
        return _Plan(
            fail_kind=self._options.fail_kind if failing else None,
            ttft_s=self._options.ttft_ms / 1000,
            duration_s=len(words) / self._options.tokens_per_s,
            words=words,
            tool_call=tool_call,
            finish_reason=finish,
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            completion_id=f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
        )

    @staticmethod
    async def _wait(seconds: float, timeout: float) -> None:
        if seconds > timeout:
            await asyncio.sleep(timeout)
            raise UpstreamError("timeout", "simulated upstream did not answer in time")
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class _Plan:
    """What one simulated call will do, decided up front so send() and stream() agree."""

    fail_kind: ErrorClass | None
    ttft_s: float
    duration_s: float
    words: list[str]
    tool_call: dict[str, Any] | None
    finish_reason: str
    usage: dict[str, int]
    completion_id: str
    created: int

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def fail_if_planned(self, provider_id: str) -> None:
        if self.fail_kind is None:
            return
        status = _FAIL_STATUS.get(self.fail_kind)
        retry_after = 1.0 if self.fail_kind == "rate_limited" else None
        raise UpstreamError(
            self.fail_kind,
            f"simulated {self.fail_kind} failure",
            provider_id=provider_id,
            status=status,
            retry_after=retry_after,
        )


_FAIL_STATUS: dict[ErrorClass, int] = {
    "rate_limited": 429,
    "transient": 503,
    "fatal": 400,
    "context_overflow": 400,
}


def _tool_call_for(request: ChatRequest, rng: random.Random) -> dict[str, Any] | None:
    """Call a tool when asked to (``required`` or a named function), or when tools are offered and the
    last message is the user's; after a tool result, answer in text."""
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    last_role = request.messages[-1].role
    if named is None and choice != "required" and last_role != "user":
        return None
    tool = next((t for t in request.tools if t.function.name == named), request.tools[0])
    schema = tool.function.parameters or {}
    arguments = {
        name: _placeholder(spec)
        for name, spec in (schema.get("properties") or {}).items()
        if name in (schema.get("required") or [])
    }
    return {
        "id": f"call_{rng.getrandbits(64):016x}",
        "type": "function",
        "function": {"name": tool.function.name, "arguments": orjson.dumps(arguments).decode()},
    }


def _placeholder(spec: Any) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if isinstance(spec, dict) and spec.get("enum"):
        return spec["enum"][0]
    return {"integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}.get(str(kind), "sim")

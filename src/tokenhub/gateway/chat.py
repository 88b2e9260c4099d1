"""``POST /v1/chat/completions``: OpenAI's chat completions, with TokenHub's directives and mode header."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from tokenhub.config import Mode
from tokenhub.engine import Policy
from tokenhub.engine.directives import extract_directives, parse_mode
from tokenhub.engine.shaping import NO_SHAPING, Shaping
from tokenhub.gateway.exchange import (
    Dispatcher,
    Endpoint,
    call_context,
    dispatch_headers,
    header,
    keyed,
    routing_headers,
    send_json,
    send_stream,
    unless_disconnected,
)
from tokenhub.gateway.parsing import parse_chat_request
from tokenhub.gateway.turns import StreamTurns
from tokenhub.temporal_integration.records import DispatchReport


class ChatCompletionsEndpoint(Endpoint):
    def __init__(
        self, dispatcher: Dispatcher, turns: StreamTurns, *, default_mode: Mode, max_body_bytes: int
    ) -> None:
        super().__init__(max_body_bytes)
        self._dispatcher = dispatcher
        self._turns = turns
        self._default_policy = Policy(mode=default_mode)

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, report: DispatchReport
    ) -> None:
        request, directives = extract_directives(parse_chat_request(body))
        policy = keyed(scope, directives.apply(request_policy(scope, self._default_policy)))
        shaping = Shaping(output_schema=directives.output_schema) if directives.output_schema else NO_SHAPING
        ctx = call_context(scope, body, report)
        if request.stream:
            opening = self._dispatcher.open_stream(request, policy, ctx)
            stream = await unless_disconnected(scope, receive, opening)
            await send_stream(stream, scope, receive, send, dispatch_headers(report), self._turns)
        else:
            answering = self._dispatcher.chat(request, policy, ctx, shaping)
            routed = await unless_disconnected(scope, receive, answering)
            await send_json(
                send,
                routed.completion.as_openai(),
                [*routing_headers(routed.decision), *dispatch_headers(report)],
            )


def request_policy(scope: Scope, policy: Policy) -> Policy:
    """``policy`` with the ``x-tokenhub-mode`` header's mode, for clients that cannot write directives."""
    mode = header(scope, b"x-tokenhub-mode")
    if mode is None:
        return policy
    return Policy(
        mode=parse_mode(mode.strip(), param="x-tokenhub-mode"),
        max_budget_usd=policy.max_budget_usd,
        max_latency_ms=policy.max_latency_ms,
        min_weight=policy.min_weight,
    )

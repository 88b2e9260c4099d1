"""One canonical stream, whatever the upstream: OpenAI's ``chat.completion.chunk`` sequence, exactly.

Guarantees (``shared/reference/peers.md`` §3-4 lists how peers break each): one ``id``/``created``/``model``
on every chunk; ``role`` in each choice's first delta; tool-call deltas always carry ``index``, with
``id``/``type``/``name`` only on a call's first delta; exactly one ``finish_reason`` per choice; usage only
in one final ``choices: []`` chunk when the client asked for it (``usage: null`` on the others); a stream
that ends without a ``finish_reason`` is an error, not a success.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson

from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.base import Chunk, ContentChunk, UpstreamChunk
from tokenhub.engine.registry import ModelSpec
from tokenhub.engine.types import Decision, TokenCount

# A choice's keys the normaliser writes itself; any others (logprobs, …) pass through between them.
_OWN_KEYS = frozenset(("index", "delta", "finish_reason"))
_BLANK_CONTENT = b'"content":""'

OutChunk = Chunk | bytes
"""A chunk to send: a dict, or its JSON already written."""


class ChunkNormaliser:
    """Feed upstream chunks in order; take back the chunks to send. Not thread-safe (one per stream)."""

    def __init__(self, *, model_id: str, include_usage: bool, prompt_tokens_estimate: int) -> None:
        self._model_id = model_id
        self._include_usage = include_usage
        self._prompt_estimate = prompt_tokens_estimate
        self._id: str | None = None
        self._created = 0
        self._fingerprint: Any = None
        self._started: set[int] = set()
        self._finished: dict[int, str] = {}
        self._tool_ids: dict[int, dict[int, str]] = {}
        self._chars = 0
        self.usage: dict[str, Any] | None = None
        self._envelope_keys: Chunk = {}  # every chunk's keys before ``choices``, set by the first chunk
        # For a ContentChunk of this template, in a choice started and not finished: the JSON around its text.
        self._plain: Chunk | None = None
        self._plain_index = 0
        self._plain_head = b""
        self._plain_tail = b""

    @property
    def finish_reason(self) -> str | None:
        return self._finished.get(0) or next(iter(self._finished.values()), None)

    def feed_all(self, chunks: Iterable[UpstreamChunk]) -> list[OutChunk]:
        """``feed`` for each of ``chunks``, in order: the chunks to send for all of them."""
        out: list[OutChunk] = []
        for chunk in chunks:
            out += self.feed(chunk)
        return out

    def feed(self, chunk: UpstreamChunk) -> Sequence[OutChunk]:
        if isinstance(chunk, ContentChunk):
            if chunk.template is self._plain:
                if self._plain_index in self._finished:
                    return []
                self._chars += chunk.chars
                return [self._plain_head + chunk.literal + self._plain_tail]
            return self._first_of(chunk)
        return self._feed(chunk)

    def _first_of(self, content: ContentChunk) -> Sequence[OutChunk]:
        """A ContentChunk of a new template, normalised as parsed; if its choice had started, what is sent
        for it is the JSON around its text for every later one (the same chunk, the same state)."""
        chunk = content.parsed()
        index = chunk["choices"][0].get("index", 0)
        steady = index in self._started and index not in self._finished
        out = self._feed(chunk)
        if steady and len(out) == 1:
            sent = out[0]
            choice = sent["choices"][0]
            blank_choice = {**choice, "delta": {**choice["delta"], "content": ""}}
            blank = orjson.dumps({**sent, "choices": [blank_choice]})
            if blank.count(_BLANK_CONTENT) == 1:
                head, _, tail = blank.partition(_BLANK_CONTENT)
                self._plain, self._plain_index = content.template, index
                self._plain_head, self._plain_tail = head + b'"content":', tail
        return out

    def _feed(self, chunk: Chunk) -> list[Chunk]:
        if self._id is None:
            self._id = str(chunk.get("id") or f"chatcmpl-{uuid.uuid4().hex}")
            created = chunk.get("created")
            self._created = created if isinstance(created, int) else int(time.time())
            self._fingerprint = chunk.get("system_fingerprint")
            self._envelope_keys = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model_id,
            }
            if self._fingerprint is not None:
                self._envelope_keys["system_fingerprint"] = self._fingerprint
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            normalised = self._choice(choice)
            if normalised is not None:
                out.append(normalised)
        return [self._envelope(out)] if out else []

    def finish(self) -> list[Chunk]:
        """Call once the upstream ended cleanly. Raises ``UpstreamError`` if it ended unfinished."""
        unfinished = self._started - self._finished.keys()
        if not self._finished or unfinished:
            raise UpstreamError("transient", "upstream ended the stream before a finish_reason")
        if not self._include_usage:
            return []
        final = self._envelope([])
        final["usage"] = self.usage or self._estimated_usage()
        return [final]

    def tokens(self) -> TokenCount:
        usage = self.usage
        if usage and isinstance(usage.get("prompt_tokens"), int):
            return TokenCount(int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0))
        estimate = self._estimated_usage()
        return TokenCount(estimate["prompt_tokens"], estimate["completion_tokens"], estimated=True)

    def _estimated_usage(self) -> dict[str, int]:
        completion = (self._chars + 3) // 4
        return {
            "prompt_tokens": self._prompt_estimate,
            "completion_tokens": completion,
            "total_tokens": self._prompt_estimate + completion,
        }

    def _envelope(self, choices: list[dict[str, Any]]) -> Chunk:
        chunk = self._envelope_keys.copy()  # a copy of a dict made once: a third of building it
        chunk["choices"] = choices
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def _choice(self, choice: Any) -> dict[str, Any] | None:
        if not isinstance(choice, dict):
            return None
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        if index in self._finished:
            return None  # anything after a choice's finish_reason, including a second finish_reason
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", **{k: v for k, v in delta.items() if k != "role"}}
        elif "role" in delta or "tool_calls" in delta:
            delta = {k: v for k, v in delta.items() if k != "role"}
        # else the upstream's delta goes on as it came: most chunks of a stream, copied for nothing before
        content = delta.get("content")
        if isinstance(content, str):
            self._chars += len(content)
        if delta.get("tool_calls"):
            delta["tool_calls"] = self._tool_deltas(index, delta["tool_calls"])
        finish = choice.get("finish_reason") or None  # some upstreams send "" for "not yet"
        out = {"index": index, "delta": delta}
        if not choice.keys() <= _OWN_KEYS:  # only then the loop: most choices have no other keys
            for key, value in choice.items():
                if key not in _OWN_KEYS:
                    out[key] = value
        out["finish_reason"] = finish
        if finish:
            self._finished[index] = str(finish)
        return out

    def _tool_deltas(self, choice_index: int, calls: Any) -> list[dict[str, Any]]:
        known = self._tool_ids.setdefault(choice_index, {})
        out = []
        for call in calls if isinstance(calls, list) else ():
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            if not isinstance(index, int) or index < 0:
                # Some upstreams omit the index or send -1: place the call by its id, else as the latest.
                call_id = call.get("id")
                by_id = {v: k for k, v in known.items()}
                if call_id in by_id:
                    index = by_id[call_id]
                elif call_id:
                    index = len(known)
                else:
                    index = max(known, default=0)
            function = dict(call.get("function") or {})
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                self._chars += len(arguments)
            if index not in known:
                known[index] = str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}")
                out.append(
                    {
                        "index": index,
                        "id": known[index],
                        "type": "function",
                        "function": {"name": function.get("name", ""), "arguments": arguments or ""},
                    }
                )
            else:
                out.append({"index": index, "function": {"arguments": arguments or ""}})
        return out


class ChatStream:
    """A routed stream whose first content is already in hand: the point past which failover stops.

    Iterate it for batches of normalised chunks; it raises ``UpstreamError`` if the upstream breaks mid-way.
    ``aclose()`` closes the upstream connection; call it in ``finally``.
    """

    def __init__(
        self,
        *,
        upstream: AsyncIterator[Sequence[UpstreamChunk]],
        prefix: list[UpstreamChunk],
        normaliser: ChunkNormaliser,
        model: ModelSpec,
        decision: Decision,
        ttft_ms: float,
        deadline: float,
        on_error: Callable[[UpstreamError], None],
        on_close: Callable[[ChatStream], Awaitable[None]] | None = None,
    ) -> None:
        self._upstream = upstream
        self._prefix = prefix
        self._normaliser = normaliser
        self._model = model
        self.decision = decision
        self.ttft_ms = ttft_ms
        self.deadline = deadline
        """``time.monotonic()`` past which the whole stream must have ended."""
        self.completed = False
        self.error: UpstreamError | None = None
        self._on_error = on_error
        self._on_close = on_close
        self._iterator = self._iterate()

    def __aiter__(self) -> AsyncIterator[list[OutChunk]]:
        return self._iterator

    async def _iterate(self) -> AsyncGenerator[list[OutChunk], None]:
        feed_all = self._normaliser.feed_all
        try:
            prefix, self._prefix = self._prefix, []
            if out := feed_all(prefix):
                yield out
            async for batch in self._upstream:
                if out := feed_all(batch):
                    yield out
            if final := self._normaliser.finish():
                yield [*final]
            self.completed = True
        except UpstreamError as exc:
            self._on_error(exc)
            self.error = exc
            raise

    async def aclose(self) -> None:
        """Close the upstream connection. Not while another task is iterating: stop it first."""
        try:
            await self._iterator.aclose()
            aclose = getattr(self._upstream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                await on_close(self)

    @property
    def finish_reason(self) -> str | None:
        return self._normaliser.finish_reason

    def tokens(self) -> TokenCount:
        """Tokens so far: the upstream's usage when it reported one, else an estimate."""
        return self._normaliser.tokens()

    def cost_usd(self) -> float:
        tokens = self.tokens()
        return self._model.cost_usd(tokens.input_tokens, tokens.output_tokens)


def is_substantive(chunk: UpstreamChunk) -> bool:
    """Whether a chunk commits the stream: it carries content, a tool call, or a finish_reason.
    Role-only and empty chunks are held back so a failure right after them can still fail over."""
    if isinstance(chunk, ContentChunk):
        return chunk.literal != b'""'
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta") or {}
        if (
            delta.get("content")
            or delta.get("tool_calls")
            or delta.get("refusal")
            or any(
                value
                for key, value in delta.items()
                if key not in ("role", "content", "tool_calls", "refusal")
            )
        ):
            return True
    return False

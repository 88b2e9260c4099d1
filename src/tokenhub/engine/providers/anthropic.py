"""Anthropic's Messages API behind OpenAI's chat-completions shapes: requests, answers and streams."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from tokenhub.engine.errors import UpstreamError
from tokenhub.engine.providers.base import Chunk, Target
from tokenhub.engine.providers.upstream import UpstreamClient, classify_status, event_json
from tokenhub.engine.types import ChatCompletion, ChatRequest, ContentPart, Message, ToolCall

PATH = "/v1/messages"

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The HTTP status each in-stream error type stands for, so it is classified exactly like that status.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)
_TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


class AnthropicProvider:
    def __init__(self, provider_id: str, client: UpstreamClient, *, default_max_tokens: int) -> None:
        self.id = provider_id
        self._client = client
        self._default_max_tokens = default_max_tokens

    async def start(self) -> None:
        await self._client.start()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, request: ChatRequest, target: Target, timeout: float) -> ChatCompletion:
        body = self._body(request, target, stream=False)
        async with self._client.post(PATH, body, read_timeout=timeout, total_timeout=timeout) as response:
            raw = await response.read()
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                "fatal", "upstream sent a message that is not JSON", provider_id=self.id
            ) from None
        return to_completion(payload, target.model_id, provider_id=self.id)

    async def stream(
        self, request: ChatRequest, target: Target, timeout: float
    ) -> AsyncIterator[list[Chunk]]:
        body = self._body(request, target, stream=True)
        translator = StreamTranslator(target.model_id, provider_id=self.id)
        async with self._client.post(PATH, body, read_timeout=timeout, total_timeout=None) as response:
            async for events in response.events():
                chunks: list[Chunk] = []
                failure: UpstreamError | None = None
                for event in events:
                    try:
                        chunks += translator.feed(event.event, _event_data(event.data, self.id))
                    except UpstreamError as exc:
                        failure = exc  # after the chunks that came before it
                        break
                    if translator.done:
                        break
                if chunks:
                    yield chunks
                if failure is not None:
                    raise failure
                if translator.done:
                    return
        raise UpstreamError("transient", "upstream ended the stream before message_stop", provider_id=self.id)

    def _body(self, request: ChatRequest, target: Target, *, stream: bool) -> bytes:
        payload = to_anthropic_request(
            request,
            target.upstream_model,
            default_max_tokens=self._default_max_tokens,
            stream=stream,
            provider_id=self.id,
        )
        return orjson.dumps(payload)


class _Untranslatable(ValueError):
    """A request Anthropic cannot be asked as written; the message says which part."""


# --- requests: OpenAI -> Anthropic ---------------------------------------------------------------


def to_anthropic_request(
    request: ChatRequest,
    upstream_model: str,
    *,
    default_max_tokens: int,
    stream: bool,
    provider_id: str = "",
) -> dict[str, Any]:
    """The Messages API body for ``request``; raises a fatal (400) ``UpstreamError`` for what it can't say."""
    try:
        if request.n not in (None, 1):
            raise _Untranslatable("Anthropic answers with one choice only (n must be 1)")
        system, messages = _messages(request.messages)
        body: dict[str, Any] = {
            "model": upstream_model,
            # Anthropic refuses a request without max_tokens, so one is always sent.
            "max_tokens": request.output_limit or default_max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = system
        body.update(_tool_fields(request))
    except _Untranslatable as exc:
        raise UpstreamError("fatal", str(exc), provider_id=provider_id, status=400) from None
    if request.temperature is not None:
        # OpenAI's scale is 0..2, Anthropic's 0..1: clamp rather than have Claude refuse the request.
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if stream:
        body["stream"] = True
    return body


def _messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """The joined system prompt, and the other messages as Anthropic's strictly alternating turns."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            if text := message.text():
                system.append(text)
            continue
        role, blocks = _turn(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _turn(message: Message) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "user":
        return "user", _user_blocks(message.content)
    if message.role == "assistant":
        blocks = _text_blocks(message.text())
        blocks += [_tool_use(call) for call in message.tool_calls or ()]
        return "assistant", blocks
    if message.role == "tool":
        return "user", [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}
        ]
    raise _Untranslatable(f"messages with role '{message.role}' are not supported; use 'tool' messages")


def _text_blocks(text: str) -> list[dict[str, Any]]:
    # Anthropic rejects empty text blocks, which OpenAI clients send freely (e.g. beside tool calls).
    return [{"type": "text", "text": text}] if text else []


def _user_blocks(content: str | list[ContentPart] | None) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_blocks(content or "")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.type == "text":
            blocks += _text_blocks(part.text or "")
        elif part.type == "image_url":
            blocks.append(_image_block(part))
        else:
            raise _Untranslatable(f"content parts of type '{part.type}' are not supported by Anthropic")
    return blocks


def _image_block(part: ContentPart) -> dict[str, Any]:
    image = (part.model_extra or {}).get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _Untranslatable("an image_url content part needs an 'image_url.url' string")
    if match := _DATA_URL.fullmatch(url):
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
        return {"type": "image", "source": source}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _Untranslatable("an image URL must be http(s) or a base64 data URL")


def _tool_use(call: ToolCall) -> dict[str, Any]:
    arguments = call.function.arguments
    try:
        parsed = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        raise _Untranslatable(f"the arguments of tool call '{call.id}' are not JSON") from None
    if not isinstance(parsed, dict):
        raise _Untranslatable(f"the arguments of tool call '{call.id}' are not a JSON object")
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": parsed}


def _tool_fields(request: ChatRequest) -> dict[str, Any]:
    if not request.tools:
        return {}
    tools = []
    for tool in request.tools:
        function = tool.function
        spec: dict[str, Any] = {"name": function.name}
        if function.description:
            spec["description"] = function.description
        spec["input_schema"] = function.parameters or {"type": "object", "properties": {}}
        tools.append(spec)
    fields: dict[str, Any] = {"tools": tools}
    choice = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        fields["tool_choice"] = choice
    return fields


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return dict(_TOOL_CHOICES[choice])
    function = choice.get("function")
    if (
        choice.get("type") == "function"
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
    ):
        return {"type": "tool", "name": function["name"]}
    raise _Untranslatable("tool_choice must be 'auto', 'required', 'none' or name a function")


# --- answers: Anthropic -> OpenAI ----------------------------------------------------------------


def to_completion(payload: Any, model_id: str, *, provider_id: str = "") -> ChatCompletion:
    """An Anthropic ``message`` object as an OpenAI ``chat.completion`` for ``model_id``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("content"), list):
        raise UpstreamError(
            "fatal", "malformed message from upstream: no content list", provider_id=provider_id
        )
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in payload["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    usage = payload.get("usage")
    try:
        return ChatCompletion.model_validate(
            {
                "id": f"chatcmpl-{payload.get('id') or uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": _finish_reason(payload.get("stop_reason")),
                    }
                ],
                "usage": openai_usage(usage if isinstance(usage, dict) else {}),
            },
            strict=False,
        )
    except ValidationError as exc:
        raise UpstreamError(
            "fatal", f"malformed message from upstream: {exc.errors()[0]['msg']}", provider_id=provider_id
        ) from None


def _finish_reason(stop_reason: object) -> str:
    return _STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's usage as OpenAI's; cached prompt tokens count as prompt tokens, as OpenAI counts them."""

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) else 0

    cached = count("cache_read_input_tokens")
    prompt = count("input_tokens") + cached + count("cache_creation_input_tokens")
    completion = count("output_tokens")
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


# --- streams: Anthropic's named events -> OpenAI chunks --------------------------------------------


def _event_data(data: bytes, provider_id: str) -> dict[str, Any]:
    try:
        parsed = event_json(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            "transient", "upstream sent an event that is not JSON", provider_id=provider_id
        ) from None
    if not isinstance(parsed, dict):
        raise UpstreamError(
            "transient", "upstream sent an event that is not an object", provider_id=provider_id
        )
    return parsed


class StreamTranslator:
    """Feed Anthropic's stream events in order; take back OpenAI chunks. One per stream."""

    def __init__(self, model_id: str, *, provider_id: str = "") -> None:
        self.done = False
        self._model_id = model_id
        self._provider_id = provider_id
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._role_sent = False
        self._finished = False
        self._tools: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool call index
        self._tools_with_arguments: set[int] = set()
        self._usage: dict[str, Any] = {}

    def feed(self, event: str, data: Mapping[str, Any]) -> list[Chunk]:
        kind = data.get("type") or event
        if kind == "message_start":
            message = data.get("message") or {}
            if message.get("id"):
                self._id = f"chatcmpl-{message['id']}"
            self._absorb_usage(message.get("usage"))
        elif kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block") or {})
        elif kind == "content_block_delta":
            return self._block_delta(data.get("index"), data.get("delta") or {})
        elif kind == "content_block_stop":
            return self._block_stop(data.get("index"))
        elif kind == "message_delta":
            self._absorb_usage(data.get("usage"))
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            if stop_reason and not self._finished:
                self._finished = True
                return [self._chunk({}, _finish_reason(stop_reason))]
        elif kind == "message_stop":
            return self._stop()
        elif kind == "error":
            raise self._error(data.get("error"))
        # ping, and event types added later (Anthropic's versioning policy allows new ones), carry nothing.
        return []

    def _block_start(self, index: object, block: Mapping[str, Any]) -> list[Chunk]:
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use" or not isinstance(index, int):
            return []  # thinking and redacted_thinking blocks are not part of an OpenAI answer
        tool_index = self._tools[index] = len(self._tools)
        initial = block.get("input")
        arguments = orjson.dumps(initial).decode() if initial else ""
        if arguments:
            self._tools_with_arguments.add(index)
        function = {"name": block.get("name", ""), "arguments": arguments}
        call = {"index": tool_index, "id": block.get("id"), "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, index: object, delta: Mapping[str, Any]) -> list[Chunk]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and isinstance(index, int) and index in self._tools:
            fragment = delta.get("partial_json")
            if not fragment:
                return []
            self._tools_with_arguments.add(index)
            return [self._arguments(self._tools[index], fragment)]
        return []

    def _block_stop(self, index: object) -> list[Chunk]:
        if isinstance(index, int) and index in self._tools and index not in self._tools_with_arguments:
            # A tool called without input streams no JSON at all; OpenAI clients parse arguments as JSON.
            return [self._arguments(self._tools[index], "{}")]
        return []

    def _stop(self) -> list[Chunk]:
        self.done = True
        chunks = [] if self._finished else [self._chunk({}, "stop")]
        self._finished = True
        usage_chunk = self._envelope()
        usage_chunk["choices"] = []
        usage_chunk["usage"] = openai_usage(self._usage)
        return [*chunks, usage_chunk]

    def _absorb_usage(self, usage: object) -> None:
        # message_delta repeats the counts cumulatively, so later values replace earlier ones.
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if isinstance(v, int)})

    def _error(self, error: object) -> UpstreamError:
        error = error if isinstance(error, dict) else {}
        status = _ERROR_STATUS.get(str(error.get("type")), 500)
        body = orjson.dumps({"error": {"message": error.get("message") or "upstream reported an error"}})
        return classify_status(status, body, {}, provider_id=self._provider_id)

    def _arguments(self, tool_index: int, fragment: str) -> Chunk:
        return self._chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": fragment}}]})

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> Chunk:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        chunk = self._envelope()
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return chunk

    def _envelope(self) -> Chunk:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model_id,
        }

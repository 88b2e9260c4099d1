"""The chat data model the engine speaks: OpenAI's chat-completions shapes, typed.

Requests keep every field the client sent (unknown ones too) so an OpenAI-compatible upstream sees
exactly what the client meant; the typed fields are the ones the engine reads or must validate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from tokenhub.config import Mode

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    """Strict about the fields we know, tolerant of the ones we don't (they pass through)."""

    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text content part needs a 'text' string")
        return self


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> Message:
        # Reported as the missing field itself, so the client is told which one.
        if self.role in ("system", "developer", "user") and self.content is None:
            raise PydanticCustomError(
                "missing", "a {role} message needs 'content'", {"role": self.role, "field": "content"}
            )
        if self.role == "tool" and not self.tool_call_id:
            raise PydanticCustomError(
                "missing", "a tool message needs 'tool_call_id'", {"field": "tool_call_id"}
            )
        return self

    def text(self) -> str:
        """The message's text, content parts joined; non-text parts contribute nothing."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class FunctionDef(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(_Open):
    include_usage: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatRequest(_Open):
    """A ``POST /v1/chat/completions`` body."""

    # The JSON object the request was validated from (``from_json``), so ``upstream_payload`` need not
    # dump the model again (2.3 us). A slot, not a field: copies (``model_copy``, which every change to a
    # request goes through) do not carry it, so it is only ever read from the request it describes.
    __slots__ = ("_sent",)

    model: str = ""
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    user: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @property
    def output_limit(self) -> int | None:
        """The client's cap on generated tokens, whichever field it used."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @classmethod
    def from_json(cls, body: bytes) -> ChatRequest:
        """Validated from a JSON body (``ValidationError`` if it is not a valid request)."""
        try:
            sent = orjson.loads(body)
        except orjson.JSONDecodeError:
            return cls.model_validate_json(body)  # pydantic's own message for what is wrong
        request = cls.model_validate(sent)
        object.__setattr__(request, "_sent", sent)
        return request

    def upstream_payload(self, upstream_model: str) -> dict[str, Any]:
        """The body for an OpenAI-compatible upstream: what the client sent, with the upstream's model
        name, and usage always requested on streams (we account for tokens either way)."""
        sent: dict[str, Any] | None = getattr(self, "_sent", None)
        payload = {**sent} if sent is not None else self.model_dump(exclude_unset=True)
        payload["model"] = upstream_model
        if self.stream:
            options = payload.get("stream_options") or {}
            payload["stream_options"] = {**options, "include_usage": True}
        return payload


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AssistantMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_Open):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """A ``chat.completion`` object; upstream fields we don't model are kept."""

    model_config = ConfigDict(extra="allow")
    # As ChatRequest's: the upstream's JSON object, when it was valid as sent (nothing coerced).
    __slots__ = ("_sent",)

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None

    @classmethod
    def from_json(cls, body: bytes) -> ChatCompletion:
        """Validated from an upstream's JSON body, values coerced where needed (``"created": "17…"``);
        ``ValidationError`` if it is no completion."""
        try:
            sent = orjson.loads(body)
        except orjson.JSONDecodeError:
            return cls.model_validate_json(body, strict=False)
        try:
            completion = cls.model_validate(sent, strict=True)
        except ValidationError:
            return cls.model_validate(sent, strict=False)
        object.__setattr__(completion, "_sent", sent)
        return completion

    def as_openai(self) -> dict[str, Any]:
        """The completion as OpenAI sends it: the upstream's fields kept, ``object`` and ``model`` ours.
        (The upstream's own object when nothing in it was coerced: a dump cost 2.5 us.)"""
        sent: dict[str, Any] | None = getattr(self, "_sent", None)
        body = {**sent} if sent is not None else self.model_dump(mode="json", exclude_unset=True)
        body["object"] = "chat.completion"
        body["model"] = self.model
        return body


@dataclass(frozen=True)
class Policy:
    """How to choose among models, and what they may cost. ``None`` budgets mean unlimited.

    ``account`` is the API key whose budget pays for the calls (reserved before each, settled after);
    ``allowed_models``, when set, are the only models the key may use."""

    mode: Mode = "normal"
    max_budget_usd: float | None = None
    max_latency_ms: float | None = None
    min_weight: float = 0.0
    account: str | None = None
    allowed_models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Decision:
    """Which model answered and why; ``attempts`` counts every upstream call made."""

    model_id: str
    provider_id: str
    reason: str
    attempts: int = 1
    failovers: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class TokenCount:
    input_tokens: int
    output_tokens: int
    estimated: bool = False

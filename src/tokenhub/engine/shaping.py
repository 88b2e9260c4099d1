"""Output shaping: ``output_format`` (json, markdown, text; strip_think; max_tokens) and ``output_schema``.

Schemas are checked with a real JSON Schema validator (the ``jsonschema`` package, draft 2020-12). A
mismatch is ``OutputInvalid`` (a 422 with the validator's message); an invalid schema is the request's
fault (``InvalidRequest``), found before anything is sent.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from pydantic import BaseModel, ConfigDict, Field

from tokenhub.engine.errors import InvalidRequest, OutputInvalid
from tokenhub.engine.types import ChatCompletion

_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
# Markdown's markers, and only where they mark something: a heading's hashes, paired emphasis or code.
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_CODE = re.compile(r"`([^`\n]+)`")
_STARS = re.compile(r"(\*{1,3})(?=\S)(.+?)(?<=\S)\1")
_UNDERSCORES = re.compile(r"(?<!\w)(_{1,3})(?=\S)(.+?)(?<=\S)\1(?!\w)")


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: Literal["json", "markdown", "text"] | None = None
    strip_think: bool = False
    # A rough cap on the answer's length (about four characters a token), applied after the call.
    max_tokens: int | None = Field(default=None, ge=1)


class Shaping(BaseModel):
    """What the client asked of the answer's form. Empty means "as the model wrote it"."""

    model_config = ConfigDict(frozen=True)

    output_format: OutputFormat | None = None
    output_schema: dict[str, Any] | None = None

    @property
    def empty(self) -> bool:
        return self.output_format is None and self.output_schema is None


NO_SHAPING = Shaping()


def check_schema(schema: Any, *, param: str) -> dict[str, Any]:
    """``schema`` if it is a valid JSON Schema object, else ``InvalidRequest`` naming ``param``."""
    if not isinstance(schema, dict):
        raise InvalidRequest("An output schema must be a JSON object.", param=param, code="invalid_schema")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(
            f"Invalid JSON Schema: {exc.message}", param=param, code="invalid_schema"
        ) from None
    return schema


def validate_value(value: Any, schema: dict[str, Any]) -> str | None:
    """The validator's message for the first (most relevant) mismatch, or None when ``value`` conforms."""
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{error.message} (at /{where})" if where else error.message


def shape_text(text: str, shaping: Shaping) -> str:
    """The answer's text in the asked-for form; ``OutputInvalid`` if it cannot take it."""
    fmt = shaping.output_format or OutputFormat()
    if fmt.strip_think:
        text = _THINK.sub("", text).strip()
    if fmt.type == "json" or shaping.output_schema is not None:
        raw = extract_json(text)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise OutputInvalid("The answer is not valid JSON.") from None
        if shaping.output_schema is not None:
            problem = validate_value(value, shaping.output_schema)
            if problem is not None:
                raise OutputInvalid(f"The answer does not match the output schema: {problem}")
        if fmt.type == "json":
            text = raw
    elif fmt.type == "text":
        text = _UNDERSCORES.sub(r"\2", _STARS.sub(r"\2", _CODE.sub(r"\1", _HEADING.sub("", text)))).strip()
    elif fmt.type == "markdown":
        text = text.strip()
    if fmt.max_tokens is not None and fmt.type != "json" and len(text) > fmt.max_tokens * 4:
        # JSON is never cut: a truncated object is no longer JSON.
        text = text[: fmt.max_tokens * 4].rstrip() + "..."
    return text


def shape_completion(completion: ChatCompletion, shaping: Shaping) -> ChatCompletion:
    """``completion`` with each choice's text shaped; usage and everything else kept."""
    if shaping.empty:
        return completion
    choices = []
    for choice in completion.choices:
        if choice.message.content is None:  # a tool call, not a text answer: nothing to shape
            choices.append(choice)
            continue
        content = shape_text(choice.message.content, shaping)
        choices.append(
            choice.model_copy(update={"message": choice.message.model_copy(update={"content": content})})
        )
    return completion.model_copy(update={"choices": choices})


def extract_json(text: str) -> str:
    """The JSON in an answer: a fenced block if there is one, else from the first ``{``/``[`` to the
    last matching bracket, else the whole text."""
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return text.strip()
    start = min(starts)
    end = text.rfind("}" if text[start] == "{" else "]")
    return text[start : end + 1] if end > start else text[start:].strip()

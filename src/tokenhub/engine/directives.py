"""In-band directives: ``@@tokenhub mode=cheap budget=0.01 latency=5000 min_weight=5 output_schema={…}``.

Written on one line, or as a block (a ``@@tokenhub`` line, ``key=value`` lines, an ``@@end`` line), in user
messages. They override the request's policy, are removed before any upstream sees the message, and an
invalid one is a 400 naming it — never silently ignored. Directives apply in message order, so a later
message's value for a key wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import orjson

from tokenhub.config import MODES, Mode
from tokenhub.engine.errors import InvalidRequest
from tokenhub.engine.shaping import check_schema
from tokenhub.engine.types import ChatRequest, ContentPart, Message, Policy

MARK = "@@tokenhub"
# A block (group 1: its lines) or a single line (group 2: its settings), found in the order they are written.
_DIRECTIVE = re.compile(
    r"^[ \t]*@@tokenhub[ \t]*\r?\n((?:(?![ \t]*@@end)[^\n]*\n)*?)[ \t]*@@end[ \t]*(?:\r?\n|$)"
    r"|^[ \t]*@@tokenhub[ \t]+(\S[^\n]*?)[ \t]*(?:\r?\n|$)",
    re.MULTILINE,
)
_PAIR = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class Directives:
    mode: Mode | None = None
    max_budget_usd: float | None = None
    max_latency_ms: float | None = None
    min_weight: float | None = None
    output_schema: dict[str, Any] | None = None

    def apply(self, policy: Policy) -> Policy:
        """``policy`` with every value the directives set replaced."""
        if self is NO_DIRECTIVES:
            return policy
        return replace(
            policy,
            mode=self.mode or policy.mode,
            max_budget_usd=policy.max_budget_usd if self.max_budget_usd is None else self.max_budget_usd,
            max_latency_ms=policy.max_latency_ms if self.max_latency_ms is None else self.max_latency_ms,
            min_weight=policy.min_weight if self.min_weight is None else self.min_weight,
        )


NO_DIRECTIVES = Directives()


def parse_mode(value: str, *, param: str) -> Mode:
    if value not in MODES:
        raise InvalidRequest(
            f"Invalid mode '{value}': expected one of {', '.join(MODES)}.", param=param, code="invalid_mode"
        )
    return value


def extract_directives(request: ChatRequest) -> tuple[ChatRequest, Directives]:
    """The request without its directives, and what they said. Cheap when there are none."""
    found = _Found()
    messages: list[Message] | None = None
    for index, message in enumerate(request.messages):
        if message.role != "user" or MARK not in message.text():
            continue
        param = f"messages[{index}].content"
        content: str | list[ContentPart]
        if isinstance(message.content, str):
            content = found.strip(message.content, param)
        else:
            content = [
                part.model_copy(update={"text": found.strip(part.text, param)})
                if part.type == "text" and part.text and MARK in part.text
                else part
                for part in message.content or ()
            ]
        messages = messages if messages is not None else list(request.messages)
        messages[index] = message.model_copy(update={"content": content})
    if messages is None:
        return request, found.value
    return request.model_copy(update={"messages": messages}), found.value


class _Found:
    def __init__(self) -> None:
        self.value = NO_DIRECTIVES

    def strip(self, text: str, param: str) -> str:
        """Remove directives from ``text``, folding their values into ``value``."""

        def directive(match: re.Match[str]) -> str:
            block, line = match.group(1), match.group(2)
            settings = [line] if line is not None else [s.strip() for s in block.splitlines() if s.strip()]
            if not settings:
                raise _bad("@@tokenhub", "a block needs key=value lines", param)
            for setting in settings:
                self.value = _parse(setting, param, self.value)
            return ""

        text = _DIRECTIVE.sub(directive, text)
        if MARK in text:
            raise InvalidRequest(
                "A @@tokenhub directive needs key=value settings on its line, or a block closed by @@end.",
                param=param,
                code="invalid_directive",
            )
        return text.strip()


def _parse(settings: str, param: str, found: Directives) -> Directives:
    schema_at = settings.find("output_schema=")
    if schema_at >= 0:
        # A schema is JSON and may hold spaces: it runs to the end of its line.
        found = replace(found, output_schema=_schema(settings[schema_at + len("output_schema=") :], param))
        settings = settings[:schema_at]
    rest = _PAIR.sub("", settings).strip()
    if rest:
        raise _bad(rest, "expected key=value", param)
    for key, value in _PAIR.findall(settings):
        found = _set(found, key, value, param)
    return found


def _set(found: Directives, key: str, value: str, param: str) -> Directives:
    if key == "mode":
        if value not in MODES:
            raise _bad(f"mode={value}", f"expected one of {', '.join(MODES)}", param)
        return replace(found, mode=value)
    if key == "budget":
        return replace(found, max_budget_usd=_number(key, value, param, low=0, high=100, low_open=True))
    if key == "latency":
        return replace(found, max_latency_ms=_number(key, value, param, low=0, high=300_000, low_open=True))
    if key == "min_weight":
        return replace(found, min_weight=_number(key, value, param, low=0, high=10, low_open=False))
    raise _bad(f"{key}={value}", "unknown key (mode, budget, latency, min_weight, output_schema)", param)


def _number(key: str, value: str, param: str, *, low: float, high: float, low_open: bool) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    above_low = number > low if low_open else number >= low
    if not (above_low and number <= high):
        bounds = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise _bad(f"{key}={value}", f"must be a number in {bounds}", param)
    return number


def _schema(raw: str, param: str) -> dict[str, Any]:
    try:
        schema = orjson.loads(raw.strip())
    except orjson.JSONDecodeError:
        raise _bad("output_schema", "must be JSON", param) from None
    try:
        return check_schema(schema, param=param)
    except InvalidRequest as exc:
        raise _bad("output_schema", exc.message, param) from None


def _bad(what: str, why: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid @@tokenhub directive '{what}': {why}.", param=param, code="invalid_directive"
    )

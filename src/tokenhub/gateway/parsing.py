"""Request bodies in, typed requests out — or an ``InvalidRequest`` naming the offending field."""

from __future__ import annotations

import re

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tokenhub.engine import ChatRequest, InvalidRequest

# Pydantic puts union branches and validator names into error locations; they are not field names.
_NOT_A_FIELD = re.compile(r"[\[\](),]|^(str|int|float|bool|none|dict|list)$")


def parse_chat_request(body: bytes) -> ChatRequest:
    if not body.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid_request(exc) from None


def _invalid_request(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    if kind == "json_invalid":
        return InvalidRequest(
            f"The request body is not valid JSON: {error['msg'].removeprefix('Invalid JSON: ')}",
            code="invalid_json",
        )
    if kind == "model_type" and not error["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    param = _param(error)
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if kind == "too_short" and param == "messages":
        return InvalidRequest(
            "'messages' must contain at least one message.", param=param, code="invalid_value"
        )
    message = error["msg"].removeprefix("Value error, ")
    return InvalidRequest(
        f"Invalid value for '{param}': {message}." if param else message, param=param, code="invalid_value"
    )


def _param(error: ErrorDetails) -> str | None:
    """``('messages', 0, 'content', 'str')`` → ``messages[0].content``."""
    out = ""
    for part in error["loc"]:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _NOT_A_FIELD.search(part):
            out += f".{part}" if out else part
    return out or None

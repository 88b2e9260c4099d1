"""Request bodies in, typed requests out — or an ``InvalidRequest`` naming the offending field."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tokenhub.engine import ChatRequest, InvalidRequest

# Pydantic puts union branches and validator names into error locations; they are not field names.
_NOT_A_FIELD = re.compile(r"[\[\](),]|^(str|int|float|bool|none|dict|list)$")


M = TypeVar("M", bound=BaseModel)


def parse_chat_request(body: bytes) -> ChatRequest:
    return _parsed(body, ChatRequest.from_json)


def parse_body(body: bytes, model: type[M]) -> M:
    """``body`` as ``model``, or ``InvalidRequest`` naming the field in OpenAI's style."""
    return _parsed(body, model.model_validate_json)


def _parsed(body: bytes, validate: Callable[[bytes], M]) -> M:
    if not body.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return validate(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def invalid_request(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """The one ``InvalidRequest`` a validation error becomes; ``prefix`` goes before the field's name when
    the model validated a part of the body (``request.parameters``)."""
    error = _most_specific(exc.errors(include_url=False))
    kind = error["type"]
    if kind == "json_invalid":
        return InvalidRequest(
            f"The request body is not valid JSON: {error['msg'].removeprefix('Invalid JSON: ')}",
            code="invalid_json",
        )
    if kind == "model_type" and not error["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    param = _param(error)
    if prefix:
        param = f"{prefix}.{param}" if param else prefix
    if kind == "missing":
        if field := (error.get("ctx") or {}).get("field"):
            param = f"{param}.{field}" if param else str(field)
        return InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if kind == "too_short" and param and param.endswith("messages"):
        return InvalidRequest(
            f"'{param}' must contain at least one message.", param=param, code="invalid_value"
        )
    message = error["msg"].removeprefix("Value error, ")
    return InvalidRequest(
        f"Invalid value for '{param}': {message}." if param else message, param=param, code="invalid_value"
    )


def _most_specific(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error, unless it is one branch of a union: then the branch that got furthest into the
    input (a list of content parts with a bad part beats "should be a valid string")."""
    first = errors[0]
    base = _param(first) or ""
    same_field = [e for e in errors if (_param(e) or "").startswith(base)]
    return max(same_field, key=lambda e: len(e["loc"]))


def _param(error: ErrorDetails) -> str | None:
    """``('messages', 0, 'content', 'str')`` → ``messages[0].content``."""
    out = ""
    for part in error["loc"]:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _NOT_A_FIELD.search(part):
            out += f".{part}" if out else part
    return out or None

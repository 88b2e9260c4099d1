"""structlog set-up: JSON lines (orjson) in production, a readable console otherwise.

Request context (``request_id``) is set in a context variable by the gateway and added to every line.
Prompt text and API keys are never logged by default.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

# The request a line is logged for. Set on every request, read only when a line is written: a context
# variable of our own costs a fifth of ``bind_contextvars`` (0.06 against 0.33 us).
REQUEST_ID: ContextVar[str | None] = ContextVar("tokenhub_request_id", default=None)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    numeric = _LEVELS[level]
    shared: list[structlog.types.Processor] = [
        _add_request_id,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: structlog.types.Processor = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: structlog.types.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # uvicorn and libraries log through the standard library; keep their level in step with ours.
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic").setLevel(
        max(numeric, logging.WARNING)
    )  # its progress lines are ours to tell


def _add_request_id(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event

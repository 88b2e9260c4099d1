"""``log_result``: the one place a finished request is recorded — request log, metrics, events, the
canonical log line. Every path (direct, Temporal, streaming) ends here exactly once per request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import structlog

from tokenhub.store import RequestLog, RequestLogWriter
from tokenhub.telemetry import EventBus, Metrics


class ResultRecorder:
    def __init__(
        self,
        writer: RequestLogWriter,
        metrics: Metrics,
        events: EventBus,
        *,
        meter: Callable[[RequestLog], Awaitable[None]] | None = None,
    ) -> None:
        """``meter`` sees every finished request too (it counts an API key's tokens per minute)."""
        self._writer = writer
        self._metrics = metrics
        self._events = events
        self._meter = meter
        # Resolved once (logging is configured before anything is built), and asked once which lines it
        # writes: the canonical line's fields are not even gathered when nothing would read them.
        self._log = structlog.get_logger("tokenhub.request").bind()
        self._log_successes = self._log.is_enabled_for(logging.INFO)
        self._log_failures = self._log.is_enabled_for(logging.WARNING)

    async def log_result(self, row: RequestLog) -> None:
        await self._writer.write(row)
        if self._meter is not None and row.api_key_id:
            await self._meter(row)
        self._metrics.request_done(
            model=row.model,
            provider=row.provider,
            mode=row.mode,
            status=row.status,
            path=row.path,
            stream=row.stream,
            latency_ms=row.latency_ms,
            ttft_ms=row.ttft_ms,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=row.cost_usd,
        )
        ok = row.status < 400
        announce = self._events.watched
        if not (announce or (self._log_successes if ok else self._log_failures)):
            return
        fields = {
            "request_id": row.request_id,
            "model": row.model,
            "provider": row.provider,
            "mode": row.mode,
            "path": row.path,
            "stream": row.stream,
            "status": row.status,
            "reason": row.reason,
            "attempts": row.attempts,
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "cost_usd": row.cost_usd,
            "latency_ms": round(row.latency_ms, 2),
            "ttft_ms": None if row.ttft_ms is None else round(row.ttft_ms, 2),
            "error_class": row.error_class,
        }
        if announce:
            self._events.publish("route_success" if ok else "route_error", fields)
        if ok:
            self._log.info("request", **fields)
        else:
            self._log.warning("request", **fields, error=row.error_message)

"""``log_result``: the one place a finished request is recorded — request log, metrics, events, the
canonical log line. Every path (direct, Temporal, streaming) ends here exactly once per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from tokenhub.store import RequestLog, RequestLogWriter
from tokenhub.telemetry import EventBus, Metrics

log = structlog.get_logger("tokenhub.request")


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
        self._events.publish("route_success" if row.status < 400 else "route_error", fields)
        if row.status < 400:
            log.info("request", **fields)
        else:
            log.warning("request", **fields, error=row.error_message)

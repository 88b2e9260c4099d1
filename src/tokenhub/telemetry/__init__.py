"""Logs, metrics and the event bus. A leaf package: anyone may import it; it imports no other part."""

from tokenhub.telemetry.events import Event, EventBus, Subscription
from tokenhub.telemetry.logging import configure_logging
from tokenhub.telemetry.metrics import Metrics

__all__ = ["Event", "EventBus", "Metrics", "Subscription", "configure_logging"]

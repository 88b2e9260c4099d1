"""How requests are run: directly against the engine now, durably through Temporal when that lands."""

from tokenhub.temporal_integration.dispatcher import CallContext, DirectDispatcher, RecordedStream

__all__ = ["CallContext", "DirectDispatcher", "RecordedStream"]

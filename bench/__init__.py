"""The gateway measured side by side with a near-free fake upstream: ``make bench``, ``make bench-quick``."""

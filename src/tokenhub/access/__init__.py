"""Who may use the gateway and how much: API keys, their budgets, their rate limits."""

from tokenhub.access.budgets import KeyBudgets, TokenMeter
from tokenhub.access.keyring import KeyRing

__all__ = ["KeyBudgets", "KeyRing", "TokenMeter"]

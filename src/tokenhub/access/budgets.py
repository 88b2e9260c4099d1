"""Key budgets for the engine: reserve a call's estimated cost before it is made, settle the real cost after
(the engine's ``SpendGuard``). Every path that calls a provider — direct, Temporal, streams, each call of an
orchestration — goes through here, in whichever process makes the call."""

from __future__ import annotations

from tokenhub.access.keyring import KeyRing
from tokenhub.engine import QuotaExceeded, Reservation
from tokenhub.store.models import ApiKeyRow, RequestLog
from tokenhub.store.ratelimit import RateLimiter
from tokenhub.store.spend import SpendStore, period_of


class KeyBudgets:
    def __init__(self, ring: KeyRing, spend: SpendStore) -> None:
        self._ring = ring
        self._spend = spend

    def spends(self, account: str) -> bool:
        key = self._ring.get(account)
        return key is None or key.budget_usd is not None  # a key not seen yet is looked up by reserve

    async def reserve(self, account: str, amount_usd: float) -> Reservation | None:
        key = await current_key(self._ring, account)
        if key is None or key.budget_usd is None:
            return None
        period = period_of(key.budget_period)
        if not await self._spend.reserve(account, period, amount_usd, key.budget_usd):
            raise QuotaExceeded(account, key.budget_usd, period)
        return Reservation(account=account, period=period, amount_usd=amount_usd)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        await self._spend.settle(reservation.account, reservation.period, reservation.amount_usd, actual_usd)


class TokenMeter:
    """Counts each finished request's tokens against its key's tokens-per-minute limit."""

    def __init__(self, ring: KeyRing, limiter: RateLimiter) -> None:
        self._ring = ring
        self._limiter = limiter

    async def __call__(self, row: RequestLog) -> None:
        key = await current_key(self._ring, row.api_key_id) if row.api_key_id else None
        if key is not None and key.tpm:
            await self._limiter.add(f"tpm:{key.id}", key.tpm, row.input_tokens + row.output_tokens)


async def current_key(ring: KeyRing, key_id: str) -> ApiKeyRow | None:
    """The key, looked up in the store if this process has not seen it yet: another process (a gateway, for
    this worker) accepted it before this one's last poll, and a key made a moment ago must not go
    unmetered until the next."""
    key = ring.get(key_id)
    if key is None:
        await ring.reload()
        key = ring.get(key_id)
    return key

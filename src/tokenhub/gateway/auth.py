"""Access to ``/v1``: API keys, their scopes, and rate limits (pure ASGI, in front of the endpoints).

``TOKENHUB_AUTH``: ``keys`` — every request needs a live key; ``none`` — open (logged loudly at start-up);
unset — keys are required as soon as one exists. A key comes as ``Authorization: Bearer th-…`` or
``x-api-key: th-…``. Failed authentications are limited per client IP (the one a trusted proxy forwards,
``TOKENHUB_FORWARDED_ALLOW_IPS``), and keys per minute by requests
(``rpm``) and tokens (``tpm``), with OpenAI's ``x-ratelimit-*`` headers on every keyed response.
"""

from __future__ import annotations

import math
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from tokenhub.access import KeyRing
from tokenhub.gateway.errors import ErrorReply
from tokenhub.store.models import ApiKeyRow
from tokenhub.store.ratelimit import RateDecision, RateLimiter

AuthMode = Literal["auto", "keys", "none"]
# Failed authentications a client IP may have per minute before it is refused outright.
IP_FAILURES_PER_MIN = 30
SCOPES = {"/v1/chat/completions": "chat", "/v1/chat": "chat", "/v1/plan": "plan", "/v1/models": "models"}
_NO_RETRY = {"x-should-retry": "false"}


class AccessControl:
    def __init__(
        self,
        app: ASGIApp,
        *,
        ring: KeyRing,
        limiter: RateLimiter,
        mode: AuthMode,
        trusted_proxies: str = "127.0.0.1",
    ) -> None:
        """``trusted_proxies``: the peers whose X-Forwarded-For names the client (uvicorn's syntax)."""
        self.app = app
        self._ring = ring
        self._limiter = limiter
        self._mode = mode
        # The client's address counts only when it fails to authenticate, so the forwarded one is worked
        # out then, by uvicorn's own middleware, instead of by the server on every request (1.7 % of the
        # gateway's CPU under load). ``tokenhub serve`` runs uvicorn with its proxy headers off.
        self._forwarded = ProxyHeadersMiddleware(_nothing, trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/") or not self._required():
            await self.app(scope, receive, send)
            return
        secret = _presented(scope)
        key = self._ring.verify(secret) if secret else None
        if key is None:
            await self._refuse_unknown(scope, receive, send)
            return
        needed = SCOPES.get(path) or ("models" if path.startswith("/v1/models/") else None)
        if needed is not None and needed not in key.scopes:
            await ErrorReply(
                403,
                f"This API key does not have the '{needed}' scope.",
                "permission_error",
                "insufficient_scope",
                headers=_NO_RETRY,
            ).send(send)
            return
        limits = await self._limits(key)
        refused = next((d for _, d in limits if not d.allowed), None)
        headers = _rate_headers(limits)
        if refused is not None:
            reply = ErrorReply(
                429,
                "Rate limit reached for this API key; retry after the reset.",
                "rate_limit_error",
                "rate_limit_exceeded",
                retry_after=refused.retry_after_s,
                headers=dict(headers),
            )
            await reply.send(send)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, _with_headers(send, headers))

    def _required(self) -> bool:
        return self._mode == "keys" or (self._mode == "auto" and self._ring.any)

    async def _refuse_unknown(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._forwarded(scope, receive, send)  # type: ignore[arg-type]  # sets scope["client"]
        client = scope.get("client")
        decision = await self._limiter.hit(f"authfail:{client[0] if client else '-'}", IP_FAILURES_PER_MIN)
        if not decision.allowed:
            reply = ErrorReply(
                429,
                "Too many failed authentications from this address.",
                "rate_limit_error",
                "rate_limit_exceeded",
                retry_after=decision.retry_after_s,
            )
        else:
            reply = ErrorReply(
                401,
                "Missing or incorrect API key (Authorization: Bearer th-… or x-api-key).",
                "invalid_request_error",
                "invalid_api_key",
                headers=_NO_RETRY,
            )
        await reply.send(send)

    async def _limits(self, key: ApiKeyRow) -> list[tuple[str, RateDecision]]:
        limits = []
        if key.rpm:
            limits.append(("requests", await self._limiter.hit(f"rpm:{key.id}", key.rpm)))
        if key.tpm:
            limits.append(("tokens", await self._limiter.peek(f"tpm:{key.id}", key.tpm)))
        return limits


def _presented(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = str(value.decode("latin-1")).partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value.strip():
            return str(value.decode("latin-1")).strip()
    return None


def _rate_headers(limits: list[tuple[str, RateDecision]]) -> list[tuple[str, str]]:
    headers = []
    for kind, decision in limits:
        headers += [
            (f"x-ratelimit-limit-{kind}", str(decision.limit)),
            (f"x-ratelimit-remaining-{kind}", str(decision.remaining)),
            (f"x-ratelimit-reset-{kind}", _duration(decision.reset_s)),
        ]
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``850ms``, ``12s``, ``1m5s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


def _with_headers(send: Send, headers: list[tuple[str, str]]) -> Send:
    if not headers:
        return send
    raw = [(k.encode(), v.encode()) for k, v in headers]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *raw]
        await send(message)

    return sending


async def _nothing(scope: object, receive: object, send: object) -> None:
    """The application under ``ProxyHeadersMiddleware`` when only its change to the scope is wanted."""

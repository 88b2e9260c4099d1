"""The stack's own reference points, run in the same bench as the gateway: what the issue's targets were set
against (shared/reference/load-testing.md), so that they are measured here side by side, not quoted.

``--upstream URL``: the naive proxy, a Starlette endpoint that parses the request with orjson, sends it on to
the upstream with one shared ``aiohttp.ClientSession`` and returns the upstream's JSON, or relays its
stream as the bytes arrive.
Without it: the framework's floor, Starlette answering by itself with a fixed completion.
Both under uvicorn as ``tokenhub serve`` runs it (uvloop, httptools, no access log).

    python -m bench.reference_proxy --port P [--upstream URL]
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bench.upstream import DEFAULT_TOKENS, Responses

JSON = "application/json"


def proxy_app(upstream: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as app.state.session:
            yield

    async def chat(request: Request) -> Response:
        session: aiohttp.ClientSession = request.app.state.session
        payload = orjson.loads(await request.body())
        up = await session.post(upstream, data=orjson.dumps(payload), headers={"content-type": JSON})
        if not payload.get("stream"):
            async with up:
                return Response(await up.read(), status_code=up.status, media_type=JSON)

        async def relay() -> AsyncIterator[bytes]:
            async with up:
                async for data in up.content.iter_any():
                    yield data

        return StreamingResponse(relay(), status_code=up.status, media_type="text/event-stream")

    return Starlette(routes=_routes(chat), lifespan=lifespan)


def floor_app() -> Starlette:
    completion = _completion_body()

    async def chat(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(completion, media_type=JSON)

    return Starlette(routes=_routes(chat))


def _completion_body() -> bytes:
    """The fake upstream's own completion, without its HTTP head."""
    raw = Responses.build(DEFAULT_TOKENS).completion
    return raw[raw.index(b"\r\n\r\n") + 4 :]


def _routes(chat: Callable[[Request], Awaitable[Response]]) -> list[Route]:
    return [Route("/healthz", _healthz), Route("/v1/chat/completions", chat, methods=["POST"])]


async def _healthz(request: Request) -> Response:
    return Response(b"ok")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", help="the upstream's chat URL: run the naive proxy, not the floor")
    args = parser.parse_args()
    app = proxy_app(args.upstream) if args.upstream else floor_app()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

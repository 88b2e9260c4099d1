"""``tokenhub serve``: parse arguments, load configuration, hand over to uvicorn. Nothing else."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog
import uvicorn
from pydantic import ValidationError

from tokenhub.config import Catalog, ConfigError, Settings, load_catalog
from tokenhub.telemetry import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenhub", description="An OpenAI-compatible LLM gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to bind (default from TOKENHUB_LISTEN_ADDR, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default from TOKENHUB_LISTEN_ADDR, 8090)")
    serve.add_argument("--config", type=Path, help="providers/models YAML file (default TOKENHUB_CONFIG)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
        if args.host or args.port is not None:
            host = args.host or settings.host
            port = settings.port if args.port is None else args.port
            settings = Settings(listen_addr=f"{host}:{port}")
        config_path = args.config or settings.config
        catalog = load_catalog(config_path) if config_path else Catalog.empty()
    except ConfigError as exc:
        print(f"tokenhub: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "TOKENHUB_" + "_".join(str(p) for p in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        print(f"tokenhub: configuration error: {name}: {message}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if config_path is None:
        structlog.get_logger("tokenhub").warning(
            "no_config",
            detail="no providers/models file given (--config or TOKENHUB_CONFIG): nothing to route to",
        )
    from tokenhub.app import build_app

    app = build_app(settings, catalog)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
        server_header=False,
    )
    return 0

"""Run an engine: ``python -m tutor_engine [--host H] [--port P | --fd N]``."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from .app import create_app
from .config import EngineSettings

EXIT_LOAD_FAILED = 3  # the operator reads this exit code as "models failed to load"


def main(argv: list[str] | None = None) -> None:
    """Serve one tutor's engine until SIGTERM (exit 3 after a load failure, if so configured)."""
    settings = EngineSettings()
    parser = argparse.ArgumentParser(prog="tutor-engine", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--fd", type=int, help="serve on this already-bound socket (local mode)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s engine[{settings.tutor_id}] %(name)s: %(message)s",
    )

    def stop() -> None:
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        fd=args.fd,
        log_level=settings.log_level,
        ws_max_size=settings.max_message_bytes * 2,
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.run()
    if app.state.engine.load_error and settings.exit_on_load_failure:
        sys.exit(EXIT_LOAD_FAILED)


if __name__ == "__main__":
    main()

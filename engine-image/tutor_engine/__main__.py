"""Run an engine: ``python -m tutor_engine [--host H] [--port P | --fd N] [--parent-pid P]``.

SIGTERM drains (``tutor_engine.drain``): new sessions are refused, turns in flight finish
within ``ENGINE_DRAIN_SECONDS``, the remaining WebSockets close with 1012, and the exit code is 0.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from tutor_contract import logs, tracing
from tutor_contract.cores import limit_blas
from tutor_contract.version import version_line

from .app import create_app
from .config import EngineSettings
from .drain import DrainingServer
from .parent_watch import watch_parent
from .transport import WS_PROTOCOL

EXIT_LOAD_FAILED = 3  # the operator reads this exit code as "models failed to load"
log = logging.getLogger("tutor_engine")


def main(argv: list[str] | None = None) -> None:
    """Serve one tutor's engine until SIGTERM, then drain (exit 3 after a load failure, if so
    configured)."""
    settings = EngineSettings()
    parser = argparse.ArgumentParser(prog="tutor-engine", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line(parser.prog))
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--fd", type=int, help="serve on this already-bound socket (local mode)")
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="local mode: exit at once when this process (the gateway) dies, by any signal",
    )
    parser.add_argument(
        "--parent-fd",
        type=int,
        help="with --parent-pid: read end of the gateway's pipe; EOF means the gateway is gone",
    )
    args = parser.parse_args(argv)
    logs.configure(settings.log_level, "engine", settings.log_format, tutor_id=settings.tutor_id)
    tracing.configure("tutor-engine")  # spans over OTLP if OTEL_EXPORTER_OTLP_ENDPOINT is set
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, args.parent_fd)
    # numpy is loaded by now (the app imports it): cap its BLAS pool before any model runs.
    log.info("BLAS threads: %s", ", ".join(limit_blas(settings.blas_threads)) or "no BLAS loaded")

    def stop() -> None:
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        fd=args.fd,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through the handler of logs.configure
        ws=WS_PROTOCOL,  # invalid UTF-8 in a text frame gets an error, not close 1007
        ws_max_size=settings.max_message_bytes * 2,
        # No permessage-deflate: a few KB on the wire could inflate to dozens of frames at
        # once, and between the gateway and the engine compression buys nothing.
        ws_per_message_deflate=False,
        access_log=False,
        # After the drain only idle HTTP connections remain; never wait on them for long.
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(config, app.state.engine.drain)
    server.run()
    if app.state.engine.load_error and settings.exit_on_load_failure:
        sys.exit(EXIT_LOAD_FAILED)


if __name__ == "__main__":
    main()

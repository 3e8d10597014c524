"""Run an engine: ``python -m tutor_engine [--host H] [--port P | --fd N]``."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .config import EngineSettings


def main(argv: list[str] | None = None) -> None:
    """Serve one tutor's engine until SIGTERM."""
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
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        fd=args.fd,
        log_level=settings.log_level,
        ws_max_size=settings.max_message_bytes * 2,
        access_log=False,
    )


if __name__ == "__main__":
    main()

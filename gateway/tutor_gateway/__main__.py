"""Run the gateway: ``python -m tutor_gateway`` (settings from the environment and ``.env``;
``--help`` lists them, ``--version``)."""

from __future__ import annotations

import uvicorn
from tutor_contract import tracing
from tutor_contract.logs import configure

from . import cli
from .app import create_app
from .config import GatewaySettings
from .server import uvicorn_options


def main(argv: list[str] | None = None) -> None:
    """Serve the REST API and WebSocket on MANAGEMENT_API_HOST:MANAGEMENT_API_PORT."""
    cli.parser().parse_args(argv)  # --help, --version: print and exit before anything starts
    settings = GatewaySettings()
    configure(settings.log_level, "gateway", settings.log_format)
    tracing.configure("tutor-gateway")  # on only with OTEL_EXPORTER_OTLP_ENDPOINT
    uvicorn.run(
        create_app(settings),
        host=settings.management_api_host,
        port=settings.management_api_port,
        log_level=settings.log_level,
        log_config=None,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()

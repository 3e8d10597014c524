"""Run the gateway: ``python -m tutor_gateway`` (settings from the environment and ``.env``)."""

from __future__ import annotations

import uvicorn

from .app import create_app
from .config import GatewaySettings
from .logs import configure
from .server import uvicorn_options


def main() -> None:
    """Serve the REST API and WebSocket on MANAGEMENT_API_HOST:MANAGEMENT_API_PORT."""
    settings = GatewaySettings()
    configure(settings.log_level, "gateway")
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

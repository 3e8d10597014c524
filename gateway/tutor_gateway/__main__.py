"""Run the gateway: ``python -m tutor_gateway`` (settings from the environment and ``.env``)."""

from __future__ import annotations

import uvicorn

from .app import create_app
from .config import GatewaySettings
from .logs import configure


def main() -> None:
    """Serve the REST API and WebSocket on MANAGEMENT_API_HOST:MANAGEMENT_API_PORT."""
    settings = GatewaySettings()
    configure(settings.log_level, "gateway")
    uvicorn.run(
        create_app(settings),
        host=settings.management_api_host,
        port=settings.management_api_port,
        log_level=settings.log_level,
        ws_max_size=settings.max_message_bytes * 4,
        timeout_graceful_shutdown=10,
        log_config=None,
    )


if __name__ == "__main__":
    main()

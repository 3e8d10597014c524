"""``python -m tutor_gateway``'s command line: ``--help`` (every setting) and ``--version``.

The gateway is configured by environment variables (and ``.env``), not by options: ``--help``
lists them from :class:`~tutor_gateway.config.GatewaySettings`, with defaults, and starts
nothing.
"""

from __future__ import annotations

import argparse
import textwrap

from pydantic_core import PydanticUndefined
from tutor_contract.version import version_line

from .config import GatewaySettings

PROGRAM = "tutor-gateway"
DESCRIPTION = """\
Serve the GPU Server's REST API (/v1, /mgmt/v1, /health) and the conversation WebSocket
(/ws/ws/{session_id}) on MANAGEMENT_API_HOST:MANAGEMENT_API_PORT (default 0.0.0.0:9000).
API docs, offline: /docs, /redoc, /openapi.json and /asyncapi.yaml (the WebSocket).
Settings come from environment variables or a .env file in the working directory."""
SECRETS = ("key", "token", "password")  # defaults never shown for these


def _default(name: str, field: object) -> str:
    default = getattr(field, "default", None)
    if default is PydanticUndefined or default in (None, "") or any(s in name for s in SECRETS):
        return ""
    value = getattr(default, "get_secret_value", lambda: default)()
    return f" [{value}]" if value not in ("", None) else ""


def settings_help(width: int = 100) -> str:
    """One entry per setting: its variable, default and description."""
    lines = ["environment variables:"]
    for name, field in GatewaySettings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        variable = (alias or name).upper()
        lines.append(f"  {variable}{_default(name, field)}")
        if field.description:
            lines += textwrap.wrap(
                field.description, width, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The gateway's argument parser (no options but ``--help`` and ``--version``)."""
    result = argparse.ArgumentParser(
        prog=PROGRAM,
        description=DESCRIPTION,
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument("--version", action="version", version=version_line(PROGRAM))
    return result

"""Logging setup that never writes a secret: ``token=`` query values, ``token.<token>``
WebSocket subprotocols and ``Authorization`` / ``Bearer`` credentials are redacted (uvicorn
logs WebSocket URLs; at debug level websockets logs every handshake header)."""

from __future__ import annotations

import logging
import re

_TOKEN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)
_SECRETS = (
    _TOKEN,
    re.compile(r"(?<![\w.])(token\.)[\w-]+", re.IGNORECASE),  # Sec-WebSocket-Protocol
    re.compile(r"((?:authorization|x-engine-key):\s*)[^\r\n]+", re.IGNORECASE),  # header lines
    re.compile(r"(bearer\s+)[^\s\"',]+", re.IGNORECASE),
)


def redact(text: str) -> str:
    """``text`` with every ``token=<value>`` replaced by ``token=[REDACTED]``, and the same for
    ``token.<value>``, ``Authorization: <value>``, ``X-Engine-Key: <value>`` and
    ``Bearer <value>``."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1[REDACTED]", text)
    return text


class RedactTokens(logging.Filter):
    """Rewrites each record's final message without tokens (uvicorn logs WebSocket URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def configure(level: str, component: str) -> None:
    """Root logging for a process: one stderr handler with token redaction, quiet HTTP client."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactTokens())
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)

"""Logging setup that never writes a session token: ``token=`` query values are redacted."""

from __future__ import annotations

import logging
import re

_TOKEN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every ``token=<value>`` replaced by ``token=[REDACTED]``."""
    return _TOKEN.sub(r"\1[REDACTED]", text)


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

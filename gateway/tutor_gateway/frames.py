"""What the gateway itself says on a WebSocket: ``error`` frames and close codes.

Conversation frames belong to the engine; the gateway only speaks for auth, routing and limits,
and, when an engine is lost mid-reply, to end that reply (``error``, or ``interrupted`` on a
streaming connection).
"""

from __future__ import annotations

import time
from typing import Any

from .schemas import iso

CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # the session store is unavailable for a moment: reconnect
CLOSE_UNAUTHORIZED = 4401  # missing or wrong token
CLOSE_SESSION_NOT_FOUND = 4404  # no such session
CLOSE_SESSION_EXPIRED = 4408  # idle past SESSION_TIMEOUT_SECONDS
CLOSE_REPLACED = 4409  # a newer connection to the session took over (do not reconnect)
CLOSE_SESSION_ENDED = 4410  # ended through DELETE /v1/sessions/{id}
CLOSE_ENGINE_UNAVAILABLE = 4503  # the tutor's engine could not start or stopped
CLOSE_CLIENT_TOO_SLOW = 4504  # the client took no data for CLIENT_SEND_TIMEOUT_SECONDS


def error_frame(content: str) -> dict[str, Any]:
    """The seed's ``error`` message."""
    return {"type": "error", "content": content, "timestamp": iso(time.time())}


def interrupted_frame(reason: str) -> dict[str, Any]:
    """The engine's ``interrupted`` message, for a reply the gateway ends itself (its engine
    was lost mid-reply). Without ``reply_id`` and ``content``: the gateway relays replies
    without reading them, so it knows neither which reply it was nor how far it got (the client
    has the ``text_delta`` frames it received)."""
    return {
        "type": "interrupted",
        "role": "assistant",
        "reason": reason,
        "timestamp": iso(time.time()),
    }

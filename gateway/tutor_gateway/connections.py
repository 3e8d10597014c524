"""The open client connections of each session, so expiry, deletion and takeover can close them."""

from __future__ import annotations

from .relay import Ending, Relay


class Connections:
    """Relays by session id, oldest first."""

    def __init__(self, per_session: int) -> None:
        self.per_session = per_session
        self._relays: dict[str, dict[Relay, None]] = {}

    def add(self, session_id: str, relay: Relay) -> list[Relay]:
        """Register a new connection; return the oldest ones it displaces past the limit."""
        relays = self._relays.setdefault(session_id, {})
        relays[relay] = None
        excess = len(relays) - self.per_session
        return list(relays)[:excess] if excess > 0 else []

    def remove(self, session_id: str, relay: Relay) -> None:
        relays = self._relays.get(session_id)
        if relays is not None:
            relays.pop(relay, None)
            if not relays:
                del self._relays[session_id]

    def terminate(self, session_id: str, ending: Ending) -> int:
        """End every connection of a session; return how many there were."""
        relays = list(self._relays.get(session_id, {}))
        for relay in relays:
            relay.terminate(ending)
        return len(relays)

    def __len__(self) -> int:
        return sum(len(r) for r in self._relays.values())

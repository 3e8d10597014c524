"""The open client connections of each session, so expiry and deletion can close them."""

from __future__ import annotations

from collections import defaultdict

from .relay import Ending, Relay


class Connections:
    """Relays by session id."""

    def __init__(self) -> None:
        self._relays: defaultdict[str, set[Relay]] = defaultdict(set)

    def add(self, session_id: str, relay: Relay) -> None:
        self._relays[session_id].add(relay)

    def remove(self, session_id: str, relay: Relay) -> None:
        relays = self._relays.get(session_id)
        if relays is not None:
            relays.discard(relay)
            if not relays:
                del self._relays[session_id]

    def terminate(self, session_id: str, ending: Ending) -> int:
        """End every connection of a session; return how many there were."""
        relays = self._relays.get(session_id, set())
        for relay in list(relays):
            relay.terminate(ending)
        return len(relays)

    def __len__(self) -> int:
        return sum(len(r) for r in self._relays.values())

"""Session tokens: minted once, handed to the client, stored only as a SHA-256 hash.

The tokens are 256-bit random strings, so a fast hash is the right tool (a slow password hash
buys nothing against brute force of a 256-bit secret); comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def mint_token() -> str:
    """A new URL-safe random token (43 characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as stored on the session."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str | None, token_hash: str) -> bool:
    """Whether a presented token is the one whose hash is stored, in constant time."""
    if not token:
        return False
    return hmac.compare_digest(hash_token(token), token_hash)

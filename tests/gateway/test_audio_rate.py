"""Streamed audio through the gateway: binary frames are admitted by bytes
(MAX_AUDIO_BYTES_PER_SECOND), not as messages (MAX_MESSAGES_PER_SECOND)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tutor_gateway.config import GatewaySettings
from tutor_gateway.ratelimit import KeyedLimiter
from tutor_gateway.service import Gateway
from tutor_gateway.sessions import SqliteSessionStore

CHUNK = 640  # 20 ms of 16 kHz PCM16


class NoRouter:
    async def release(self, session: object) -> None:
        return None


def test_a_bucket_counts_amounts_and_refuses_what_does_not_fit() -> None:
    async def scenario() -> None:
        limiter = KeyedLimiter(rate=1000, burst=3000)
        assert await limiter.acquire("s", 2000)
        assert not await limiter.acquire("s", 2000)  # refused, not counted
        assert await limiter.acquire("s", 1000)
        other = KeyedLimiter(rate=1000, burst=3000)
        assert await other.acquire("s", 10_000)  # over the burst: fits an empty bucket only
        assert not await other.acquire("s", 1)

    asyncio.run(scenario())


def test_binary_frames_count_bytes_not_messages(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = GatewaySettings(
            _env_file=None,
            max_messages_per_second=1,
            max_messages_burst=2,
            max_audio_bytes_per_second=32000,
            max_audio_burst_bytes=64000,
        )
        store = await SqliteSessionStore.open(tmp_path / "sessions.db", 10)
        gateway = Gateway(settings, store, NoRouter())  # type: ignore[arg-type]
        # 2 s of audio in 20 ms frames at once: 100 frames, far over the message burst.
        for _ in range(100):
            assert await gateway.admit_message("s1", CHUNK) is None
        refused = await gateway.admit_message("s1", CHUNK)
        assert refused is not None and "MAX_AUDIO_BYTES_PER_SECOND" in refused
        # Messages still have their own budget, untouched by the audio.
        assert await gateway.admit_message("s1") is None
        assert await gateway.admit_message("s1") is None
        refused = await gateway.admit_message("s1")
        assert refused is not None and "MAX_MESSAGES_PER_SECOND" in refused
        # Another session's audio is not affected.
        assert await gateway.admit_message("s2", CHUNK) is None
        await store.close()

    asyncio.run(scenario())

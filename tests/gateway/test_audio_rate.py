"""Streamed audio through the gateway: binary frames are admitted by bytes
(MAX_AUDIO_BYTES_PER_SECOND), not as messages (MAX_MESSAGES_PER_SECOND); units, then a real
local-mode gateway and engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tutor_gateway.config import GatewaySettings
from tutor_gateway.local.store import SqliteSessionStore
from tutor_gateway.ratelimit import KeyedLimiter
from tutor_gateway.service import Gateway

from .helpers import create_session, open_ws, recv

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
        assert not await other.acquire("s", 3001)  # over the burst: never fits
        assert await other.acquire("s", 3000)  # and was not counted

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


def test_a_real_gateway_forwards_audio_frames_within_the_byte_rate_and_refuses_the_rest(
    gateway_factory,
) -> None:
    gateway = gateway_factory(
        max_messages_per_second=0.01,
        max_messages_burst=2,
        max_audio_bytes_per_second=1000,
        max_audio_burst_bytes=64000,
    )
    session = create_session(gateway, tutor_id=3)
    with open_ws(gateway, session) as ws:
        # One message of the budget of two opens the stream (no VAD: commit ends the turn).
        ws.send('{"type": "audio_start", "format": "pcm16", "sample_rate": 16000, "vad": false}')
        assert recv(ws)["type"] == "audio_start"
        silence = bytes(CHUNK)
        for _ in range(50):  # 1 s of audio in 20 ms frames, far over the message burst
            ws.send(silence)
        ws.send(bytes(64002))  # over the burst: never forwarded
        refused = recv(ws)
        assert refused["type"] == "error" and "MAX_AUDIO_BYTES_PER_SECOND" in refused["content"]
        # The second message: the engine heard the second of audio, not the refused frame.
        ws.send('{"type": "audio_commit"}')
        heard = recv(ws)
        assert heard == {**heard, "type": "transcription", "content": "(speech, 1.00 seconds)"}

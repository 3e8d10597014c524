"""Client frame parsing (seed messages and extensions) and the server's event builders."""

from __future__ import annotations

import base64
import io
import json
import wave

import numpy as np
import pytest
from tutor_engine.audio import encode_speech, pcm16_to_wav
from tutor_engine.protocol import (
    AudioIn,
    OptionsIn,
    ProtocolError,
    TextIn,
    audio_chunk_message,
    final_message,
    interrupted_message,
    parse_client_frame,
    text_delta_message,
)

pytestmark = pytest.mark.unit


def parse(payload: object) -> TextIn | AudioIn | OptionsIn:
    return parse_client_frame(json.dumps(payload), max_bytes=1 << 20, max_text_chars=100)


def test_seed_messages_parse() -> None:
    assert parse({"type": "text", "content": "hi"}) == TextIn("hi")
    data = base64.b64encode(b"RIFF....").decode()
    assert parse({"type": "audio", "data": data}) == AudioIn(b"RIFF....")


def test_options_opt_in_and_out() -> None:
    assert parse({"type": "options", "stream": True}) == OptionsIn(stream=True)
    assert parse({"type": "options"}) == OptionsIn(stream=False)


def test_options_choose_the_reply_audio_without_changing_the_stream_mode() -> None:
    options = parse({"type": "options", "audio_format": "pcm16", "sample_rate": 24000})
    assert options == OptionsIn(stream=None, audio_format="pcm16", sample_rate=24000)
    assert parse({"type": "options", "stream": True, "audio_format": "wav"}) == OptionsIn(
        stream=True, audio_format="wav"
    )


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"audio_format": "mp3"}, "expected one of wav, pcm16"),
        ({"audio_format": "pcm16", "sample_rate": 12345}, "expected one of 8000, 16000"),
        ({"sample_rate": True}, "Unsupported 'sample_rate' True"),
        ({"sample_rate": "16000"}, "Unsupported 'sample_rate' '16000'"),
    ],
)
def test_bad_reply_audio_options_name_the_allowed_values(payload: dict, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse({"type": "options", **payload})


def test_raw_pcm16_arrives_as_a_16khz_wav() -> None:
    pcm = b"\x01\x00" * 1600
    message = parse({"type": "audio", "format": "pcm16", "data": base64.b64encode(pcm).decode()})
    assert isinstance(message, AudioIn)
    with wave.open(io.BytesIO(message.data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.readframes(wav.getnframes()) == pcm


def test_a_container_format_is_only_a_hint() -> None:
    data = base64.b64encode(b"\x1aE\xdf\xa3").decode()
    assert parse({"type": "audio", "format": "webm", "data": data}) == AudioIn(b"\x1aE\xdf\xa3")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"type": "options", "stream": "yes"}, "'stream' must be true or false"),
        ({"type": "audio", "format": "aiff", "data": "AAAA"}, "Unknown audio 'format'"),
        ({"type": "audio", "format": 3, "data": "AAAA"}, "Unknown audio 'format'"),
        ({"type": "audio", "format": "pcm16", "data": "AAAA"}, "even number of bytes"),
        ({"type": "audio", "data": "not base64!"}, "not valid base64"),
        ({"type": "text", "content": "x" * 101}, "too long"),
        ({"type": "video"}, "Unknown message type"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_frames_get_clear_errors(payload: object, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse(payload)


def test_stream_events_carry_the_reply_id() -> None:
    assert text_delta_message(3, "Hel")["reply_id"] == 3
    chunk = audio_chunk_message(3, 1, "Hello there.", base64.b64encode(b"RIFF").decode())
    assert chunk["type"] == "audio_chunk" and "format" not in chunk
    assert (chunk["index"], chunk["content"], base64.b64decode(chunk["data"])) == (
        1,
        "Hello there.",
        b"RIFF",
    )
    final = final_message(3, "Hello there.", 1)
    assert (final["type"], final["final"], final["role"], final["audio_chunks"]) == (
        "text",
        True,
        "assistant",
        1,
    )
    assert interrupted_message(3, "Hel")["content"] == "Hel"


def parse_raw(frame: str | bytes, max_bytes: int = 1 << 20) -> TextIn | AudioIn | OptionsIn:
    return parse_client_frame(frame, max_bytes=max_bytes, max_text_chars=100)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "nested too deeply"),
        ('{"type": "text", "content": "hi", "n": ' + "9" * 5000 + "}", "too long"),
        ('{"type": "text", "content": "hi", "n": ' + "9" * 65 + "}", "too long"),
        ('{"type": "text", "content": "hi", "n": NaN}', "NaN is not a JSON number"),
        ('{"type": "text", "content": "hi", "n": -Infinity}', "-Infinity is not"),
        ('{"type": "text", "content": "hi", "n": 1e999}', "out of range"),
        ('{"type": "text", "content": "\\ud800 lone"}', "not valid Unicode"),
        ("not json", "Invalid JSON: Expecting value"),
        (b'{"type": "text", "content": "hi"}', "send each message as JSON text"),
        (b"\xff\xfe\x00", "send each message as JSON text"),
        ("x" * ((1 << 20) + 1), "Message too large"),
        ("[" + ",".join(["{}"] * 100_000) + "]", "Message too complex"),
        ("[" + ",".join(["1"] * 100_000) + "]", "Message too complex"),
    ],
)
def test_frames_the_json_module_would_crash_on_or_accept_are_refused(
    frame: str | bytes, error: str
) -> None:
    with pytest.raises(ProtocolError, match=error) as refused:
        parse_raw(frame)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 300


def test_a_large_audio_frame_is_still_an_audio_message() -> None:
    audio = bytes(range(256)) * 1024  # 256 KiB: parsed as a large frame
    frame = json.dumps(
        {"type": "audio", "format": "webm", "data": base64.b64encode(audio).decode()}
    )
    assert len(frame) > 64 * 1024
    assert parse_raw(frame) == AudioIn(audio)


def test_a_huge_unknown_type_is_described_briefly() -> None:
    with pytest.raises(ProtocolError) as refused:
        parse({"type": "v" * 100_000})
    assert len(str(refused.value)) < 200


def test_small_numbers_and_unicode_are_fine() -> None:
    frame = '{"type": "text", "content": "caf\\u00e9 \\ud83d\\ude00", "n": 12, "x": 1.5}'
    assert parse_raw(frame) == TextIn("café 😀")


def test_reply_audio_is_resampled_as_pcm16_keeping_its_length_and_pitch() -> None:
    t = np.arange(22050) / 22050  # one second of a 440 Hz tone at Piper joe's rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    wav = pcm16_to_wav(tone.tobytes(), 22050)
    assert base64.b64decode(encode_speech(wav, None)) == wav  # WAV: as the TTS made it
    out = np.frombuffer(base64.b64decode(encode_speech(wav, 16000)), dtype="<i2")
    assert abs(len(out) - 16000) <= 32
    crossings = np.count_nonzero(np.diff(np.signbit(out[100:-100])))
    assert abs(crossings / 2 / ((len(out) - 200) / 16000) - 440) < 5
    assert base64.b64decode(encode_speech(wav, 22050)) == tone.tobytes()  # same rate: as is

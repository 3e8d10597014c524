"""Engine settings: environment variables with the ``ENGINE_`` prefix (and ``.env``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseSettings):
    """Configuration of one engine process; the operator and the local provisioner set these."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_", env_file=".env", extra="ignore")

    tutor_id: int = Field(0, ge=0, description="The tutor this engine serves.")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str = Field(
        "",
        description="Shared secret the gateway sends as X-Engine-Key; empty disables the check.",
    )
    system_prompt: str = "You are a patient, encouraging tutor."

    llm_backend: Literal["mock", "openai"] = "mock"
    llm_base_url: str = "http://127.0.0.1:8001/v1"
    llm_model: str = ""
    llm_api_key: str = "EMPTY"
    llm_max_tokens: int = Field(512, ge=1)
    llm_temperature: float = Field(0.7, ge=0, le=2)

    asr_backend: Literal["mock", "faster-whisper"] = "mock"
    asr_model: str = "large-v3"
    asr_device: str = "auto"
    asr_compute_type: str = "default"
    asr_language: str | None = None

    tts_backend: Literal["mock", "piper", "coqui"] = "mock"
    tts_model: str = ""
    tts_config: str = ""
    tts_device: str = "auto"

    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest client frame accepted (bytes)."
    )
    max_text_chars: int = Field(4000, ge=1)
    max_audio_seconds: float = Field(60.0, gt=0)
    max_history_messages: int = Field(
        40, ge=0, description="User and assistant messages kept per session."
    )
    session_ttl_seconds: float = Field(
        7200.0, gt=0, description="History of a session with no traffic is dropped after this."
    )
    log_level: str = "info"

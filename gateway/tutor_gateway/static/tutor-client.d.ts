// Types of tutor-client.js (its JSDoc says the same; this file is for TypeScript users of the
// npm package). Close codes, events and behaviour are documented in tutor-client.js.

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";
export type EngineState = "unknown" | "waiting" | "ready" | "unavailable";
export type PlaybackState = "idle" | "playing" | "ended" | "stopped";

export interface ReconnectPolicy {
  /** Attempts in a row before giving up (default 8); reset once the engine answers. */
  maxAttempts?: number;
  /** First delay in ms (default 500); it doubles, with jitter. */
  initialDelayMs?: number;
  /** Longest delay in ms (default 15000). */
  maxDelayMs?: number;
}

export interface TutorClientOptions {
  /** The session's `engine_url` (ws:// or wss://). */
  engineUrl: string;
  /** The session's `engine_token`. */
  engineToken: string;
  /** Opt into streaming events (default true). */
  stream?: boolean;
  /** Stop reply audio when the student speaks or sends (default true). */
  bargeIn?: boolean;
  /** Automatic reconnects on the close codes that allow them; false disables them. */
  reconnect?: ReconnectPolicy | false;
  /** End a recording after this much silence following speech (0: only stopRecording()). */
  autoStopSilenceMs?: number;
  /** RMS level (0..1) below which microphone input is silence (default 0.01). */
  silenceThreshold?: number;
  /** Longest recording in ms; sent when reached (default 60000). */
  maxRecordingMs?: number;
  /** Largest frame sent (default 8 MiB). */
  maxMessageBytes?: number;
  /** Messages kept while (re)connecting (default 32). */
  maxQueuedMessages?: number;
}

export interface TextMessage {
  type: "text";
  content: string;
  role: "assistant";
  timestamp: string;
  reply_id?: number;
  final?: boolean;
  audio_chunks?: number;
}
export interface TranscriptionMessage {
  type: "transcription";
  content: string;
  role: "user";
  timestamp: string;
  reply_id?: number;
}
export interface AudioMessage {
  type: "audio";
  content: string;
  data: string;
  role: "assistant";
  timestamp: string;
}
export interface ErrorMessage {
  type: "error";
  content: string;
  timestamp: string;
}
export interface OptionsMessage {
  type: "options";
  stream: boolean;
  timestamp: string;
}
export interface TextDeltaMessage {
  type: "text_delta";
  reply_id: number;
  content: string;
  role: "assistant";
  timestamp: string;
}
export interface AudioChunkMessage {
  type: "audio_chunk";
  reply_id: number;
  index: number;
  content: string;
  data: string;
  role: "assistant";
  timestamp: string;
}
/** Without `reply_id` and `content` when the gateway ends a reply whose engine was lost. */
export interface InterruptedMessage {
  type: "interrupted";
  reply_id?: number;
  content?: string;
  reason: string;
  role: "assistant";
  timestamp: string;
}
/** A message type this version does not know (e.g. a later `status`), as it came. */
export interface OtherMessage {
  type: string;
  [field: string]: unknown;
}
export type ServerMessage =
  | TextMessage
  | TranscriptionMessage
  | AudioMessage
  | ErrorMessage
  | OptionsMessage
  | TextDeltaMessage
  | AudioChunkMessage
  | InterruptedMessage
  | OtherMessage;

export interface StateDetail {
  state: ConnectionState;
  previous: ConnectionState;
  code?: number;
  reason?: string;
  gaveUp?: boolean;
}
export interface ReconnectingDetail {
  attempt: number;
  delayMs: number;
  code: number;
  reason: string;
}
export interface EngineDetail {
  state: EngineState;
}
export interface PlaybackDetail {
  state: PlaybackState;
  replyId: string;
}
export interface RecordingDetail {
  state: "recording" | "sent" | "cancelled";
  durationMs?: number;
  bytes?: number;
  format?: string;
}
export interface LatencyDetail {
  kind: "speech" | "text";
  ms: number;
}

export interface TutorClientEventMap {
  message: ServerMessage;
  text: TextMessage;
  transcription: TranscriptionMessage;
  audio: AudioMessage;
  error: ErrorMessage;
  options: OptionsMessage;
  text_delta: TextDeltaMessage;
  audio_chunk: AudioChunkMessage;
  interrupted: InterruptedMessage;
  state: StateDetail;
  reconnecting: ReconnectingDetail;
  engine: EngineDetail;
  playback: PlaybackDetail;
  recording: RecordingDetail;
  latency: LatencyDetail;
  invalid: { raw: string };
}

export declare const CLOSE_CODES: Readonly<Record<number, { meaning: string; reconnect: boolean }>>;
export declare const CLIENT_EVENTS: readonly string[];
export declare function shouldReconnect(code: number): boolean;
export declare function backoffDelay(
  attempt: number,
  policy: { initialDelayMs: number; maxDelayMs: number },
  random?: () => number,
): number;
export declare function toBase64(bytes: Uint8Array): string;
export declare function fromBase64(text: string): Uint8Array;

export declare class TutorClient extends EventTarget {
  constructor(options: TutorClientOptions);
  readonly engineUrl: string;
  stream: boolean;
  bargeIn: boolean;
  readonly state: ConnectionState;
  readonly engineState: EngineState;
  /** All reply audio: `playing` while any reply sounds, else how the last one ended. */
  readonly playbackState: PlaybackState;
  readonly recording: boolean;
  on<K extends keyof TutorClientEventMap>(
    type: K,
    listener: (detail: TutorClientEventMap[K], event: CustomEvent) => void,
  ): () => void;
  on(type: string, listener: (detail: OtherMessage, event: CustomEvent) => void): () => void;
  connect(): Promise<void>;
  send(message: { type: string; [field: string]: unknown }): void;
  sendText(content: string): void;
  sendAudio(
    audio: Blob | ArrayBuffer | Uint8Array,
    options?: { format?: string; speechEndedAt?: number },
  ): Promise<void>;
  startRecording(): Promise<void>;
  stopRecording(): Promise<void>;
  cancelRecording(): Promise<void>;
  stopPlayback(): boolean;
  close(code?: number, reason?: string): void;
}

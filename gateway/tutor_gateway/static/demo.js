// @ts-check
/**
 * The talk-to-a-tutor page (GET /demo): creates a session through the REST API, as a Web
 * Server would, and talks to the tutor with tutor-client.js. Its state is mirrored on <body>
 * as data attributes (connection, engine, playback, recording, latency-ms) for people and
 * tests alike. The management key lives only in its input field.
 */
import { CLOSE_CODES, TutorClient } from "./tutor-client.js";

/** @param {string} id */
const $ = (id) => /** @type {HTMLInputElement} */ (document.getElementById(id));

const ENGINE_TEXT = {
  unknown: "—",
  waiting: "waiting for the tutor engine…",
  ready: "ready",
  unavailable: "unavailable: the tutor's engine could not start",
};
const KNOWN = new Set([
  "text",
  "transcription",
  "audio",
  "error",
  "options",
  "text_delta",
  "audio_chunk",
  "interrupted",
]);

/** @type {TutorClient | null} */
let client = null;
/** @type {string | null} */
let sessionId = null;
/** @type {Map<number, HTMLLIElement>} the tutor's entries by reply id (this socket) */
let replies = new Map();
/** @type {HTMLLIElement | null} */
let lastTutorEntry = null;

/**
 * A REST call to the gateway, with the management key when one is entered.
 * @param {string} method
 * @param {string} path
 * @param {object} [body]
 */
async function api(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = {};
  const key = $("management-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!response.ok) {
    const detail = await response.json().then(
      (json) => (typeof json.detail === "string" ? json.detail : JSON.stringify(json.detail)),
      () => response.statusText,
    );
    throw new Error(`${method} ${path} answered ${response.status}: ${detail}`);
  }
  return response.status === 204 ? null : response.json();
}

/**
 * @param {string} name
 * @param {string} value
 */
function mirror(name, value) {
  document.body.dataset[name] = value;
}

/**
 * Add a line to the conversation.
 * @param {string} kind user, tutor, error or note (plus extra classes)
 * @param {string} who
 * @param {string} text
 */
function entry(kind, who, text) {
  const item = document.createElement("li");
  item.className = `turn ${kind}`;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const content = document.createElement("span");
  content.className = "text";
  content.textContent = text;
  item.append(label, content);
  $("transcript").append(item);
  item.scrollIntoView({ block: "nearest" });
  return item;
}

/** @param {number | undefined} replyId */
function tutorEntry(replyId) {
  let item = replyId === undefined ? undefined : replies.get(replyId);
  if (item === undefined) {
    item = entry("tutor", "Tutor", "");
    if (replyId !== undefined) {
      item.dataset.replyId = String(replyId);
      replies.set(replyId, item);
    }
  }
  lastTutorEntry = item;
  return item;
}

/**
 * @param {HTMLLIElement} item
 * @param {string} text
 * @param {boolean} [append]
 */
function setText(item, text, append = false) {
  const content = /** @type {HTMLElement} */ (item.querySelector(".text"));
  content.textContent = append ? content.textContent + text : text;
}

/** @param {string} text */
function showError(text) {
  entry("error", "Error", text);
}

/** @param {boolean} live */
function setLive(live) {
  for (const id of ["talk", "message", "send", "end"]) $(id).disabled = !live;
  for (const id of ["tutor-id", "student-id", "kb-id", "stream", "auto-send", "start"]) {
    $(id).disabled = live;
  }
}

/** @param {TutorClient} tutor */
function wire(tutor) {
  tutor.on("state", ({ state, code, reason, gaveUp }) => {
    mirror("connection", state);
    /** @type {Record<string, string>} */
    const texts = { connecting: "connecting…", open: "connected", idle: "not connected" };
    let text = texts[state];
    if (state === "closed") {
      const meaning = code === undefined ? "" : CLOSE_CODES[code]?.meaning ?? reason ?? "";
      text = `closed (${code}${meaning ? `: ${meaning}` : ""})${gaveUp ? ", gave up" : ""}`;
      client = null;
      sessionId = null;
      setLive(false);
      mirror("recording", "idle");
      $("talk").setAttribute("aria-pressed", "false");
      $("talk").textContent = "Talk";
    }
    if (state === "open") replies = new Map();
    if (text !== undefined) $("connection-status").textContent = text;
  });
  tutor.on("reconnecting", ({ attempt, delayMs, code }) => {
    const why = CLOSE_CODES[code]?.meaning ?? `code ${code}`;
    $("connection-status").textContent =
      `reconnecting in ${(delayMs / 1000).toFixed(1)} s (attempt ${attempt}): ${why}`;
  });
  tutor.on("engine", ({ state }) => {
    mirror("engine", state);
    $("engine-status").textContent = ENGINE_TEXT[state];
  });
  tutor.on("transcription", (message) => {
    entry("user spoken", "You (spoken)", message.content);
  });
  tutor.on("text_delta", (message) => {
    setText(tutorEntry(message.reply_id), message.content, true);
  });
  tutor.on("text", (message) => {
    const item = tutorEntry(message.final ? message.reply_id : undefined);
    setText(item, message.content);
    if (message.final) item.classList.add("final");
  });
  tutor.on("interrupted", (message) => {
    if (message.reply_id === undefined) {
      // The gateway's: the engine was lost mid-reply; the next engine numbers replies anew.
      lastTutorEntry?.classList.add("interrupted");
      replies = new Map();
      return;
    }
    const item = tutorEntry(message.reply_id);
    if (message.content !== undefined) setText(item, message.content);
    item.classList.add("interrupted");
  });
  tutor.on("error", (message) => showError(message.content));
  tutor.on("status", (message) => {
    const said = message.content ?? message.state;
    if (typeof said === "string") $("engine-status").textContent = said;
  });
  tutor.on("message", (message) => {
    if (!KNOWN.has(message.type) && message.type !== "status") {
      entry("note", `[${message.type}]`, JSON.stringify(message).slice(0, 300));
    }
  });
  tutor.on("invalid", ({ raw }) => entry("note", "[invalid]", raw));
  tutor.on("playback", ({ state }) => {
    mirror("playback", tutor.playbackState);
    if (state === "stopped") lastTutorEntry?.classList.add("cut");
  });
  tutor.on("recording", ({ state }) => {
    const recording = state === "recording";
    mirror("recording", state);
    $("talk").setAttribute("aria-pressed", String(recording));
    $("talk").textContent = recording ? "Stop and send" : "Talk";
  });
  tutor.on("latency", ({ kind, ms }) => {
    const text = kind === "speech" ? `first audio ${ms} ms after the end of speech` : `first text ${ms} ms after sending`;
    $("latency").textContent = text;
    if (kind === "speech") mirror("latencyMs", String(ms));
    if (lastTutorEntry !== null) {
      const note = document.createElement("span");
      note.className = "latency";
      note.textContent = text;
      lastTutorEntry.append(note);
    }
  });
}

async function start() {
  const body = {
    tutor_id: Number($("tutor-id").value),
    student_id: Number($("student-id").value),
    ...($("kb-id").value.trim() ? { kb_id: $("kb-id").value.trim() } : {}),
  };
  $("start").disabled = true;
  try {
    const session = await api("POST", "/v1/sessions", body);
    sessionId = session.session_id;
    client = new TutorClient({
      engineUrl: session.engine_url,
      engineToken: session.engine_token,
      stream: $("stream").checked,
      autoStopSilenceMs: $("auto-send").checked ? 800 : 0,
    });
    wire(client);
    setLive(true);
    $("transcript").replaceChildren();
    lastTutorEntry = null;
    await client.connect();
  } catch (error) {
    showError(String(error instanceof Error ? error.message : error));
    if (client === null) $("start").disabled = false;
  }
}

async function end() {
  if (sessionId === null) return;
  $("end").disabled = true;
  try {
    await api("DELETE", `/v1/sessions/${encodeURIComponent(sessionId)}`);
  } catch (error) {
    showError(String(error instanceof Error ? error.message : error));
    client?.close();
  }
}

async function talk() {
  if (client === null) return;
  try {
    if (client.recording) await client.stopRecording();
    else await client.startRecording();
  } catch (error) {
    showError(String(error instanceof Error ? error.message : error));
  }
}

/** @param {SubmitEvent} event */
function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (client === null || !text) return;
  try {
    client.sendText(text);
    entry("user typed", "You", text);
    $("message").value = "";
  } catch (error) {
    showError(String(error instanceof Error ? error.message : error));
  }
}

$("session-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void start();
});
$("end").addEventListener("click", () => void end());
$("talk").addEventListener("click", () => void talk());
$("compose").addEventListener("submit", send);
mirror("ready", "true");

"""Logging for the gateway, the engines and the operator: text or JSON lines, never a secret.

``configure(level, component, log_format)`` installs one stderr handler on the root logger
(uvicorn's, websockets' and httpx' loggers propagate to it). ``LOG_FORMAT=text`` writes
``<time> <LEVEL> <component> <logger> [session=… tutor_id=…]: <message>``; ``LOG_FORMAT=json``
one JSON object a line (python-json-logger) with ``time`` (ISO 8601, UTC), ``level``,
``component``, ``logger``, ``message``, ``session`` (the short session id) and ``tutor_id`` where
known, ``exc_info`` (the traceback as text) and any ``extra=`` fields.

The session and tutor ids come from context variables set by :func:`bind` (asyncio tasks
inherit them, so one bind in a connection's handler covers everything it starts) or from the
static fields given to :func:`configure` (an engine's tutor id).

Redaction: ``token=`` query values, ``token.<token>`` WebSocket subprotocols, ``Authorization``
/ ``X-Engine-Key`` header lines and ``Bearer`` credentials are replaced by ``[REDACTED]`` in the
final output, message, traceback and extra fields alike (uvicorn logs WebSocket URLs; at debug
level websockets logs every handshake header). :func:`adopt_handlers` gives handlers someone else
installed (kopf's) the same redaction and fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
SHORT_ID_LENGTH = 8  # of a session id in logs (and in span attributes)
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")

_TOKEN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)
_SECRETS = (
    _TOKEN,
    re.compile(r"(?<![\w.])(token\.)[\w-]+", re.IGNORECASE),  # Sec-WebSocket-Protocol
    re.compile(r"((?:authorization|x-engine-key):\s*)[^\r\n]+", re.IGNORECASE),  # header lines
    re.compile(r"(bearer\s+)[^\s\"',]+", re.IGNORECASE),
)

# Fields a line has when known, after time, level, component, logger and message.
_CONTEXT_FIELDS = ("session", "tutor_id")
# Record attributes that are never extra fields: the LogRecord's own, the ones set here,
# uvicorn's ``color_message`` (the message again, with ANSI colours), websockets' ``websocket``
# (the connection object) and kopf's own.
_NOT_EXTRA = frozenset(
    {*RESERVED_ATTRS, "taskName", "component", *_CONTEXT_FIELDS}
    | {"color_message", "websocket", "k8s_skip", "k8s_ref", "settings"}
)

_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("log_session", default=None)
_tutor_id: contextvars.ContextVar[object] = contextvars.ContextVar("log_tutor_id", default=None)


def redact(text: str) -> str:
    """``text`` with every ``token=<value>`` replaced by ``token=[REDACTED]``, and the same for
    ``token.<value>``, ``Authorization: <value>``, ``X-Engine-Key: <value>`` and
    ``Bearer <value>``."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1[REDACTED]", text)
    return text


def _scrub(value: Any) -> Any:
    """A JSON value with every string in it (keys too) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {(redact(k) if isinstance(k, str) else k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


def short_id(session_id: str) -> str:
    """What logs (and spans) show of a session id: its first 8 characters (any character
    outside ``[A-Za-z0-9._-]``, as a decoded URL path may hold, shown as ``?``)."""
    return _UNSAFE_ID.sub("?", session_id[:SHORT_ID_LENGTH])


class Binding:
    """The ids :func:`bind` set; as a context manager, they are unset when the block ends."""

    def __init__(self, tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]]):
        self._tokens = tokens

    def reset(self) -> None:
        """Restore the values from before the bind (in the same task)."""
        while self._tokens:
            var, token = self._tokens.pop()
            var.reset(token)

    def __enter__(self) -> Binding:
        return self

    def __exit__(self, *_: object) -> None:
        self.reset()


def bind(session: str | None = None, tutor_id: object = None) -> Binding:
    """Tag every line logged from here on in this context (this asyncio task and the tasks it
    starts afterwards) with the session's short id and the tutor id; ``None`` leaves one as it
    was. Use as ``with bind(...):`` to undo it at the end of the block, or call it at the top of
    a connection's handler: the task's context ends with the connection."""
    tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]] = []
    if session is not None:
        tokens.append((_session, _session.set(short_id(str(session)))))
    if tutor_id is not None:
        tokens.append((_tutor_id, _tutor_id.set(tutor_id)))
    return Binding(tokens)


def bound() -> dict[str, object]:
    """The ids bound in this context: ``session`` and ``tutor_id``, when set."""
    found = {"session": _session.get(), "tutor_id": _tutor_id.get()}
    return {name: value for name, value in found.items() if value is not None}


class RedactTokens(logging.Filter):
    """Rewrites each record's final message without tokens, for every handler that formats it
    (the formatters here redact their whole output as well)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


class ContextFilter(logging.Filter):
    """Puts ``component`` and the bound ``session`` / ``tutor_id`` on each record (``fields``:
    defaults for the process, e.g. an engine's tutor id); a record's own ``extra=`` wins."""

    def __init__(self, component: str, **fields: object) -> None:
        super().__init__()
        self.component = component
        self.fields = {name: value for name, value in fields.items() if value is not None}

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "component"):
            record.component = self.component
        for name, value in {**self.fields, **bound()}.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _iso_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``session`` and ``tutor_id``, those that are known."""
    found = {name: getattr(record, name, None) for name in _CONTEXT_FIELDS}
    return {name: value for name, value in found.items() if value is not None}


def _common(record: logging.LogRecord, component: str) -> dict[str, Any]:
    """The fields every JSON line starts with."""
    return {
        "time": _iso_time(record),
        "level": record.levelname,
        "component": getattr(record, "component", component),
        "logger": record.name,
        "message": record.getMessage(),
        **_context(record),
    }


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <component> <logger> [session=… tutor_id=…]: <message>``, redacted."""

    def __init__(self, component: str) -> None:
        super().__init__("%(message)s")
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{name}={value}" for name, value in _context(record).items())
        component = getattr(record, "component", self.component)
        head = f"{_iso_time(record)} {record.levelname} {component} {record.name}"
        line = f"{head}{f' [{context}]' if context else ''}: {super().format(record)}"
        return redact(line)


class JsonFormatter(_JsonFormatter):
    """One JSON object a line: ``time``, ``level``, ``component``, ``logger``, ``message``, then
    ``session`` / ``tutor_id`` when known, ``exc_info`` and extra fields; every string in the
    line is redacted after serialization (objects included, as the encoder wrote them)."""

    def __init__(self, component: str) -> None:
        super().__init__(reserved_attrs=sorted(_NOT_EXTRA))
        self.component = component

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        extra: dict[str, Any] = {}
        super().add_fields(extra, record, message_dict)  # exc_info, stack_info, extra=
        log_data.update(_common(record, self.component))
        for name, value in extra.items():
            log_data.setdefault(name, value)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        plain = json.loads(super().jsonify_log_record(log_data))
        return json.dumps(_scrub(plain), ensure_ascii=self.json_ensure_ascii)


class _AdoptedJson(logging.Formatter):
    """Another JSON formatter's lines (kopf's) with our leading fields added, redacted."""

    def __init__(self, inner: logging.Formatter, component: str) -> None:
        super().__init__()
        self.inner, self.component = inner, component

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        try:
            data = json.loads(line)
        except ValueError:
            return redact(line)
        if not isinstance(data, dict):
            return redact(line)
        return json.dumps(_scrub({**_common(record, self.component), **data}))


class _AdoptedText(logging.Formatter):
    """Another text formatter's lines, redacted."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def formatter(component: str, log_format: str) -> logging.Formatter:
    """The formatter of ``LOG_FORMAT`` (``text`` or ``json``)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    return JsonFormatter(component) if log_format == "json" else TextFormatter(component)


def handler(component: str, log_format: str = "text", **fields: object) -> logging.Handler:
    """A stderr handler with redaction, the context fields and the chosen format."""
    stream = logging.StreamHandler()
    stream.addFilter(RedactTokens())
    stream.addFilter(ContextFilter(component, **fields))
    stream.setFormatter(formatter(component, log_format))
    return stream


def configure(level: str, component: str, log_format: str = "text", **fields: object) -> None:
    """Root logging for a process: one stderr handler (``handler``) that Python warnings go
    through too, quiet HTTP client.

    ``fields`` tag every line (e.g. ``tutor_id=`` in an engine) unless a bind says otherwise.
    """
    root = logging.getLogger()
    root.handlers[:] = [handler(component, log_format, **fields)]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings as log lines too (JSON lines stay JSON)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def adopt_handlers(component: str, log_format: str, **fields: object) -> None:
    """Give the root logger's handlers that someone else installed (kopf's) the same
    redaction and context fields; in JSON their lines also gain ``time``, ``level``,
    ``component`` and ``logger`` (kept beside their own fields)."""
    for existing in logging.getLogger().handlers:
        existing.addFilter(RedactTokens())
        existing.addFilter(ContextFilter(component, **fields))
        inner = existing.formatter or logging.Formatter()
        if log_format == "json":
            existing.setFormatter(_AdoptedJson(inner, component))
        else:
            existing.setFormatter(_AdoptedText(inner))

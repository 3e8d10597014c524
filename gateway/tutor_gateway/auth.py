"""Who may call the gateway: management API keys, and the WebSocket's Origin and token protocol.

Management API (the Web Server's side): when ``MANAGEMENT_API_KEYS`` or
``MANAGEMENT_API_KEYS_FILE`` names a key, every ``/v1`` and ``/mgmt/v1`` request (and ``/metrics``
with ``METRICS_REQUIRE_KEY``) needs ``Authorization: Bearer <key>``; otherwise it is answered
401 with a JSON ``detail`` and ``WWW-Authenticate: Bearer realm="tutor-gateway"`` (RFC 6750,
with ``error="invalid_token"`` when a wrong key was given). Keys are held only as SHA-256
digests and compared in constant time (every digest, whatever matched); the key file is looked
at at most once a second and re-read when it changed, so a key rotates without a restart: add
the new key, switch the Web Server to it, remove the old one.

Student WebSocket: the session token comes in ``?token=`` (the seed's way) or as a
``Sec-WebSocket-Protocol`` value ``token.<engine_token>`` offered beside ``tutor.v1``; the
server then selects ``tutor.v1``, never the token. With ``ALLOWED_ORIGINS`` set, a handshake
whose ``Origin`` is not in the list is refused with 403; one without ``Origin`` (not a browser)
is let through.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .tokens import hash_token

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .config import GatewaySettings

log = logging.getLogger("tutor_gateway.auth")

REALM = "tutor-gateway"
RELOAD_INTERVAL_SECONDS = 1.0
"""Least time between two looks at MANAGEMENT_API_KEYS_FILE (a ``stat``; read only if changed)."""
MIN_KEY_CHARACTERS = 16
"""Shorter keys are accepted, with a warning at startup (the chart generates 40 characters)."""
MANAGEMENT_PREFIXES = ("/v1", "/mgmt/v1")
SUBPROTOCOL = "tutor.v1"
"""The WebSocket subprotocol the gateway selects when a client offers it."""
TOKEN_PROTOCOL_PREFIX = "token."
"""``Sec-WebSocket-Protocol: tutor.v1, token.<engine_token>`` carries the session token."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

Problem = Literal["missing", "invalid"]


# ---------------------------------------------------------------------------------------------
# Management API keys


class KeyFileError(ValueError):
    """MANAGEMENT_API_KEYS_FILE cannot be read when the gateway starts."""


def env_keys(text: str) -> list[str]:
    """The keys of ``MANAGEMENT_API_KEYS``: comma-separated, blanks around them ignored."""
    return [key.strip() for key in text.split(",") if key.strip()]


def file_keys(text: str) -> list[str]:
    """The keys of a key file: one a line; blank lines and ``#`` comment lines ignored."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def bearer_credentials(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme in any case), or None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def key_id(digest: str) -> str:
    """A short stable name of a key for logs and per-key limits: not the key, not its digest."""
    return hashlib.sha256(b"tutor-gateway key id:" + digest.encode()).hexdigest()[:12]


def find_key(presented: str, digests: Sequence[str]) -> str | None:
    """The digest among ``digests`` that ``presented`` hashes to, or None.

    Every digest is compared, in constant time (fixed-length hex digests, so neither the key's
    length nor which key matched shows in the time taken).
    """
    candidate = hash_token(presented)
    found: str | None = None
    for digest in digests:
        if hmac.compare_digest(candidate, digest) and found is None:
            found = digest
    return found


@dataclass(frozen=True)
class KeyCheck:
    """The outcome of one request's check: allowed (with the key's id, if keys are on) or not."""

    allowed: bool
    key_id: str | None = None
    problem: Problem | None = None


OPEN = KeyCheck(True)


def challenge(problem: Problem) -> tuple[str, dict[str, str]]:
    """The 401's ``detail`` and headers for a missing or a wrong key."""
    if problem == "missing":
        detail = "Missing management API key: send Authorization: Bearer <key>"
        header = f'Bearer realm="{REALM}"'
    else:
        detail = "Invalid management API key"
        header = f'Bearer realm="{REALM}", error="invalid_token"'
    return detail, {"WWW-Authenticate": header}


class ManagementKeys:
    """The keys of MANAGEMENT_API_KEYS and MANAGEMENT_API_KEYS_FILE, as SHA-256 digests only.

    The file is looked at (``stat``) at most once per ``reload_interval`` and read again when
    its device, inode, modification time or size changed, which covers an edit in place and a
    Kubernetes Secret volume's atomic symlink swap. A file that cannot be read when the gateway
    starts raises :class:`KeyFileError`; one that disappears or fails later keeps the keys last
    read (with a warning) until it can be read again. A configured file always turns the check
    on, even while it holds no key (then only MANAGEMENT_API_KEYS' keys are accepted).
    """

    def __init__(
        self,
        keys: str = "",
        key_file: str | Path | None = None,
        *,
        reload_interval: float = RELOAD_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env_digests = tuple(hash_token(key) for key in env_keys(keys))
        self._file = Path(key_file) if key_file else None
        self._reload_interval = reload_interval
        self._clock = clock
        self._file_digests: tuple[str, ...] = ()
        self._file_signature: tuple[int, int, int, int] | None = None
        self._failing = False
        self._looked_at = clock()
        self.short_keys = sum(len(key) < MIN_KEY_CHARACTERS for key in env_keys(keys))
        if self._file is not None:
            try:
                self._read_file()
            except OSError as exc:
                raise KeyFileError(
                    f"MANAGEMENT_API_KEYS_FILE={self._file}: {exc.strerror or exc}"
                ) from exc
        self._digests = self._env_digests + self._file_digests

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (some key is configured, or a key file is)."""
        return bool(self._env_digests) or self._file is not None

    @property
    def count(self) -> int:
        """How many keys are accepted now."""
        return len(self._digests)

    def check(self, authorization: str | None) -> KeyCheck:
        """Whether a request with this ``Authorization`` header value may go on."""
        if not self.enabled:
            return OPEN
        self.refresh()
        presented = bearer_credentials(authorization)
        if presented is None:
            return KeyCheck(False, problem="missing")
        digest = find_key(presented, self._digests)
        if digest is None:
            return KeyCheck(False, problem="invalid")
        return KeyCheck(True, key_id=key_id(digest))

    def refresh(self) -> None:
        """Re-read the key file if it changed; looks at it at most once per reload interval."""
        if self._file is None:
            return
        now = self._clock()
        if now - self._looked_at < self._reload_interval:
            return
        self._looked_at = now
        try:
            self._read_file()
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "MANAGEMENT_API_KEYS_FILE=%s cannot be read (%s): keeping the %d keys read "
                    "last",
                    self._file,
                    exc.strerror or type(exc).__name__,
                    len(self._file_digests),
                )
            self._failing = True
            return
        self._failing = False
        self._digests = self._env_digests + self._file_digests

    def _read_file(self) -> None:
        assert self._file is not None
        stat = self._file.stat()
        signature = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._file_signature:
            return
        keys = file_keys(self._file.read_text(encoding="utf-8", errors="replace"))
        # The file may have changed while it was read: the next look reads it again.
        self._file_signature = signature
        self._file_digests = tuple(hash_token(key) for key in keys)
        self.short_keys = sum(len(key) < MIN_KEY_CHARACTERS for key in keys)
        log.info("management API keys file %s: %d keys", self._file, len(keys))


def is_loopback(host: str) -> bool:
    """Whether MANAGEMENT_API_HOST is a loopback address (only this machine can connect)."""
    host = host.strip().strip("[]").lower()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def startup_warnings(host: str, keys: ManagementKeys) -> list[str]:
    """What the gateway warns about at startup: an open management API beyond loopback."""
    warnings = []
    if not keys.enabled and not is_loopback(host):
        warnings.append(
            f"The management API is open: MANAGEMENT_API_HOST={host} listens beyond loopback "
            "and no MANAGEMENT_API_KEYS (or MANAGEMENT_API_KEYS_FILE) is set, so anyone who can "
            "reach this port can list, create and delete sessions. Set MANAGEMENT_API_KEYS, or "
            "MANAGEMENT_API_HOST=127.0.0.1."
        )
    if keys.enabled and keys.count == 0:
        warnings.append(
            "MANAGEMENT_API_KEYS_FILE holds no key: every management API call is refused (401)."
        )
    if keys.short_keys:
        warnings.append(
            f"{keys.short_keys} management API keys are shorter than {MIN_KEY_CHARACTERS} "
            "characters; use long random keys (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')."
        )
    return warnings


def is_protected(path: str, metrics_require_key: bool) -> bool:
    """Whether a request path needs the key: the management API, and /metrics if so set."""
    if any(path == prefix or path.startswith(prefix + "/") for prefix in MANAGEMENT_PREFIXES):
        return True
    return metrics_require_key and path == "/metrics"


# ---------------------------------------------------------------------------------------------
# The student WebSocket


def websocket_token(subprotocols: Iterable[str], query_token: str | None) -> str | None:
    """The session token: offered as ``token.<token>`` subprotocol, else the ``?token=`` one."""
    for protocol in subprotocols:
        token = protocol.removeprefix(TOKEN_PROTOCOL_PREFIX)
        if token and token != protocol:
            return token
    return query_token


def select_subprotocol(subprotocols: Iterable[str]) -> str | None:
    """The subprotocol the server accepts with: ``tutor.v1`` if offered (never a token)."""
    return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or a trailing slash."""
    origin = origin.strip().rstrip("/").lower()
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if origin.startswith(scheme) and origin.endswith(port):
            origin = origin[: -len(port)]
    return origin


def parse_origins(text: str) -> frozenset[str]:
    """ALLOWED_ORIGINS (comma-separated ``scheme://host[:port]``); a malformed one is an error."""
    origins = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise ValueError(
                f"ALLOWED_ORIGINS: {item!r} is not an origin (scheme://host[:port], e.g. "
                "https://tutor.example.edu)"
            )
        origins.add(normalize_origin(item))
    return frozenset(origins)


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """Whether a handshake's ``Origin`` may connect: any without a list, none given, or listed."""
    if not allowed or origin is None:
        return True
    return normalize_origin(origin) in allowed


# ---------------------------------------------------------------------------------------------
# ASGI and FastAPI glue


def _route_path(scope: Scope) -> str:
    """The path the router matches (``root_path`` stripped, as Starlette does)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class AccessControl:
    """ASGI middleware: the management key on protected paths, the Origin list on WebSockets.

    It runs before routing and before any body is read, so an unauthenticated request costs
    one hash and gets its 401 whatever its path under ``/v1`` or its body. An allowed request
    carries its key's id in ``scope["state"]["management_key"]`` (for per-key limits).
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: ManagementKeys,
        allowed_origins: frozenset[str] = frozenset(),
        metrics_require_key: bool = False,
    ) -> None:
        self.app = app
        self.keys = keys
        self.allowed_origins = allowed_origins
        self.metrics_require_key = metrics_require_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_protected(_route_path(scope), self.metrics_require_key):
            check = self.keys.check(Headers(scope=scope).get("authorization"))
            if not check.allowed:
                assert check.problem is not None
                detail, headers = challenge(check.problem)
                await JSONResponse({"detail": detail}, 401, headers)(scope, receive, send)
                return
            if check.key_id is not None:
                scope.setdefault("state", {})["management_key"] = check.key_id
        elif scope["type"] == "websocket" and not origin_allowed(
            origin := Headers(scope=scope).get("origin"), self.allowed_origins
        ):
            log.info("WebSocket handshake refused (403): Origin %.100r not allowed", origin)
            await receive()  # websocket.connect
            if "websocket.http.response" in scope.get("extensions", {}):
                await JSONResponse({"detail": "Origin not allowed"}, 403)(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ManagementApiKey",
    description="A management API key (MANAGEMENT_API_KEYS or MANAGEMENT_API_KEYS_FILE), as "
    "Authorization: Bearer <key>; required when a key is configured.",
)


async def management_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """Route dependency: the caller's key id (None with no keys configured), or 401.

    :class:`AccessControl` has normally checked already; this checks again for a route it
    did not see (defence in depth) and puts the scheme in the OpenAPI document.
    """
    keys: ManagementKeys | None = getattr(request.app.state, "management_keys", None)
    if keys is None or not keys.enabled:
        return None
    known: str | None = request.scope.get("state", {}).get("management_key")
    if known is not None:
        return known
    authorization = f"Bearer {credentials.credentials}" if credentials is not None else None
    check = keys.check(authorization)
    if not check.allowed:
        assert check.problem is not None
        detail, headers = challenge(check.problem)
        raise HTTPException(status_code=401, detail=detail, headers=headers)
    return check.key_id


ManagementKey = Depends(management_key)
"""``APIRouter(dependencies=[ManagementKey])`` protects every route of a router."""


def install(app: FastAPI, settings: GatewaySettings) -> ManagementKeys:
    """Put the access checks on ``app``: the keys (``app.state.management_keys``), the startup
    warnings, :class:`AccessControl` and, with ALLOWED_ORIGINS, CORS for those origins.

    Call it after the other middleware is added: it is then the outermost but CORS, so a
    refused request reads no body and passes no other middleware.
    """
    keys = ManagementKeys(
        settings.management_api_keys.get_secret_value(), settings.management_api_keys_file or None
    )
    origins = parse_origins(settings.allowed_origins)
    app.state.management_keys = keys
    for warning in startup_warnings(settings.management_api_host, keys):
        log.warning("%s", warning)
    if keys.enabled:
        log.info(
            "management API keys: %d accepted%s",
            keys.count,
            f" (file {settings.management_api_keys_file})"
            if settings.management_api_keys_file
            else "",
        )
    app.add_middleware(
        AccessControl,
        keys=keys,
        allowed_origins=origins,
        metrics_require_key=settings.metrics_require_key,
    )
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    return keys

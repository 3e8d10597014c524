"""The browser side: ``/static/tutor-client.js`` always, the ``/demo`` page when enabled.

The files live in ``tutor_gateway/static`` (shipped in the wheel) and are read once. Paths are
stable and unversioned, so every answer says ``Cache-Control: no-cache`` with an ``ETag``:
browsers revalidate and get ``304`` until the file changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response

PACKAGE = Path(__file__).resolve().parent.parent  # tutor_gateway
JS = "text/javascript; charset=utf-8"
# Module scripts are fetched with CORS: front ends on other origins may import the client.
CROSS_ORIGIN = {"Access-Control-Allow-Origin": "*", "Cross-Origin-Resource-Policy": "cross-origin"}
# The page loads only its own files; the tutor's WebSocket may be on another host (WEBSOCKET_URL).
DEMO_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
    "media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class StaticFile:
    """A file of the package served from memory with its content type, an ETag and headers."""

    def __init__(self, name: str, media_type: str, headers: dict[str, str] | None = None) -> None:
        self.body = (PACKAGE / name).read_bytes()
        self.media_type = media_type
        self.headers = {
            "Cache-Control": "no-cache",
            "ETag": f'"{hashlib.sha256(self.body).hexdigest()[:32]}"',
            "X-Content-Type-Options": "nosniff",
            **(headers or {}),
        }

    def response(self, request: Request) -> Response:
        """The file, or ``304`` when the request already holds this version."""
        if self.headers["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=self.headers)
        return Response(self.body, media_type=self.media_type, headers=self.headers)


def router(demo_enabled: bool) -> APIRouter:
    """The client module and, if ``demo_enabled``, the demo page with its script and styles."""
    routes = APIRouter(include_in_schema=False)
    files = {"tutor-client.js": StaticFile("static/tutor-client.js", JS, CROSS_ORIGIN)}
    if demo_enabled:
        files["demo.js"] = StaticFile("static/demo.js", JS)
        files["demo.css"] = StaticFile("static/demo.css", "text/css; charset=utf-8")
        page = StaticFile(
            "static/demo.html", "text/html; charset=utf-8", {"Content-Security-Policy": DEMO_CSP}
        )

        @routes.get("/demo")
        async def demo(request: Request) -> Response:
            """The talk-to-a-tutor page."""
            return page.response(request)

    @routes.get("/static/{name}")
    async def static(name: str, request: Request) -> Response:
        """One of the files above."""
        file = files.get(name)
        if file is None:
            raise HTTPException(status_code=404, detail="Not Found")
        return file.response(request)

    return routes

"""The API's documentation, served by the gateway itself so it works without internet.

- ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their JavaScript and CSS from
  ``/docs/assets/``: the files the ``fastapi-offline`` package ships, never a CDN (no Google
  fonts, no validator badge);
- ``/openapi.json``: the REST API, ``/v1`` operations only (``/mgmt/v1`` is the same API under
  the seed's original prefix, an alias not listed twice), every response with an example;
- ``/asyncapi.yaml``: the conversation WebSocket as an AsyncAPI 3.0 document (the file
  ``tutor_gateway/asyncapi.yaml``, shipped in the wheel): every client and server message with
  its JSON Schema, the opt-ins (``stream``, ``events``), authentication and the close codes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from starlette.staticfiles import StaticFiles
from tutor_contract.version import distribution_version

from .demo import StaticFile
from .responses import ErrorDetail, fill_examples

VERSION = distribution_version()
ASSETS = "/docs/assets"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
ASSET_PACKAGE = ("fastapi_offline", "static")
ASYNCAPI_PATH = "/asyncapi.yaml"
ASYNCAPI_MEDIA_TYPE = "application/yaml"  # RFC 9512
# Cross-origin: for AsyncAPI tools on other origins.
ASYNCAPI = StaticFile("asyncapi.yaml", ASYNCAPI_MEDIA_TYPE, {"Access-Control-Allow-Origin": "*"})

DESCRIPTION = f"""\
The GPU Server's API: sessions for the Web Server (REST, below) and the conversation WebSocket
for students' browsers.

**Management API.** Every operation is listed under `/v1`; each is also served, identically,
under `/mgmt/v1` (the seed's original prefix): an alias, not listed a second time. When
`MANAGEMENT_API_KEYS` (or `MANAGEMENT_API_KEYS_FILE`) is set, every `/v1` and `/mgmt/v1` call
needs `Authorization: Bearer <key>` (401 otherwise); `/health` stays open.

**Conversation WebSocket.** `ws://<host>/ws/ws/{{session_id}}?token={{engine_token}}` (also
`/ws/{{session_id}}`, the seed's split-mode path), with `engine_url` and `engine_token` from
`POST /v1/sessions`; the token may instead be offered as the subprotocol `token.<engine_token>`
beside `tutor.v1`. Client → server `text`, `audio`, `options`; server → client `text`,
`transcription`, `audio`, `error` (the seed's) and, for clients that opt in, `options`,
`text_delta`, `audio_chunk`, `interrupted` (`stream`) and `status` (`events`). Every message's
schema, the opt-ins and the close codes: the AsyncAPI 3 document
[{ASYNCAPI_PATH}]({ASYNCAPI_PATH}).

These pages and their assets are served by the gateway itself: they work without internet.
"""

TAGS: list[dict[str, Any]] = [
    {
        "name": "sessions",
        "description": "Session management, for the Web Server: `/v1/sessions` (alias "
        "`/mgmt/v1/sessions`).",
    },
    {"name": "health", "description": "The seed's health check (never needs a key)."},
    {
        "name": "conversation",
        "description": "The student's WebSocket (`/ws/ws/{session_id}`), which OpenAPI cannot "
        "describe: see the AsyncAPI document.",
    },
]
EXTERNAL_DOCS = {
    "description": "The conversation WebSocket: AsyncAPI 3.0 document",
    "url": ASYNCAPI_PATH,
}
# Swagger UI without calls to swagger.io's validator; the key typed into Authorize is kept
# only in the page.
SWAGGER_PARAMETERS: dict[str, Any] = {"validatorUrl": None, "displayOperationId": True}


# The pages may load nothing but the gateway's own files: ReDoc's sidebar would otherwise ask
# cdn.redoc.ly for its logo. Swagger UI's one inline script is allowed by its hash; both
# style with inline styles and images from data: URLs, ReDoc runs its search in a blob: worker.
_CSP = (
    "default-src 'none'; script-src 'self'{scripts}; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def restricted(page: HTMLResponse) -> HTMLResponse:
    """``page`` with a Content-Security-Policy that lets it load only from this origin."""
    body = bytes(page.body).decode()
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in _INLINE_SCRIPT.findall(body)
    )
    page.headers["Content-Security-Policy"] = _CSP.format(scripts=hashes)
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def operation_id(route: APIRoute) -> str:
    """OpenAPI ``operationId``: the route function's name (``create_session``, …)."""
    return route.name


def router(app: FastAPI) -> APIRouter:
    """``/docs``, ``/redoc`` and ``/asyncapi.yaml`` (none of them in the OpenAPI itself)."""
    routes = APIRouter(include_in_schema=False)

    def _root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @routes.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI, from the gateway's own assets."""
        root = _root(request)
        return restricted(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
                swagger_ui_parameters={**SWAGGER_PARAMETERS, **(app.swagger_ui_parameters or {})},
            )
        )

    @routes.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc, from the gateway's own assets (no web fonts)."""
        root = _root(request)
        return restricted(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )

    @routes.get(ASYNCAPI_PATH)
    async def asyncapi(request: Request) -> Response:
        """The conversation WebSocket's AsyncAPI 3.0 document (YAML)."""
        return ASYNCAPI.response(request)

    return routes


def install(app: FastAPI) -> None:
    """Serve the documentation on ``app`` (created with ``docs_url=None, redoc_url=None``)
    and finish its OpenAPI: examples for every error response, the AsyncAPI link."""
    app.mount(ASSETS, StaticFiles(packages=[ASSET_PACKAGE]), name="docs-assets")
    app.include_router(router(app))
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # caches it in app.openapi_schema
            # Relative links, which FastAPI's models refuse, so added to its output.
            schema.setdefault("externalDocs", EXTERNAL_DOCS)
            for tag in schema.get("tags", []):
                if tag["name"] == "conversation":
                    tag.setdefault("externalDocs", EXTERNAL_DOCS)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.setdefault("ErrorDetail", ErrorDetail.model_json_schema())
            fill_examples(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

"""Session management: the seed's ``/v1/sessions`` (and ``/mgmt/v1/sessions``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from ..admission import LimitExceeded
from ..schemas import CreateSessionRequest, CreateSessionResponse, SessionInfo, SessionList
from ..sessions import CapacityError
from ..startup import engine_state_of
from . import responses
from .deps import GatewayDep, SessionDep
from .errors import encodes

MAX_REPORTED = 10  # errors listed in one 422 for values JSON cannot carry
NOT_UNICODE = "Input should be a valid string, unable to parse raw data as a unicode string"


def json_body_errors(body: bytes) -> list[dict[str, Any]]:
    """Why a request body is not JSON although Python's parser takes it (``[]``: it is JSON,
    or it is not JSON in a way FastAPI reports itself).

    ``json.loads`` accepts ``NaN``, ``Infinity`` and ``-Infinity``, turns ``1e999`` into
    infinity and keeps lone surrogates (``"\ud800"``, or their UTF-8 bytes), none of which
    JSON can carry or echo back; it also fails with other errors than a decode error on
    nesting too deep, integers too long or bytes that are not UTF-8.
    """
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return []
    except (RecursionError, ValueError) as exc:
        reason = (
            "nested too deeply"
            if isinstance(exc, RecursionError)
            else "not UTF-8"
            if isinstance(exc, UnicodeDecodeError)
            else "number too long"
        )
        error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}
        return [{**error, "input": {}, "ctx": {"error": reason}}]
    errors: list[dict[str, Any]] = []
    pending: list[tuple[tuple[int | str, ...], Any]] = [(("body",), value)]
    while pending and len(errors) < MAX_REPORTED:
        loc, item = pending.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not encodes(key):
                    errors.append(_problem("string_unicode", (*loc, key), NOT_UNICODE, key))
                pending.append(((*loc, key), child))
        elif isinstance(item, list):
            pending.extend(((*loc, i), child) for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            errors.append(_problem("finite_number", loc, "Input should be a finite number", item))
        elif isinstance(item, str) and not encodes(item):
            errors.append(_problem("string_unicode", loc, NOT_UNICODE, item))
    return errors


def _problem(kind: str, loc: tuple[int | str, ...], msg: str, value: Any) -> dict[str, Any]:
    """One entry of a 422's ``detail``, as pydantic writes them."""
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


class StrictJSONRoute(APIRoute):
    """A route whose JSON body must be JSON proper: see :func:`json_body_errors` (422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                body = await request.body()
                if body and (errors := json_body_errors(body)):
                    raise RequestValidationError(errors, body=None)
            return await handler(request)

        return strict


router = APIRouter(prefix="/sessions", tags=["sessions"], route_class=StrictJSONRoute)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CreateSessionResponse,
    responses=responses.CREATE,
)
async def create_session(body: CreateSessionRequest, gateway: GatewayDep) -> CreateSessionResponse:
    """Create a session; the response carries the WebSocket URL and its one-time-shown token."""
    try:
        session, token = await gateway.create_session(body.tutor_id, body.student_id, body.kb_id)
    except CapacityError as exc:
        retry = {"Retry-After": str(gateway.settings.admission_retry_after_seconds)}
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), retry) from exc
    except LimitExceeded as exc:
        refusal = exc.refusal
        retry = {"Retry-After": str(refusal.retry_after)}
        raise HTTPException(refusal.status, refusal.detail, retry) from exc
    return CreateSessionResponse(
        session_id=session.session_id,
        engine_url=gateway.settings.engine_url(session.session_id),
        engine_token=token,
        status=session.status,
    )


@router.get("", response_model=SessionList, responses=responses.LIST)
async def list_sessions(gateway: GatewayDep) -> SessionList:
    """Every live session (for debugging)."""
    sessions = [
        SessionInfo.of(s, engine_state_of(gateway.router, s)) for s in await gateway.store.list()
    ]
    return SessionList(total=len(sessions), sessions=sessions)


@router.get("/{session_id}", response_model=SessionInfo, responses=responses.GET)
async def get_session(session: SessionDep, gateway: GatewayDep) -> SessionInfo:
    """One session's state, with its engine's (``engine``: a cold start under way, or why not)."""
    return SessionInfo.of(session, engine_state_of(gateway.router, session))


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses.DELETE)
async def delete_session(session: SessionDep, gateway: GatewayDep) -> Response:
    """End a session: its connections are closed and its engine forgets it."""
    await gateway.store.delete(session.session_id, reason="deleted")
    return Response(status_code=status.HTTP_204_NO_CONTENT)

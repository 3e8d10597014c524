"""Session management: the seed's ``/v1/sessions`` (and ``/mgmt/v1/sessions``)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from ..schemas import CreateSessionRequest, CreateSessionResponse, SessionInfo, SessionList
from ..sessions import CapacityError
from .deps import GatewayDep, SessionDep

router = APIRouter(prefix="/sessions", tags=["sessions"])

NOT_FOUND = {404: {"description": "Session not found"}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CreateSessionResponse,
    responses={503: {"description": "MAX_SESSIONS sessions are already alive"}},
)
async def create_session(body: CreateSessionRequest, gateway: GatewayDep) -> CreateSessionResponse:
    """Create a session; the response carries the WebSocket URL and its one-time-shown token."""
    try:
        session, token = await gateway.create_session(body.tutor_id, body.student_id, body.kb_id)
    except CapacityError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
    return CreateSessionResponse(
        session_id=session.session_id,
        engine_url=gateway.settings.engine_url(session.session_id),
        engine_token=token,
        status=session.status,
    )


@router.get("", response_model=SessionList)
async def list_sessions(gateway: GatewayDep) -> SessionList:
    """Every live session (for debugging)."""
    sessions = [SessionInfo.of(s) for s in await gateway.store.list()]
    return SessionList(total=len(sessions), sessions=sessions)


@router.get("/{session_id}", response_model=SessionInfo, responses=NOT_FOUND)
async def get_session(session: SessionDep) -> SessionInfo:
    """One session's state."""
    return SessionInfo.of(session)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_session(session: SessionDep, gateway: GatewayDep) -> Response:
    """End a session: its connections are closed and its engine forgets it."""
    await gateway.store.delete(session.session_id, reason="deleted")
    return Response(status_code=status.HTTP_204_NO_CONTENT)

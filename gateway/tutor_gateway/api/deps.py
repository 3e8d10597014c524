"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path
from starlette.requests import HTTPConnection

from ..service import Gateway
from ..sessions import Session


def get_gateway(connection: HTTPConnection) -> Gateway:
    """The app's Gateway (created in the lifespan)."""
    gateway: Gateway = connection.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SessionId = Annotated[str, Path(description="The session's id (a UUID).", max_length=64)]


async def get_session(session_id: SessionId, gateway: GatewayDep) -> Session:
    """The session named in the path, or 404."""
    session = await gateway.store.get(session_id)
    if session is None:
        raise HTTPException(status_code=404, detail="Session not found")
    return session


SessionDep = Annotated[Session, Depends(get_session)]

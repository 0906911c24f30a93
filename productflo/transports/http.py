"""The HTTP API beside the sockets: reading a room's messages with a Bearer user token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from productflo import history
from productflo.auth import Claims, TokenVerifier
from productflo.envelopes import MAX_HISTORY_LIMIT, Identifier
from productflo.errors import AuthenticationFailed
from productflo.events.models import JsonObject
from productflo.hub import Hub

router = APIRouter()

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_claims(request: Request) -> Claims:
    """The verified claims of the request's `Authorization: Bearer` token, or 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "a Bearer token is required", headers=_CHALLENGE)
    verifier: TokenVerifier = request.app.state.verifier
    try:
        return verifier.verify(token.strip())
    except AuthenticationFailed:
        raise HTTPException(401, "the token is not valid", headers=_CHALLENGE) from None


User = Annotated[Claims, Depends(bearer_claims)]


@router.get("/rooms/{room_id}/messages")
async def room_messages(
    request: Request,
    user: User,
    room_id: Annotated[Identifier, Path()],
    before: Annotated[int | None, Query(gt=0)] = None,
    limit: Annotated[int, Query(gt=0, le=MAX_HISTORY_LIMIT)] = MAX_HISTORY_LIMIT,
) -> JsonObject:
    """The room's events before `before` (an event id), oldest first, and whether older exist."""
    hub: Hub = request.app.state.hub
    found = await history.page(hub.store, room_id, before, limit)
    return found.as_json()

"""The HTTP API beside the sockets: reading a room's messages and documents, and a user's
notifications, with a Bearer user token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from productflo import history, notifications
from productflo.access import Action, claim_allows, refusal
from productflo.auth import Claims, TokenVerifier
from productflo.envelopes import MAX_HISTORY_LIMIT, Identifier, iso
from productflo.errors import AuthenticationFailed, StoreError
from productflo.events.models import MAX_POSITION, JsonObject, NewEvent, user_stream
from productflo.hub import Hub
from productflo.projections.documents import Documents
from productflo.projections.notifications import READ_TYPE

router = APIRouter()

MAX_NOTIFICATIONS = 100
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def bearer_claims(request: Request) -> Claims:
    """The verified claims of the request's `Authorization: Bearer` token, or 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "a Bearer token is required", headers=_CHALLENGE)
    verifier: TokenVerifier = request.app.state.verifier
    try:
        return await verifier.verify_async(token.strip())
    except AuthenticationFailed:
        raise HTTPException(401, "the token is not valid", headers=_CHALLENGE) from None


def admin_claims(claims: Annotated[Claims, Depends(bearer_claims)]) -> Claims:
    """The claims of an admin token (`"role": "admin"` or `"roles"` with "admin"), or 403."""
    if not claims.is_admin:
        raise HTTPException(403, "an admin token is required")
    return claims


class _Bearer:
    """A request's verified token, as productflo.access sees who is asking."""

    authenticated = True

    def __init__(self, claims: Claims) -> None:
        self.claims: Claims | None = claims


User = Annotated[Claims, Depends(bearer_claims)]
Admin = Annotated[Claims, Depends(admin_claims)]


@router.get("/users/me/notifications")
async def my_notifications(
    request: Request,
    user: User,
    unread: bool = False,
    limit: Annotated[int, Query(gt=0, le=MAX_NOTIFICATIONS)] = MAX_NOTIFICATIONS,
) -> JsonObject:
    """The user's notifications, newest first (`unread=true`: only those not read yet).

    A token with a `rooms` claim lists only notifications about those rooms (or about none), as
    it receives them live: the page may then hold fewer than `limit`."""
    hub: Hub = request.app.state.hub
    try:
        found = await notifications.listing(hub.store, user.subject, unread=unread, limit=limit)
    except StoreError:
        raise HTTPException(503, "the event log is unavailable; try again") from None
    listed = [n for n in found if (room := n.room_id) is None or claim_allows(user, room)]
    return {"notifications": [n.as_json() for n in listed]}


class ReadUpTo(BaseModel):
    up_to: int = Field(
        gt=0, le=MAX_POSITION, description="the newest notification event_id the user has seen"
    )


@router.post("/users/me/notifications/read")
async def mark_notifications_read(request: Request, user: User, body: ReadUpTo) -> JsonObject:
    """Mark the user's notifications up to an event id as read (an event in their stream)."""
    hub: Hub = request.app.state.hub
    event = NewEvent(
        user_stream(user.subject), READ_TYPE, {"up_to": body.up_to}, {"user_id": user.subject}
    )
    try:
        [result] = await hub.store.append([event])
    except StoreError:
        raise HTTPException(503, "the event log is unavailable; try again") from None
    return {"up_to": body.up_to, "event_id": result.event.position}


@router.get("/rooms/{room_id}/messages")
async def room_messages(
    request: Request,
    user: User,
    room_id: Annotated[Identifier, Path()],
    before: Annotated[int | None, Query(gt=0, le=MAX_POSITION)] = None,
    limit: Annotated[int, Query(gt=0, le=MAX_HISTORY_LIMIT)] = MAX_HISTORY_LIMIT,
) -> JsonObject:
    """The room's events before `before` (an event id), oldest first, and whether older exist.

    The token is authenticated, so every room is open to it but for its `rooms` claim (which
    does not limit an admin token: admins read every room); otherwise 403."""
    _room_readable(user, room_id)
    hub: Hub = request.app.state.hub
    found = await history.page(hub.store, room_id, before, limit)
    return found.as_json()


def _room_readable(user: Claims, room_id: str) -> None:
    """403 unless the token may read the room, as for its history."""
    reason = refusal(_Bearer(user), room_id, Action.HISTORY, secure=None)
    if reason is not None:
        raise HTTPException(403, reason)


@router.get("/rooms/{room_id}/docs")
async def room_documents(
    request: Request, user: User, room_id: Annotated[Identifier, Path()]
) -> JsonObject:
    """The room's collaborative documents, most recently edited first (SPEC section 7)."""
    _room_readable(user, room_id)
    hub: Hub = request.app.state.hub
    try:
        listed = await Documents.listed(hub.store, room_id)
    except StoreError:
        raise HTTPException(503, "the event log is unavailable; try again") from None
    return {"docs": listed}


@router.get("/rooms/{room_id}/docs/{doc_id}")
async def room_document(
    request: Request,
    user: User,
    room_id: Annotated[Identifier, Path()],
    doc_id: Annotated[Identifier, Path()],
) -> JsonObject:
    """A document's current text: its snapshot and every update the log has after it."""
    _room_readable(user, room_id)
    store = request.app.state.hub.store
    try:
        doc = await Documents.current(store, room_id, doc_id, await store.head())
    except StoreError:
        raise HTTPException(503, "the event log is unavailable; try again") from None
    if doc.version == 0:
        raise HTTPException(404, "no such document in this room")
    updated_at = iso(doc.updated_at) if doc.updated_at is not None else None
    return {
        "doc_id": doc_id,
        "text": doc.state.text,
        "version": doc.version,
        "updated_at": updated_at,
    }

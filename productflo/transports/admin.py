"""The HTTP API for operators, behind a Bearer admin token: the audit of the event log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from productflo import audit
from productflo.audit import AuditFilter
from productflo.errors import StoreError
from productflo.events.models import JsonObject
from productflo.transports.http import Admin

router = APIRouter()


@router.get("/admin/events")
async def audit_events(
    request: Request, _admin: Admin, audit_filter: Annotated[AuditFilter, Query()]
) -> JsonObject:
    """Events from the log, oldest first: `{"events": [...], "next_after": event_id or null}`.

    Filters: `room_id`, `user_id`, `code`, `since`, `until` (ISO 8601); paging: `after` (the
    last event id seen) and `limit` (1..1000, default 100). See productflo/audit.py.
    """
    try:
        page = await audit.query(request.app.state.store, audit_filter)
    except StoreError as error:
        raise HTTPException(503, str(error)) from error
    return page.as_json()

"""The HTTP API for operators, behind a Bearer admin token: the audit of the event log, and the
projections (status, rebuild)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Request

from productflo import audit
from productflo.audit import AuditFilter
from productflo.errors import StoreError
from productflo.events.models import JsonObject
from productflo.handlers import HANDLERS
from productflo.projections import PROJECTIONS, framework
from productflo.transports.http import Admin

log = logging.getLogger(__name__)

_UNAVAILABLE = (StoreError, asyncpg.PostgresError, OSError)

router = APIRouter()

_rebuilds: dict[str, asyncio.Task[int]] = {}  # projection name -> its running rebuild


@router.get("/admin/events")
async def audit_events(
    request: Request, _admin: Admin, audit_filter: Annotated[AuditFilter, Query()]
) -> JsonObject:
    """Events from the log, oldest first: `{"events": [...], "next_after": event_id or null}`.

    Filters: `room_id`, `user_id`, `code`, `doc_id`, `since`, `until` (ISO 8601); paging:
    `after` (the last event id seen) and `limit` (1..1000, default 100). See
    productflo/audit.py.
    """
    try:
        page = await audit.query(request.app.state.store, audit_filter)
    except StoreError as error:
        raise HTTPException(503, str(error)) from error
    return page.as_json()


@router.get("/admin/projections")
async def projections_status(request: Request, _admin: Admin) -> JsonObject:
    """Each projection: its position in the log, the log's head, the lag, a rebuild running;
    and the same for the log's other consumers (`handlers`: mentions, the assistant)."""
    try:
        rows = await framework.status(request.app.state.store.pool, [*PROJECTIONS, *HANDLERS])
    except _UNAVAILABLE as error:
        raise HTTPException(503, "the database is unavailable") from error
    listed = [
        {"name": row.name, "position": row.position, "head": row.head, "lag": row.lag}
        for row in rows
    ]
    return {
        "projections": [
            {**row, "rebuilding": _running(str(row["name"]))}
            for row in listed
            if row["name"] in PROJECTIONS
        ],
        "handlers": [row for row in listed if row["name"] in HANDLERS],
    }


@router.post("/admin/projections/{name}/rebuild", status_code=202)
async def rebuild_projection(request: Request, _admin: Admin, name: str) -> JsonObject:
    """Start rebuilding a projection while the server keeps serving from the old tables."""
    projection = PROJECTIONS.get(name)
    if projection is None:
        raise HTTPException(404, f"no projection named {name!r}")
    if _running(name):
        raise HTTPException(409, f"{name} is already being rebuilt")
    store = request.app.state.store
    task = asyncio.create_task(framework.rebuild(store, projection, lambda _p, _h: None))
    _rebuilds[name] = task
    task.add_done_callback(_report)
    return {"name": name, "rebuilding": True}


def _running(name: str) -> bool:
    task = _rebuilds.get(name)
    return task is not None and not task.done()


def _report(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("rebuild failed", exc_info=task.exception())

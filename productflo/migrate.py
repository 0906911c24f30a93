"""Run the alembic migrations from code (`productflo db upgrade`, `serve`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from productflo.database import DatabaseUrl

_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: DatabaseUrl) -> Config:
    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "migrations"))
    config.attributes["database_url"] = url.dsn
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: DatabaseUrl) -> None:
    """Migrate the database to head. Safe to run on a migrated database and concurrently."""
    command.upgrade(alembic_config(url), "head")

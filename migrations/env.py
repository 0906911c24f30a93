"""Alembic environment: async, with the URL taken from productflo's settings."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

import asyncpg
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from productflo.database import DatabaseUrl, resolve
from productflo.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> DatabaseUrl:
    given = config.attributes.get("database_url")
    return DatabaseUrl.parse(given) if given else resolve(Settings())


# Servers started together on an empty database would otherwise race to create the same tables.
_MIGRATION_LOCK = 0x70726F64666C6F  # "prodflo"


def _run(connection: Connection) -> None:
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
    connection.commit()
    try:
        context.configure(
            connection=connection, target_metadata=None, transaction_per_migration=True
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")


async def _run_async() -> None:
    dsn = _url().dsn
    # asyncpg reads the URL itself, exactly as the event store does, so that libpq parameters
    # (?sslmode=require, ?host=/socket/dir) are understood instead of being handed to
    # asyncpg.connect() as keyword arguments it does not take.
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(dsn), poolclass=NullPool
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    # `alembic upgrade --sql` writes the SQL and connects to nothing: the dialect is all it
    # needs (the URL, several hosts and all, is not read).
    context.configure(dialect_name="postgresql", literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())

"""The one configuration object. Nothing else in the package reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """The environment variables of SPEC section 2, typed, with their defaults."""

    model_config = SettingsConfigDict(env_prefix="PRODUCTFLO_", extra="ignore")

    database_url: SecretStr | None = None
    # Hot standby(s) for the log's reads (productflo.events.store.EventStore); the primary's URL
    # (database_url) for everything else.
    database_read_url: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("productflo")))
    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    allowed_origins: Annotated[list[str], NoDecode] = []
    max_message_bytes: int = Field(default=65536, gt=0)
    rate_limit: float = Field(default=50, gt=0)
    replay_limit: int = Field(default=10000, gt=0)
    socketio: bool = True
    ai_provider: str = "offline"
    ai_base_url: str | None = None
    ai_api_key: SecretStr | None = None
    ai_model: str | None = None
    ai_timeout: float = 60.0
    # Not in the contract: how many AI requests run at once, in this process and per requester,
    # and how many of the room's recent messages are offered to the model (within its budget).
    ai_concurrency: int = Field(default=8, gt=0)
    ai_per_user: int = Field(default=2, gt=0)
    ai_context_messages: int = Field(default=50, ge=0)

    # Knobs that are not part of the contract but that operators and tests need.
    outbound_queue_size: int = Field(default=1000, gt=0)
    outbound_queue_bytes: int = Field(default=1024 * 1024, gt=0)  # SPEC section 6
    poll_interval: float = Field(default=0.5, gt=0)
    # permessage-deflate for clients that offer it: off, as in Node's Socket.IO server (it costs
    # each recipient a compression of each envelope). uvicorn bounds it: 4 KiB windows, memLevel 5.
    ws_compression: bool = False
    # Socket.IO's heartbeat. A long-polling request is held open for up to interval + timeout.
    socketio_ping_interval: float = Field(default=25.0, gt=0)
    socketio_ping_timeout: float = Field(default=20.0, gt=0)

    _split_lists = field_validator("jwt_algorithms", "allowed_origins", mode="before")(_comma_list)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "jwt_secret"


def export_database_url(dsn: str) -> None:
    """Hand the database URL to child processes (server workers), which read the environment."""
    import os

    os.environ["PRODUCTFLO_DATABASE_URL"] = dsn

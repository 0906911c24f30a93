"""A test WebSocket client: a real `websockets` connection with JSON helpers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.asyncapi import CheckedConnection

TIMEOUT = 10.0


class Client:
    def __init__(self, connection: ClientConnection, welcome: dict[str, Any] | None) -> None:
        self.connection = connection
        self.welcome = welcome

    @classmethod
    async def open(cls, url: str, *, expect_welcome: bool = True, **options: Any) -> Client:
        # A test often leaves messages unread; the client then stops reading the socket and
        # would wait its whole close timeout for the server's close frame behind them.
        options.setdefault("close_timeout", 1)
        # Every frame both ways is held to docs/asyncapi.yaml (tests/asyncapi.py).
        options.setdefault("create_connection", CheckedConnection)
        connection = await connect(url, open_timeout=TIMEOUT, **options)
        client = cls(connection, None)
        if expect_welcome:
            client.welcome = await client.recv()
            assert client.welcome["code"] == "system", client.welcome
        return client

    @property
    def user_id(self) -> str:
        assert self.welcome is not None
        user: str = self.welcome["data"]["details"]["user_id"]
        return user

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            message = json.dumps(message)
        await self.connection.send(message)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), timeout)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def recv_until(self, predicate: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Skip messages until one matches (e.g. a code)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout)
                if predicate(message):
                    return message

    async def recv_code(self, code: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.recv_until(lambda m: m["code"] == code, timeout)

    async def nothing_within(self, seconds: float) -> bool:
        """True when no message arrives for `seconds`."""
        try:
            await asyncio.wait_for(self.connection.recv(), seconds)
        except TimeoutError:
            return True
        return False

    async def closed_with(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; return its close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.connection.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    async def chat(self, room: str, text: str, **extra: Any) -> None:
        await self.send(
            {
                "code": "chat",
                "room_id": room,
                "data": {"message": text, "sender": self.user_id},
                **extra,
            }
        )

    async def join(self, room: str) -> dict[str, Any]:
        """Join a room and wait for this user's own join to come back from the log."""
        await self.send({"code": "join", "room_id": room})
        return await self.recv_until(
            lambda m: (
                m["code"] == "system"
                and m["room_id"] == room
                and m["data"].get("details", {}).get("action") == "join"
                and m["user_id"] == self.user_id
            )
        )

    async def close(self) -> None:
        await self.connection.close()

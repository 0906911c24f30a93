"""/ws/secure: the three ways to present a token, and every way a token can be bad."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from productflo.auth import TokenVerifier, mint
from tests.conftest import ServerThread
from tests.transports.test_socketio import refused_connect

pytestmark = pytest.mark.anyio


def signed(server: ServerThread, claims: dict[str, Any]) -> str:
    """Exactly these claims, signed with the server's secret."""
    secret = server.settings.jwt_secret
    assert secret is not None
    return jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")


def token(server: ServerThread, user: str = "user-123", **claims: Any) -> str:
    """A minted token, or one with these claims beside `sub` and an `exp` ten minutes away."""
    if not claims:
        return mint(server.settings, user)
    return signed(server, {"sub": user, "exp": int(time.time()) + 600, **claims})


async def assert_refused(client: Any, close_code: int = 4401) -> None:
    error = await client.recv()
    assert error["status"] == "error"
    assert error["code"] == "system"
    assert error["data"]["details"]["error_code"] == "AUTHENTICATION_FAILED"
    assert await client.closed_with() == close_code


async def test_token_in_the_query(connect: Any, server: ServerThread) -> None:
    client = await connect(f"/ws/secure?access_token={token(server)}")
    assert client.user_id == "user-123"
    assert client.welcome["data"]["details"]["authenticated"] is True


async def test_token_in_a_bearer_header(connect: Any, server: ServerThread) -> None:
    headers = {"Authorization": f"Bearer {token(server, 'bea')}"}
    client = await connect("/ws/secure", additional_headers=headers)
    assert client.user_id == "bea"


async def test_token_in_a_cookie_from_the_servers_own_origin(
    connect: Any, server: ServerThread
) -> None:
    headers = {"Cookie": f"access_token={token(server, 'coo')}", "Origin": server.http}
    client = await connect("/ws/secure", additional_headers=headers)
    assert client.user_id == "coo"


async def test_a_cookie_token_from_a_foreign_origin_closes_4403(
    connect: Any, server: ServerThread
) -> None:
    headers = {"Cookie": f"access_token={token(server)}", "Origin": "https://evil.example"}
    client = await connect("/ws/secure", additional_headers=headers, expect_welcome=False)
    await assert_refused(client, 4403)


async def test_a_query_token_needs_no_origin_check(connect: Any, server: ServerThread) -> None:
    headers = {"Origin": "https://another-app.example"}
    client = await connect(f"/ws/secure?access_token={token(server)}", additional_headers=headers)
    assert client.user_id == "user-123"


async def test_the_query_token_wins_over_cookie_and_header(
    connect: Any, server: ServerThread
) -> None:
    headers = {
        "Cookie": f"access_token={token(server, 'cookie-user')}",
        "Authorization": f"Bearer {token(server, 'header-user')}",
    }
    client = await connect(
        f"/ws/secure?access_token={token(server, 'query-user')}", additional_headers=headers
    )
    assert client.user_id == "query-user"


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _soon() -> int:
    return int(time.time()) + 600


BAD_TOKENS = {
    "expired": lambda s: token(s, exp=int(time.time()) - 60),
    "wrong signature": lambda s: jwt.encode(
        {"sub": "user-123", "exp": _soon()}, "another-secret-of-32-bytes-or-more", algorithm="HS256"
    ),
    "alg none": lambda s: _unsigned({"sub": "user-123", "exp": _soon()}),
    "garbage": lambda s: "not.a.token",
    "no sub": lambda s: signed(s, {"name": "x", "exp": _soon()}),
    "no exp": lambda s: signed(s, {"sub": "user-123"}),
    "null exp": lambda s: token(s, exp=None),
    "exp a string of digits": lambda s: token(s, exp=str(_soon())),
    "exp past the largest float": lambda s: token(s, exp=10**400),
    "not yet valid": lambda s: token(s, nbf=int(time.time()) + 3600),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_a_bad_token_is_refused_with_4401(
    connect: Any, server: ServerThread, kind: str
) -> None:
    bad = BAD_TOKENS[kind](server)
    client = await connect(f"/ws/secure?access_token={bad}", expect_welcome=False)
    await assert_refused(client)


async def test_no_token_is_refused_with_4401(connect: Any) -> None:
    await assert_refused(await connect("/ws/secure", expect_welcome=False))


async def test_a_token_with_no_exp_is_refused_over_socketio(server: ServerThread) -> None:
    errors = await refused_connect(server, {"token": signed(server, {"sub": "user-123"})})
    assert [error["message"] for error in errors] == ["Authentication failed"]


@pytest.mark.parametrize("path", ["/rooms/r/messages", "/users/me/notifications"])
async def test_a_token_with_no_exp_is_401_over_http(server: ServerThread, path: str) -> None:
    headers = {"Authorization": f"Bearer {signed(server, {'sub': 'user-123'})}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_secure_user_cannot_speak_as_another(connect: Any, server: ServerThread) -> None:
    client = await connect(f"/ws/secure?access_token={token(server)}")
    await client.send({"code": "chat", "room_id": "r", "user_id": "someone-else", "data": {}})
    error = await client.recv()
    assert error["data"]["details"]["error_code"] == "USER_ID_MISMATCH"


async def test_secure_and_anonymous_users_share_open_rooms(
    connect: Any, server: ServerThread
) -> None:
    anonymous = await connect("/ws?user_id=guest")
    await anonymous.send({"code": "join", "room_id": "lobby"})
    await anonymous.recv_code("system")
    secure = await connect(f"/ws/secure?access_token={token(server)}")
    await secure.chat("lobby", "from a signed-in user")
    seen = await anonymous.recv_code("chat_response")
    assert seen["user_id"] == "user-123"


def test_the_claims_expire_when_the_token_does(server: ServerThread) -> None:
    exp = int(time.time()) + 123
    claims = TokenVerifier(server.settings).verify(token(server, exp=exp))
    assert claims.expires_at == float(exp)
    assert isinstance(claims.expires_at, float)

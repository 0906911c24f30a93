"""JWKS keys from a real HTTP server on 127.0.0.1, fetched without holding up the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import socketio
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from productflo.auth import KeySet, TokenVerifier
from productflo.errors import AuthenticationFailed
from productflo.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0  # the longest any wait here may take before the test fails instead of hanging
KEYS = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in "ab"}


def public_jwk(kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(KEYS[kid].public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def rs256(kid: str = "a", user: str = "rsa-user") -> str:
    claims = {"sub": user, "exp": int(time.time()) + 600}
    return jwt.encode(claims, KEYS[kid], algorithm="RS256", headers={"kid": kid})


class JwksServer:
    """Serves a JWKS document from a thread of its own, counting requests; `hold()` makes each
    answer wait for `release()` (or TIMEOUT, then 503)."""

    def __init__(self) -> None:
        self.document: Any = {"keys": [public_jwk("a")]}
        self.requests = 0
        self.requested = threading.Event()
        self._released = threading.Event()
        self._released.set()
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.requests += 1
                jwks.requested.set()
                ready = jwks._released.wait(TIMEOUT)
                body = json.dumps(jwks.document).encode()
                self.send_response(200 if ready else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        # serve_forever checks for shutdown() every poll_interval (0.5 s unless told).
        serving = {"poll_interval": 0.01}
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs=serving, daemon=True
        )
        self._thread.start()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(TIMEOUT)


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


def verifier(tmp_path: Path, url: str) -> TokenVerifier:
    settings = Settings(
        data_dir=tmp_path, database_url=None, jwt_jwks_url=url, jwt_algorithms=["RS256"]
    )
    return TokenVerifier(settings)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_token_signed_with_a_jwks_key_verifies(tmp_path: Path, jwks: JwksServer) -> None:
    claims = await verifier(tmp_path, jwks.url).verify_async(rs256())
    assert claims.subject == "rsa-user"


async def test_a_slow_jwks_does_not_hold_up_the_event_loop(
    tmp_path: Path, jwks: JwksServer
) -> None:
    """While the server sits on its answer, another coroutine runs; then the token verifies."""
    jwks.hold()
    verifying = asyncio.create_task(verifier(tmp_path, jwks.url).verify_async(rs256()))
    meanwhile = asyncio.Event()

    async def other() -> None:
        await asyncio.to_thread(jwks.requested.wait, TIMEOUT)
        meanwhile.set()

    other_task = asyncio.create_task(other())
    async with asyncio.timeout(TIMEOUT):
        await meanwhile.wait()
    assert jwks.requested.is_set()
    assert not verifying.done()  # a blocking fetch would have run to its end (503) by now
    jwks.release()
    assert (await verifying).subject == "rsa-user"
    await other_task


async def test_connections_missing_the_same_key_cause_one_fetch(
    tmp_path: Path, jwks: JwksServer
) -> None:
    jwks.hold()
    tokens = verifier(tmp_path, jwks.url)
    waiting = [asyncio.create_task(tokens.verify_async(rs256(user=f"u{n}"))) for n in range(20)]
    await asyncio.to_thread(jwks.requested.wait, TIMEOUT)
    jwks.release()
    claims = await asyncio.gather(*waiting)
    assert [c.subject for c in claims] == [f"u{n}" for n in range(20)]
    assert jwks.requests == 1


async def test_keys_are_cached_for_their_lifetime(jwks: JwksServer) -> None:
    clock = Clock()
    keys = KeySet(jwks.url, lifetime=300, clock=clock)
    await keys.key("a")
    clock.now += 299
    await keys.key("a")
    assert jwks.requests == 1
    clock.now += 1
    await keys.key("a")
    assert jwks.requests == 2


async def test_a_new_key_is_fetched_but_made_up_kids_do_not_flood_the_endpoint(
    jwks: JwksServer,
) -> None:
    clock = Clock()
    keys = KeySet(jwks.url, cooldown=10, clock=clock)
    await keys.key("a")
    jwks.document = {"keys": [public_jwk("a"), public_jwk("b")]}
    with pytest.raises(AuthenticationFailed):
        await keys.key("b")  # fetched right after "a": within the cooldown, not fetched again
    for n in range(5):
        with pytest.raises(AuthenticationFailed):
            await keys.key(f"made-up-{n}")
    assert jwks.requests == 1
    clock.now += 10
    found = await keys.key("b")
    assert found.public_numbers() == KEYS["b"].public_key().public_numbers()
    assert jwks.requests == 2


async def test_a_jwks_endpoint_that_is_down_fails_authentication(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/jwks.json"
    with pytest.raises(AuthenticationFailed):
        await verifier(tmp_path, down).verify_async(rs256())


async def test_a_jwks_endpoint_that_does_not_answer_fails_within_the_timeout(
    jwks: JwksServer,
) -> None:
    jwks.hold()
    keys = KeySet(jwks.url, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed):
        await keys.key("a")
    assert time.monotonic() - started < TIMEOUT / 2


@pytest.mark.parametrize(
    "document", [[], {"keys": []}, {"keys": "a"}, {"keys": [{"kty": "RSA", "n": 5}]}, "<html>"]
)
async def test_a_jwks_that_is_not_one_fails_authentication(jwks: JwksServer, document: Any) -> None:
    jwks.document = document
    with pytest.raises(AuthenticationFailed):
        await KeySet(jwks.url).key("a")


async def test_the_sync_verify_takes_a_jwks_key_only_from_the_cache(
    tmp_path: Path, jwks: JwksServer
) -> None:
    tokens = verifier(tmp_path, jwks.url)
    with pytest.raises(AuthenticationFailed):
        tokens.verify(rs256())
    assert jwks.requests == 0
    await tokens.verify_async(rs256())
    assert tokens.verify(rs256()).subject == "rsa-user"


async def test_a_jwks_token_opens_every_entry_point(
    start_server: Any, connect_to: Any, jwks: JwksServer
) -> None:
    """/ws/secure, Socket.IO and the HTTP API take a token whose key comes from the JWKS."""
    server = start_server(jwt_jwks_url=jwks.url, jwt_algorithms=["RS256"])
    client = await connect_to(server, f"/ws/secure?access_token={rs256(user='ws-user')}")
    assert client.user_id == "ws-user"

    sio = socketio.AsyncClient(reconnection=False)
    welcomed: asyncio.Queue[Any] = asyncio.Queue()
    sio.on("message", welcomed.put)
    await sio.connect(
        server.http,
        socketio_path="/ws",
        transports=["websocket"],
        auth={"token": rs256(user="sio-user")},
        wait_timeout=TIMEOUT,
    )
    try:
        welcome = await asyncio.wait_for(welcomed.get(), TIMEOUT)
        assert welcome["data"]["data"]["details"]["user_id"] == "sio-user"
    finally:
        await sio.disconnect()

    async with httpx.AsyncClient(base_url=server.http) as http:
        headers = {"Authorization": f"Bearer {rs256(user='http-user')}"}
        response = await http.get("/users/me/notifications", headers=headers)
    assert response.status_code == 200, response.text

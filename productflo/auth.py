"""Tokens: where they are read from, how they are verified, and how `token mint` makes one.

With no `PRODUCTFLO_JWT_SECRET`, a random secret is generated once and kept in the data
directory (mode 0600), so tokens minted by `productflo token mint` on this machine are accepted by
every server process using the same data directory.

With `PRODUCTFLO_JWT_JWKS_URL`, public keys come from a JWKS endpoint (`KeySet`), fetched on the
event loop with a short deadline: `TokenVerifier.verify_async` is the way to verify those tokens.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from productflo.errors import AuthenticationFailed, ForbiddenOrigin
from productflo.settings import Settings

log = logging.getLogger(__name__)

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
JWKS_TIMEOUT = 5.0  # seconds one fetch of the key set may take, connecting included
JWKS_LIFETIME = 300.0  # seconds a fetched key set is trusted before it is fetched again
JWKS_COOLDOWN = 10.0  # seconds between fetches for a key the set lacks, or after a failure


def load_secret(settings: Settings) -> str:
    """The HS256 secret: configured, or generated once in the data directory."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    path = settings.secret_file
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_urlsafe(48)
    try:
        # O_EXCL: of several processes starting together, exactly one writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _wait_for_secret(path)
    with os.fdopen(fd, "w") as file:
        file.write(candidate + "\n")
    return candidate


def _wait_for_secret(path: os.PathLike[str]) -> str:
    for _ in range(50):
        with open(path) as file:
            value = file.read().strip()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"the secret file {path} is empty")


@dataclass(frozen=True)
class Claims:
    """A verified token's claims, with the parts the server uses."""

    subject: str
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def expires_at(self) -> float:
        """The token's `exp`, in seconds since the epoch (`verify` makes sure there is one)."""
        return float(self.raw["exp"])

    @property
    def is_admin(self) -> bool:
        roles = self.raw.get("roles")
        return self.raw.get("role") == "admin" or (isinstance(roles, list) and "admin" in roles)

    @property
    def rooms(self) -> list[str] | None:
        value = self.raw.get("rooms")
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        return None


class KeySet:
    """The signing keys of a JWKS endpoint, cached for `lifetime` seconds.

    `PyJWKClient` fetches with blocking urllib (a 30 s timeout) from inside the async handlers,
    which would freeze every connection of the process at each cache miss; here the fetch is an
    httpx request on the loop, bounded by `timeout` as a whole. Concurrent misses share one fetch
    (a reconnect storm after a restart is one request), and a key the set lacks, or a failed
    fetch, is tried again only after `cooldown`: tokens naming made-up `kid`s cannot turn into a
    flood of requests, and an endpoint that is down fails connections at once instead of one
    timeout each.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = JWKS_TIMEOUT,
        lifetime: float = JWKS_LIFETIME,
        cooldown: float = JWKS_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._lifetime = lifetime
        self._cooldown = cooldown
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf  # the last fetch that succeeded
        self._tried_at = -math.inf  # the last fetch, whatever came of it
        self._fetching: asyncio.Task[None] | None = None

    def cached(self, kid: object) -> Any:
        """The key for `kid` if the cache holds it and is fresh; else AuthenticationFailed."""
        if not self._fresh():
            raise AuthenticationFailed("the JWKS is not cached")
        return self._lookup(kid)

    async def key(self, kid: object) -> Any:
        """The key for `kid`, fetching the key set first when the cache is stale or lacks it."""
        if not isinstance(kid, str):
            raise AuthenticationFailed("the token names no key (kid)")
        missing = not self._fresh() or kid not in self._keys
        cooled = self._clock() - self._tried_at >= self._cooldown
        if missing and cooled and self._fetching is None:
            self._tried_at = self._clock()
            self._fetching = asyncio.create_task(self._fetch(), name="jwks-fetch")
        if missing and self._fetching is not None:
            # Shielded: a connection that goes away must not cancel the others' fetch.
            await asyncio.shield(self._fetching)
        if not self._fresh():
            raise AuthenticationFailed("the JWKS could not be fetched")
        return self._lookup(kid)

    async def aclose(self) -> None:
        """Stops a fetch under way (at shutdown)."""
        if self._fetching is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
            self._fetching = None

    def _fresh(self) -> bool:
        return self._clock() - self._fetched_at < self._lifetime

    def _lookup(self, kid: object) -> Any:
        found = self._keys.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise AuthenticationFailed(f"no key {kid!r} in the JWKS")
        return found.key

    async def _fetch(self) -> None:
        """Never raises: the waiters read the outcome from the cache."""
        try:
            async with asyncio.timeout(self._timeout), httpx.AsyncClient() as client:
                response = await client.get(self._url, timeout=self._timeout)
                response.raise_for_status()
                keys = _signing_keys(response.json())
        # Whatever the endpoint sends (JSON of any shape, keys PyJWK chokes on) is a failed fetch.
        except Exception as error:
            log.warning("the JWKS at %s could not be fetched: %r", self._url, error)
        else:
            self._keys, self._fetched_at = keys, self._clock()
        finally:
            self._fetching = None


def _signing_keys(document: Any) -> dict[str, jwt.PyJWK]:
    """A JWKS document's signing keys by `kid` (keys without one cannot be chosen by a token)."""
    if not isinstance(document, dict):
        raise ValueError("the JWKS is not a JSON object")
    key_set = jwt.PyJWKSet.from_dict(document)
    return {
        key.key_id: key
        for key in key_set.keys
        if key.key_id and key.public_key_use in ("sig", None)
    }


class TokenVerifier:
    """Verifies tokens with pinned algorithms: `alg: none` and algorithm swaps are refused.

    `verify_async` verifies every kind of token. `verify`, which never waits, does the HMAC and
    PEM ones, and JWKS ones only while their key is cached.
    """

    def __init__(self, settings: Settings) -> None:
        self._algorithms = list(settings.jwt_algorithms)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._secret = load_secret(settings) if _HMAC_ALGORITHMS & set(self._algorithms) else None
        self._public_key = (
            settings.jwt_public_key.get_secret_value() if settings.jwt_public_key else None
        )
        self.jwks = KeySet(settings.jwt_jwks_url) if settings.jwt_jwks_url else None

    def verify(self, token: str) -> Claims:
        algorithm, kid = self._header(token)
        if self.jwks is not None and algorithm not in _HMAC_ALGORITHMS:
            return self._decode(token, self.jwks.cached(kid))
        return self._decode(token, self._key_for(algorithm))

    async def verify_async(self, token: str) -> Claims:
        algorithm, kid = self._header(token)
        if self.jwks is not None and algorithm not in _HMAC_ALGORITHMS:
            return self._decode(token, await self.jwks.key(kid))
        return self._decode(token, self._key_for(algorithm))

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()

    def _header(self, token: str) -> tuple[str, object]:
        """The token's algorithm, if it is one of ours, and the `kid` it names (unverified)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthenticationFailed(f"invalid token: {error.__class__.__name__}") from error
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise AuthenticationFailed(f"token algorithm {algorithm!r} is not accepted")
        return algorithm, header.get("kid")

    def _decode(self, token: str, key: Any) -> Claims:
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as error:
            raise AuthenticationFailed(f"invalid token: {error.__class__.__name__}") from error
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= 128:
            raise AuthenticationFailed("the token's sub is not a user id")
        if not _is_time(claims["exp"]):
            raise AuthenticationFailed("the token's exp is not a time")
        return Claims(subject=subject, raw=claims)

    def _key_for(self, algorithm: str) -> Any:
        if algorithm in _HMAC_ALGORITHMS:
            if self._secret is None:
                raise AuthenticationFailed("no secret is configured for HMAC tokens")
            return self._secret
        if self._public_key is not None:
            return self._public_key
        raise AuthenticationFailed("no public key is configured")


def _is_time(value: Any) -> bool:
    """A JSON number a float can hold. PyJWT checks `exp` with int(), which also takes a string
    of digits, and an exp past the largest float would never expire."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def mint(
    settings: Settings,
    user_id: str,
    *,
    admin: bool = False,
    ttl: int = 3600,
    rooms: list[str] | None = None,
) -> str:
    """A HS256 token this server accepts (`productflo token mint`)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if admin:
        claims["role"] = "admin"
    if rooms:
        claims["rooms"] = rooms
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, load_secret(settings), algorithm="HS256")


@dataclass(frozen=True)
class FoundToken:
    token: str
    from_cookie: bool


def find_token(
    query: Mapping[str, str], cookies: Mapping[str, str], headers: Mapping[str, str]
) -> FoundToken:
    """The token of a request: query `access_token`, else cookie, else `Authorization: Bearer`."""
    if token := query.get("access_token"):
        return FoundToken(token, from_cookie=False)
    if token := cookies.get("access_token"):
        return FoundToken(token, from_cookie=True)
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return FoundToken(credentials.strip(), from_cookie=False)
    raise AuthenticationFailed("no token given")


def check_origin(settings: Settings, origin: str | None, host: str | None) -> None:
    """A cookie-borne token is accepted only from an allowed origin (or the server's own).

    Browsers always send Origin on WebSocket handshakes, so a missing Origin with a cookie is
    refused too: it is not a browser, and it can send its token in the query or a header.
    """
    if origin is None:
        raise ForbiddenOrigin("a cookie token needs an Origin header")
    allowed = settings.allowed_origins or ([] if host is None else _own_origins(host))
    if origin.rstrip("/") not in {item.rstrip("/") for item in allowed}:
        raise ForbiddenOrigin(f"origin {origin} is not allowed")


def _own_origins(host: str) -> list[str]:
    netloc = urlsplit(f"//{host}").netloc
    return [f"http://{netloc}", f"https://{netloc}"]

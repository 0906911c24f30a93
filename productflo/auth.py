"""Tokens: where they are read from, how they are verified, and how `token mint` makes one.

With no `PRODUCTFLO_JWT_SECRET`, a random secret is generated once and kept in the data
directory (mode 0600), so tokens minted by `productflo token mint` on this machine are accepted by
every server process using the same data directory.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt

from productflo.errors import AuthenticationFailed, ForbiddenOrigin
from productflo.settings import Settings

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


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


class TokenVerifier:
    """Verifies tokens with pinned algorithms: `alg: none` and algorithm swaps are refused."""

    def __init__(self, settings: Settings) -> None:
        self._algorithms = list(settings.jwt_algorithms)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._secret = load_secret(settings) if _HMAC_ALGORITHMS & set(self._algorithms) else None
        self._public_key = (
            settings.jwt_public_key.get_secret_value() if settings.jwt_public_key else None
        )
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None

    def verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm not in self._algorithms:
                raise AuthenticationFailed(f"token algorithm {algorithm!r} is not accepted")
            claims = jwt.decode(
                token,
                key=self._key_for(token, algorithm),
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

    def _key_for(self, token: str, algorithm: str) -> Any:
        if algorithm in _HMAC_ALGORITHMS:
            if self._secret is None:
                raise AuthenticationFailed("no secret is configured for HMAC tokens")
            return self._secret
        if self._jwks is not None:
            return self._jwks.get_signing_key_from_jwt(token).key
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

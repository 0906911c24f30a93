"""The one error root.

    ProductfloError
     ├── ProtocolError          a client's message broke a rule; carries its SPEC error_code
     ├── AuthenticationFailed   no valid token on /ws/secure (AUTHENTICATION_FAILED, close 4401)
     │    └── ForbiddenOrigin   a cookie token from an origin not allowed (close 4403)
     └── StoreError             the event log could not do what was asked
          └── StoreUnavailable  the database is unreachable or timed out

Driver errors (asyncpg, OSError) are translated into StoreError once, in productflo.events.store.
What a client sees is the error_code and a fixed message, never the text of an internal error.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    MESSAGE_CODE_REQUIRED = "MESSAGE_CODE_REQUIRED"
    UNSUPPORTED_MESSAGE_TYPE = "UNSUPPORTED_MESSAGE_TYPE"
    ROOM_ID_REQUIRED = "ROOM_ID_REQUIRED"
    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    USER_ID_MISMATCH = "USER_ID_MISMATCH"
    FORBIDDEN = "FORBIDDEN"
    RATE_LIMITED = "RATE_LIMITED"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    AI_PROVIDER_ERROR = "AI_PROVIDER_ERROR"
    FAILED_TO_PROCESS_MESSAGE = "FAILED_TO_PROCESS_MESSAGE"


class ProductfloError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolError(ProductfloError):
    """A client message that breaks a rule of the protocol."""

    def __init__(
        self, error_code: ErrorCode, message: str, *, client_msg_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.client_msg_id = client_msg_id


class AuthenticationFailed(ProductfloError):
    """No valid token: the secure endpoint answers AUTHENTICATION_FAILED and closes 4401."""


class ForbiddenOrigin(AuthenticationFailed):
    """A token read from a cookie, on a request from an origin that is not allowed (4403)."""


class StoreError(ProductfloError):
    """The event log refused or failed an operation."""


class StoreUnavailable(StoreError):
    """The database could not be reached, or did not answer in time."""


class AppendRefused(StoreError):
    """The log refused an event by its own rule: an anonymous event in a secure room (a room
    another process opened from /ws/secure in the instant before this one appended)."""


class CloseCode(IntEnum):
    """WebSocket close codes of SPEC section 5."""

    NORMAL = 1000
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    AUTHENTICATION_FAILED = 4401
    FORBIDDEN_ORIGIN = 4403

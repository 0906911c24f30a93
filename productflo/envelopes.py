"""The JSON envelope, both ways: inbound validation and outbound rendering. Pure: no I/O.

Inbound frames are parsed into `Inbound` (or a ProtocolError with the SPEC error code); events
from the log are rendered into outbound envelopes by `render_event`, the one place that decides
what a stored event looks like to a client, live, replayed or in a history page alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

# Who sees what is productflo.audience's rule; its names are re-exported for renderers' callers.
from productflo.audience import ANSWER_TYPES as ANSWER_TYPES
from productflo.audience import HISTORY_TYPES as HISTORY_TYPES
from productflo.audience import Audience as Audience
from productflo.audience import audience_of
from productflo.errors import ErrorCode, ProtocolError
from productflo.events.models import MAX_POSITION, JsonObject, RecordedEvent
from productflo.jsontext import decode_object, describe, is_storable, storable

WELCOME_MESSAGE = "Connected to ProductFlo WebSocket server"
MAX_HISTORY_LIMIT = 100
MAX_MESSAGE_CHARS = 32768
MAX_SENDER_CHARS = 128
MAX_ATTACHED_FILES = 100
MAX_FILE_NAME_CHARS = 1024
MAX_CLIENT_MSG_ID_CHARS = 64
# A state vector names each client that wrote to the document once, in a few bytes each.
MAX_STATE_VECTOR_CHARS = 65536


class InboundCode(StrEnum):
    CHAT = "chat"
    HAITCH_CHAT = "haitch_chat"
    IDEA = "idea"
    DOCUMENTATION = "documentation"
    ENGINEERING = "engineering"
    JOIN = "join"
    LEAVE = "leave"
    TYPING = "typing"
    HISTORY = "history"
    DOC_OPEN = "doc_open"
    DOC_UPDATE = "doc_update"
    AWARENESS = "awareness"


# Requests answered by the AI assistant: acknowledged with `pending`, answered later.
AI_CODES = frozenset(
    {InboundCode.HAITCH_CHAT, InboundCode.IDEA, InboundCode.DOCUMENTATION, InboundCode.ENGINEERING}
)
# Everything in a room: all codes need one.
ROOM_CODES = frozenset(InboundCode)
# A room's collaborative documents (SPEC section 7): each names its document in data.doc_id.
DOC_CODES = frozenset({InboundCode.DOC_OPEN, InboundCode.DOC_UPDATE, InboundCode.AWARENESS})
# ... and those that carry a Yjs update in data.update.
UPDATE_CODES = frozenset({InboundCode.DOC_UPDATE, InboundCode.AWARENESS})

Status = Literal["success", "error", "pending"]

# Ids end up in streams, cookies and log lines: printable, no separators, bounded.
_ID_PATTERN = r"^[A-Za-z0-9_.@:+|=~\-]{1,128}$"
_ID_RULE = "must be 1-128 characters of letters, digits and _.@:+|=~-"  # _ID_PATTERN, told
Identifier = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]


class InboundData(BaseModel):
    """`data`: the seed's fields typed, anything else kept as sent."""

    model_config = ConfigDict(extra="allow")

    message: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)
    sender: str | None = Field(default=None, max_length=MAX_SENDER_CHARS)
    attached_files: list[Annotated[str, Field(max_length=MAX_FILE_NAME_CHARS)]] | None = Field(
        default=None, max_length=MAX_ATTACHED_FILES
    )
    is_typing: bool | None = None
    before: int | None = Field(default=None, gt=0, le=MAX_POSITION)
    limit: int | None = Field(default=None, gt=0, le=MAX_HISTORY_LIMIT)
    doc_id: Identifier | None = None
    update: str | None = None  # base64; its size is the connection's frame limit's to bound
    state_vector: str | None = Field(default=None, max_length=MAX_STATE_VECTOR_CHARS)


class Inbound(BaseModel):
    """A client's message, valid in shape (the connection checks who may send it)."""

    model_config = ConfigDict(extra="ignore")

    code: InboundCode
    user_id: Identifier | None = None
    room_id: Identifier | None = None
    timestamp: datetime | None = None
    data: InboundData = Field(default_factory=InboundData)
    client_msg_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_CLIENT_MSG_ID_CHARS)] | None
    ) = None

    def data_json(self) -> JsonObject:
        """`data` as the client sent it, minus fields it left out."""
        return self.data.model_dump(exclude_none=True)


# Each field's whole rule, told whatever way a value breaks it (jsontext.describe); the transports'
# HTTP parameters of the same names share them.
FIELD_RULES = {
    "user_id": f"user_id {_ID_RULE}",
    "room_id": f"room_id {_ID_RULE}",
    "timestamp": "timestamp must be an ISO 8601 date and time",
    "client_msg_id": f"client_msg_id must be a string of 1-{MAX_CLIENT_MSG_ID_CHARS} characters",
    "data": "data must be an object",
    "data.message": f"data.message must be a string of at most {MAX_MESSAGE_CHARS} characters",
    "data.sender": f"data.sender must be a string of at most {MAX_SENDER_CHARS} characters",
    "data.attached_files": (
        f"data.attached_files must be a list of at most {MAX_ATTACHED_FILES} strings"
        f" of at most {MAX_FILE_NAME_CHARS} characters"
    ),
    "data.is_typing": "data.is_typing must be true or false",
    "data.before": f"data.before must be an integer from 1 to {MAX_POSITION}",
    "data.limit": f"data.limit must be an integer from 1 to {MAX_HISTORY_LIMIT}",
    "data.doc_id": f"data.doc_id {_ID_RULE}",
    "data.update": "data.update must be a base64 string",
    "data.state_vector": (
        f"data.state_vector must be a base64 string of at most {MAX_STATE_VECTOR_CHARS} characters"
    ),
}


def parse_inbound(frame: str | bytes, connection_user: str) -> Inbound:
    """Parse one frame, or raise ProtocolError with the first rule it breaks (SPEC sections 5
    and 6). Text PostgreSQL cannot store is refused before anything else is looked at."""
    raw = decode_object(frame, echo=_echo)
    echo = _echo(raw)

    def refuse(error_code: ErrorCode, message: str) -> ProtocolError:
        return ProtocolError(error_code, message, client_msg_id=echo)

    code = raw.get("code")
    if code is None or code == "":
        raise refuse(ErrorCode.MESSAGE_CODE_REQUIRED, "Message code is required")
    if not isinstance(code, str):
        raise refuse(ErrorCode.INVALID_MESSAGE, "code must be a string")
    if code not in InboundCode.__members__.values():
        quoted = storable(code[:64])
        raise refuse(ErrorCode.UNSUPPORTED_MESSAGE_TYPE, f"Unsupported message type: {quoted}")
    try:
        inbound = Inbound.model_validate(raw)
    except ValidationError as error:
        raise refuse(ErrorCode.INVALID_MESSAGE, describe(error.errors()[0], FIELD_RULES)) from None
    if inbound.user_id is not None and inbound.user_id != connection_user:
        raise refuse(ErrorCode.USER_ID_MISMATCH, "user_id does not match the connection's user")
    if inbound.data.sender is not None and inbound.data.sender != connection_user:
        raise refuse(ErrorCode.USER_ID_MISMATCH, "data.sender does not match the connection's user")
    if inbound.code in ROOM_CODES and inbound.room_id is None:
        raise refuse(ErrorCode.ROOM_ID_REQUIRED, f"room_id is required for {code}")
    if inbound.code in DOC_CODES and inbound.data.doc_id is None:
        raise refuse(ErrorCode.INVALID_MESSAGE, f"data.doc_id is required for {code}")
    if inbound.code in UPDATE_CODES and inbound.data.update is None:
        raise refuse(ErrorCode.INVALID_MESSAGE, f"data.update is required for {code}")
    return inbound


def client_msg_id_in(frame: str | bytes) -> str | None:
    """The `client_msg_id` of a frame that is refused before it is parsed (over the rate
    limit), so that the refusal names the message it refused; None when there is none.
    Never raises."""
    try:
        return _echo(decode_object(frame, echo=_echo))
    except ProtocolError as error:
        return error.client_msg_id


def _echo(raw: dict[str, Any]) -> str | None:
    """The frame's `client_msg_id` when it is one an answer can carry."""
    echo = raw.get("client_msg_id")
    if isinstance(echo, str) and 0 < len(echo) <= MAX_CLIENT_MSG_ID_CHARS and is_storable(echo):
        return echo
    return None


# -- outbound ------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as every outbound timestamp."""
    if moment.tzinfo is not UTC:  # the log's times come in UTC already
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(UTC))


def envelope(
    status: Status,
    code: str,
    user_id: str | None,
    data: JsonObject,
    *,
    room_id: str | None = None,
    timestamp: str | None = None,
    event_id: int | None = None,
    client_msg_id: str | None = None,
) -> JsonObject:
    out: JsonObject = {
        "status": status,
        "code": code,
        "user_id": user_id,
        "room_id": room_id,
        "timestamp": timestamp or now_iso(),
        "data": data,
    }
    if event_id is not None:
        out["event_id"] = event_id
    if client_msg_id is not None:
        out["client_msg_id"] = client_msg_id
    return out


def error_envelope(user_id: str | None, error: ProtocolError) -> JsonObject:
    """The seed's error shape, sent to the sender only."""
    details = {"error_code": str(error.error_code), "message": error.message}
    return envelope(
        "error",
        "system",
        user_id,
        {"message": error.message, "details": details},
        client_msg_id=error.client_msg_id,
    )


def system_envelope(user_id: str | None, message: str, details: JsonObject) -> JsonObject:
    return envelope("success", "system", user_id, {"message": message, "details": details})


def welcome(user_id: str, details: JsonObject) -> JsonObject:
    timestamp = now_iso()
    return envelope(
        "success",
        "system",
        user_id,
        {
            "message": WELCOME_MESSAGE,
            "details": {"user_id": user_id, "timestamp": timestamp, **details},
        },
        timestamp=timestamp,
    )


# The assistant's answers, stored as `<request code>_response` and sent with the seed's codes:
# in the room when they succeed, in the requester's own stream when the provider failed.
ANSWER_CODES = {
    "haitch_chat_response": "chat_response",
    "idea_response": "idea_response",
    "documentation_response": "documentation_response",
    "engineering_response": "engineering_response",
}


def answer_type(request_code: str) -> str:
    """The stored type of the answer to an AI request (`idea` -> `idea_response`)."""
    return f"{request_code}_response"


@dataclass(frozen=True)
class Rendered:
    """An event as clients see it, and who sees it."""

    envelope: JsonObject
    audience: Audience


def render_event(event: RecordedEvent) -> Rendered | None:
    """The outbound envelope of a stored event, or None for events clients never see."""
    audience = audience_of(event.type, event.stream, event.user_id, event.data.get("doc_id"))
    if audience is None:
        return None
    return Rendered(_envelope_of(event), audience)


def _envelope_of(event: RecordedEvent) -> JsonObject:
    actor = event.user_id
    common: dict[str, Any] = {
        "room_id": event.room_id,
        "timestamp": iso(event.recorded_at),
        "event_id": event.position,
        "client_msg_id": event.metadata.get("client_msg_id"),
    }
    if event.type == InboundCode.CHAT:
        return envelope("success", "chat_response", actor, event.data, **common)
    if event.type in (InboundCode.JOIN, InboundCode.LEAVE):
        verb = "joined" if event.type == InboundCode.JOIN else "left"
        details = {"action": event.type, "user_id": actor, "room_id": event.room_id}
        data = {"message": f"{actor} {verb} the room", "details": details}
        return envelope("success", "system", actor, data, **common)
    if event.type == "notification":
        # The subject is the user notified; who caused it is in data.details.
        common["room_id"] = event.data.get("details", {}).get("room_id")
        return envelope("success", "notification", event.addressee, event.data, **common)
    if event.type == InboundCode.DOC_UPDATE:
        update = {"doc_id": event.data.get("doc_id"), "update": event.data.get("update")}
        return envelope("success", "doc_update", actor, update, **common)
    if event.type in ANSWER_CODES:
        code = ANSWER_CODES[event.type]
        if event.addressee is not None:  # a failure, told to the requester alone
            common["room_id"] = event.data.get("details", {}).get("room_id")
            return envelope("error", code, event.addressee, event.data, **common)
        return envelope("success", code, actor, event.data, **common)
    return envelope("pending", event.type, actor, event.data, **common)

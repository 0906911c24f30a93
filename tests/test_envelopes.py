"""The envelope rules without any I/O: parsing, rendering, and their error codes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from productflo.envelopes import Audience, Inbound, parse_inbound, render_event
from productflo.errors import ErrorCode, ProtocolError
from productflo.events.models import RecordedEvent


def refused(frame: str | bytes, user: str = "u1") -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_inbound(frame, user)
    return caught.value


def test_a_minimal_chat_parses_with_defaults() -> None:
    inbound = parse_inbound('{"code": "chat", "room_id": "r"}', "u1")
    assert inbound == Inbound(code="chat", room_id="r")  # type: ignore[arg-type]
    assert inbound.data_json() == {}


def test_unknown_data_fields_are_kept_and_unknown_envelope_fields_ignored() -> None:
    inbound = parse_inbound(
        b'{"code": "chat", "room_id": "r", "extra": 1, "data": {"message": "m", "mood": "ok"}}',
        "u1",
    )
    assert inbound.data_json() == {"message": "m", "mood": "ok"}


def test_the_first_broken_rule_decides_the_code() -> None:
    # No code beats an unknown room; an unknown code beats a missing room.
    assert refused('{"room_id": 5}').error_code is ErrorCode.MESSAGE_CODE_REQUIRED
    assert refused('{"code": "nope"}').error_code is ErrorCode.UNSUPPORTED_MESSAGE_TYPE
    assert refused('{"code": "chat", "user_id": "u2"}').error_code is ErrorCode.USER_ID_MISMATCH


def test_bytes_that_are_not_utf8_are_invalid_json() -> None:
    assert refused(b"\xff\xfe{}").error_code is ErrorCode.INVALID_JSON


def test_a_refusal_keeps_a_valid_client_msg_id_only() -> None:
    assert refused('{"code": "x", "client_msg_id": "c1"}').client_msg_id == "c1"
    assert refused('{"code": "x", "client_msg_id": 7}').client_msg_id is None
    assert refused('{"code": "x", "client_msg_id": "' + "c" * 65 + '"}').client_msg_id is None


def test_a_nul_anywhere_is_refused_before_it_reaches_the_database() -> None:
    frame = '{"code": "chat", "room_id": "r", "data": {"deep": [{"k\\u0000": 1}]}}'
    assert refused(frame).error_code is ErrorCode.INVALID_MESSAGE


def _event(type_: str, stream: str, **metadata: object) -> RecordedEvent:
    return RecordedEvent(
        position=7,
        event_id=uuid.uuid4(),
        stream=stream,
        version=1,
        type=type_,
        data={"message": "hi"},
        metadata={"user_id": "u1", **metadata},
        recorded_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_a_chat_event_renders_as_chat_response_to_the_room() -> None:
    rendered = render_event(_event("chat", "room:r", client_msg_id="c1"))
    assert rendered is not None
    assert rendered.audience == Audience("room", "r")
    assert rendered.envelope == {
        "status": "success",
        "code": "chat_response",
        "user_id": "u1",
        "room_id": "r",
        "timestamp": "2026-01-02T03:04:05Z",
        "data": {"message": "hi"},
        "event_id": 7,
        "client_msg_id": "c1",
    }


def test_an_ai_request_is_acknowledged_pending_to_its_sender_only() -> None:
    rendered = render_event(_event("idea", "room:r"))
    assert rendered is not None
    assert rendered.audience == Audience("user", "u1")
    assert rendered.envelope["status"] == "pending"
    assert rendered.envelope["code"] == "idea"


def test_rejected_events_are_never_rendered() -> None:
    assert render_event(_event("rejected", "user:u1")) is None

"""The envelope rules without any I/O: parsing, rendering, and their error codes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from productflo.envelopes import Audience, Inbound, client_msg_id_in, parse_inbound, render_event
from productflo.errors import ErrorCode, ProtocolError
from productflo.events.models import MAX_POSITION, RecordedEvent
from productflo.jsontext import MAX_DEPTH, describe, is_storable, storable


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


# -- bad input (SPEC section 6) -------------------------------------------------------------------


def nested(depth: int, inner: str = "1") -> str:
    """A chat frame whose JSON is `depth` levels deep, the envelope object being level 1."""
    lists = depth - 2  # the envelope and its data are two levels
    value = "[" * lists + inner + "]" * lists
    return '{"code": "chat", "room_id": "r", "data": {"x": ' + value + "}}"


def test_nesting_to_the_limit_parses() -> None:
    assert parse_inbound(nested(MAX_DEPTH), "u1").data_json()["x"] is not None


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 350, 2_000, 100_000])
def test_nesting_past_the_limit_is_invalid_message_however_deep(depth: int) -> None:
    assert refused(nested(depth)).error_code is ErrorCode.INVALID_MESSAGE


def test_a_deep_frame_is_refused_with_its_client_msg_id() -> None:
    frame = '{"client_msg_id": "c1", "code": "chat", "data": ' + "[" * 40 + "]" * 40 + "}"
    error = refused(frame)
    assert (error.error_code, error.client_msg_id) == (ErrorCode.INVALID_MESSAGE, "c1")


@pytest.mark.parametrize(
    "number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 400, "-" + "9" * 5000]
)
def test_numbers_json_cannot_carry_are_invalid_json(number: str) -> None:
    frame = '{"code": "chat", "room_id": "r", "data": {"n": ' + number + "}}"
    assert refused(frame).error_code is ErrorCode.INVALID_JSON


def test_numbers_a_double_holds_parse() -> None:
    frame = '{"code": "chat", "room_id": "r", "data": {"a": 1e308, "b": 1e-400, "c": ' + "9" * 308
    inbound = parse_inbound(frame + "}}", "u1")
    assert inbound.data_json() == {"a": 1e308, "b": 0.0, "c": int("9" * 308)}


UNSTORABLE = {
    "nul-escaped-in-data": '{"code": "chat", "room_id": "r", "data": {"message": "a\\u0000b"}}',
    "nul-raw-in-data": '{"code": "chat", "room_id": "r", "data": {"message": "a\x00b"}}',
    "nul-in-a-key": '{"code": "chat", "room_id": "r", "data": {"deep": [{"k\\u0000": 1}]}}',
    "surrogate-in-data": '{"code": "chat", "room_id": "r", "data": {"message": "\\ud800"}}',
    "surrogate-in-extra-data": '{"code": "chat", "room_id": "r", "data": {"mood": ["\\ud800"]}}',
    "low-surrogate-in-a-key": '{"code": "chat", "room_id": "r", "data": {"\\udc00": 1}}',
    "nul-in-code": '{"code": "ch\\u0000at", "room_id": "r"}',
    "surrogate-in-code": '{"code": "\\ud800", "room_id": "r"}',
    "surrogate-in-room": '{"code": "chat", "room_id": "\\udfff"}',
}


@pytest.mark.parametrize("frame", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
def test_text_postgresql_cannot_store_is_invalid_message_anywhere(frame: str) -> None:
    error = refused(frame)
    assert error.error_code is ErrorCode.INVALID_MESSAGE
    assert is_storable(error.message)


def test_a_surrogate_pair_is_one_character_and_stored() -> None:
    frame = '{"code": "chat", "room_id": "r", "data": {"message": "\\ud83d\\ude00"}}'
    assert parse_inbound(frame, "u1").data.message == "\U0001f600"


def test_a_raw_lone_surrogate_in_a_text_frame_is_invalid_message() -> None:
    """Socket.IO hands over a string its own JSON decoder made: it can hold a lone surrogate."""
    frame = '{"code": "chat", "room_id": "r", "data": {"message": "\ud800"}}'
    assert refused(frame).error_code is ErrorCode.INVALID_MESSAGE


def test_an_unsupported_code_is_quoted_storably() -> None:
    error = refused('{"code": "shout\\n<b>"}')
    assert error.error_code is ErrorCode.UNSUPPORTED_MESSAGE_TYPE
    assert error.message == "Unsupported message type: shout\n<b>"


def test_a_history_before_past_the_log_is_invalid_message() -> None:
    frame = '{"code": "history", "room_id": "r", "data": {"before": ' + str(10**30) + "}}"
    error = refused(frame)
    assert error.error_code is ErrorCode.INVALID_MESSAGE
    assert error.message == f"data.before must be an integer from 1 to {MAX_POSITION}"
    ok = parse_inbound(frame.replace(str(10**30), str(MAX_POSITION)), "u1")
    assert ok.data.before == MAX_POSITION


def test_a_sender_other_than_the_connections_user_is_a_mismatch() -> None:
    frame = '{"code": "chat", "room_id": "r", "data": {"message": "hi", "sender": "haitch"}}'
    assert refused(frame).error_code is ErrorCode.USER_ID_MISMATCH
    assert parse_inbound(frame.replace("haitch", "u1"), "u1").data.sender == "u1"


VALIDATION_MESSAGES = {
    '{"code": "chat", "room_id": "a b"}': (
        "room_id must be 1-128 characters of letters, digits and _.@:+|=~-"
    ),
    '{"code": "chat", "room_id": 7}': (
        "room_id must be 1-128 characters of letters, digits and _.@:+|=~-"
    ),
    '{"code": "chat", "room_id": "r", "data": "hello"}': "data must be an object",
    '{"code": "history", "room_id": "r", "data": {"limit": "ten"}}': (
        "data.limit must be an integer from 1 to 100"
    ),
    '{"code": "history", "room_id": "r", "data": {"limit": 101}}': (
        "data.limit must be an integer from 1 to 100"
    ),
    '{"code": "chat", "room_id": "r", "data": {"attached_files": ["a", 5]}}': (
        "data.attached_files must be a list of at most 100 strings of at most 1024 characters"
    ),
    '{"code": "chat", "room_id": "r", "timestamp": "yesterday"}': (
        "timestamp must be an ISO 8601 date and time"
    ),
    '{"code": "chat", "room_id": "r", "client_msg_id": ""}': (
        "client_msg_id must be a string of 1-64 characters"
    ),
}


@pytest.mark.parametrize("frame", list(VALIDATION_MESSAGES), ids=range(len(VALIDATION_MESSAGES)))
def test_validation_errors_are_told_in_our_own_words(frame: str) -> None:
    error = refused(frame)
    assert error.error_code is ErrorCode.INVALID_MESSAGE
    assert error.message == VALIDATION_MESSAGES[frame]


def test_client_msg_id_in_never_raises() -> None:
    assert client_msg_id_in(nested(100_000)) is None
    assert client_msg_id_in(b"\xff") is None
    assert client_msg_id_in('{"client_msg_id": "c1", "n": NaN}') is None
    assert client_msg_id_in('{"client_msg_id": "c1", "x": "\\u0000"}') == "c1"
    assert client_msg_id_in('{"client_msg_id": "c\\u0000"}') is None
    assert client_msg_id_in('{"client_msg_id": "c2", "code": "chat"}') == "c2"


def test_storable_escapes_only_what_postgresql_cannot_store() -> None:
    assert storable('{"m": "a\x00b \ud800 \udfff"}') == '{"m": "a\\u0000b \\ud800 \\udfff"}'
    text = 'plain \\u0000 é \U0001f600 "quoted"'
    assert storable(text) is text
    assert is_storable(storable("\x00\ud800"))


def test_is_storable_looks_at_every_key_and_string_of_json_data() -> None:
    assert is_storable({"a": [1, {"b": ("c", None, 2.5)}], 3: "é"})
    assert not is_storable({"a": [1, {"b": ("c\x00",)}]})
    assert not is_storable([{"\ud800": 1}])
    assert not is_storable("\udc00")


def test_validation_messages_never_echo_a_model_a_pattern_or_the_input() -> None:
    frames = [
        '{"code": "chat", "room_id": "<script>"}',
        '{"code": "chat", "room_id": "r", "data": ["secret-input"]}',
        '{"code": "chat", "room_id": "r", "data": {"message": {"secret-input": 1}}}',
        '{"code": "chat", "room_id": "r", "data": {"is_typing": "secret-input"}}',
        '{"code": "chat", "room_id": "r", "data": {"before": "secret-input"}}',
        '{"code": "chat", "room_id": "r", "user_id": ["secret-input"]}',
    ]
    for frame in frames:
        message = refused(frame).message
        for internal in ("Input should", "Inbound", "A-Za-z", "^", "secret-input", "<script>"):
            assert internal not in message, (frame, message)


def test_describe_keeps_a_validators_words_unless_they_quote_the_input() -> None:
    ours = {"type": "value_error", "loc": ("query",), "msg": "Value error, a before b", "input": {}}
    assert describe(ours) == "a before b"
    quoting = {"type": "value_error", "loc": ("t",), "msg": "Value error, 'zz' bad", "input": "zz"}
    assert describe(quoting) == "t is not valid"
    assert describe({"type": "less_than_equal", "loc": ("limit",), "ctx": {"le": 5}}) == (
        "limit must be at most 5"
    )
    assert describe({"type": "missing", "loc": ("body", "k\u0000", "x")}) == "body.x is required"


def test_brackets_and_escapes_inside_strings_are_only_text() -> None:
    """Frames with many brackets or a \\u escape are walked; their strings are not nesting."""
    message = "[{" * 100 + " caf\u00e9 \\u0000 (a backslash, then u0000)"
    frame = json.dumps({"code": "chat", "room_id": "r", "data": {"message": message}})
    assert "\\u00e9" in frame and frame.count("[") > MAX_DEPTH
    assert parse_inbound(frame, "u1").data.message == message

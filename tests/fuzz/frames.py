"""What the fuzz sends, and what SPEC sections 5 and 6 allow as the answer. Pure: no I/O.

A `Draft` is one inbound frame with holes the harness fills when it sends it: the
`client_msg_id` (fresh for every frame, so that the same drawn example can be replayed while
Hypothesis shrinks it without turning into a resend) and the user id (fresh for every batch, so
that a batch starts from no membership and replays the same way). Each draft says which
outcomes are allowed: `ACK` (the acknowledgement of its code), `SILENT` (a valid `typing`, which
nobody answers), an error code of SPEC section 5, or a close. Where SPEC leaves a choice (a
field of a size the server is free to bound, which of two broken rules is reported first) the
draft allows both.

Drafts start as a valid envelope of one inbound code and are then mutated once: a field dropped
or of the wrong type, an extra field, a huge string, nesting up to 100,000 deep, a huge integer,
`NaN`/`Infinity`/`1e400` as raw JSON text, NUL and lone surrogates as JSON escapes, unicode edge
cases, a binary frame, bytes that are not UTF-8, JSON that is not an object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

CMID = "@@CMID@@"  # where the harness puts the frame's client_msg_id
USER = "@@USER@@"  # where it puts the connection's user id (a fresh user for every batch)
RAW = "@@RAW@@"  # a JSON string value replaced, quotes and all, by raw JSON text
ESC = "@@ESC@@"  # inside a JSON string: replaced by a JSON escape (\u0000, \ud800)

ACK = "ack"
SILENT = "silent"
CLOSE_TOO_BIG = "close:1009"

CODES = (
    "chat",
    "haitch_chat",
    "idea",
    "documentation",
    "engineering",
    "join",
    "leave",
    "typing",
    "history",
)
AI_CODES = frozenset({"haitch_chat", "idea", "documentation", "engineering"})
SENDS = frozenset({"chat", *AI_CODES})
# Codes of SPEC section 7 (documents): never drawn as "unsupported", whether or not they exist yet.
DOC_CODES = frozenset({"doc_open", "doc_update", "awareness"})
SERVER_ONLY = (
    "system",
    "notification",
    "logs",
    "chat_response",
    "idea_response",
    "documentation_response",
    "engineering_response",
    "pending",
    "error",
)
# SPEC section 5's error codes.
ERROR_CODES = frozenset(
    {
        "MESSAGE_CODE_REQUIRED",
        "UNSUPPORTED_MESSAGE_TYPE",
        "ROOM_ID_REQUIRED",
        "INVALID_JSON",
        "INVALID_MESSAGE",
        "USER_ID_MISMATCH",
        "FORBIDDEN",
        "RATE_LIMITED",
        "AUTHENTICATION_FAILED",
        "AI_PROVIDER_ERROR",
        "FAILED_TO_PROCESS_MESSAGE",
    }
)
# What a frame may be refused with while the database is up, the limiter is out of reach and
# the token valid: the refusals that depend on the frame alone.
FRAME_ERRORS = ERROR_CODES - {
    "RATE_LIMITED",
    "AUTHENTICATION_FAILED",
    "AI_PROVIDER_ERROR",
    "FAILED_TO_PROCESS_MESSAGE",
}
ENVELOPE_FIELDS = frozenset({"code", "user_id", "room_id", "timestamp", "data", "client_msg_id"})
DATA_FIELDS = frozenset(
    {"message", "sender", "attached_files", "is_typing", "before", "limit", "doc_id", "update"}
)

# Depth counts containers, the envelope being 1 and `data` 2. SPEC: the limit is at least 32.
# Up to ACCEPTED_DEPTH a frame must be taken; past REFUSED_DEPTH it must be INVALID_MESSAGE; in
# between, the server's documented limit decides (either answer is allowed here).
ACCEPTED_DEPTH = 31
REFUSED_DEPTH = 64
DEPTHS = (1, 10, 29, 30, 31, 32, 33, 40, 64, 65, 100, 250, 300, 340, 350, 1000, 5000, 100_000)

MAX_INT64 = 2**63 - 1
HUGE_INTS = (2**63, 2**64, 10**30, -(2**63) - 1, -(10**30), 10**100)
RAW_NUMBERS = ("NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+999", "123e99999")
ESCAPES = ("\\u0000", "\\ud800", "\\udfff", "\\udc00\\ud800", "a\\u0000b", "\\ud83d")
UNICODE_EDGES = (
    "\U0001f600",  # astral: an emoji
    "\U0001d54f\U0001d536",  # astral: mathematical letters
    "\U0010fffd",  # the last private-use astral code point
    "e\u0301",  # combining acute
    "Z" + "\u0351\u0352\u0353\u0354" * 8,  # a pile of combining marks
    "\u202eevil\u202c",  # right-to-left override
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
    "\u0645\u0631\u062d\u0628\u0627",  # Arabic
    "\u2028",  # line separator (not a line break in JSON, one in JavaScript)
    "\u2029",  # paragraph separator
    "\ufeff",  # byte order mark
    "\u200b\u200d\u2060",  # zero width space, joiner, word joiner
    "\uffff\ufffe\ufdd0",  # noncharacters
    "\x01\x1f\x7f",  # control characters (JSON escapes them)
    '"\\/',
    "</script><script>alert(1)</script>",
    "%s%n{0}${x}",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a ZWJ sequence
)
NOT_UTF8 = (
    b"\xff",
    b"\xfe\xff\x00{",
    b"\xc3\x28",  # a broken two-byte sequence
    b"\xc0\xaf",  # an overlong encoding
    b"\xed\xa0\x80",  # a surrogate encoded in UTF-8 (CESU)
    b'{"code": "chat", "room_id": "r", "data": {"message": "\xff\xfe"}}',
    b"\x80\x81\x82",
)
BAD_ROOM_IDS = ("", " ", "a b", "\u00e9t\u00e9", "x" * 129, "../etc", "room\n", "room/1", "#")
BAD_TIMESTAMPS = ("yesterday", "2020-13-45T99:00:00Z", "", "T")
LENIENT_TIMESTAMPS = (12345, "2020-01-01", "2020-01-01T00:00:00+05:30", 10**30)


@dataclass(frozen=True)
class Context:
    """Who is fuzzing: the rooms it may use, the rooms that answer FORBIDDEN, someone else."""

    rooms: tuple[str, ...]
    forbidden: tuple[str, ...]
    other_user: str
    max_bytes: int
    socketio: bool = False
    user_id: str = USER


@dataclass(frozen=True, repr=False)
class Draft:
    """One frame to send, with its holes (CMID, the client_msg_id) not yet filled."""

    label: str
    template: str | bytes
    expect: frozenset[str]
    code: str | None = None  # the inbound code whose acknowledgement may answer it
    room: str | None = None
    message: str | None = None  # data.message as sent: the acknowledgement must carry it back
    echo: bool = False  # an error answer must carry the client_msg_id
    cmid_length: int | None = None  # pad the client_msg_id to this length
    kind: str = "frame"  # "frame", "resend" (the last acknowledged chat again), "event"
    event: str = "message"  # the Socket.IO event emitted (kind "event")
    args: tuple[Any, ...] = field(default=())

    def __repr__(self) -> str:
        text = self.template if isinstance(self.template, str) else repr(self.template)
        shown = text if len(text) <= 160 else f"{text[:120]}...{text[-20:]} ({len(text)} chars)"
        expect = ",".join(sorted(self.expect))
        extra = f" event={self.event!r} args={self.args!r}" if self.kind == "event" else ""
        return f"<{self.label}: {shown!r} expect={expect}{extra}>"

    def render(self, cmid: str, user: str) -> Frame:
        """Fill the holes: the payload on the wire, and the client_msg_id it carries (if valid)."""
        if self.cmid_length is not None:
            cmid = (cmid + "x" * self.cmid_length)[: self.cmid_length]
        template = self.template
        if isinstance(template, bytes):
            payload: str | bytes = template.replace(CMID.encode(), cmid.encode())
            payload = payload.replace(USER.encode(), user.encode())
            carried = CMID.encode() in template
        else:
            payload = template.replace(CMID, cmid).replace(USER, user)
            carried = CMID in template
        valid = carried and 0 < len(cmid) <= 64
        size = len(
            payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
        )
        return Frame(self, payload, cmid if valid else None, size)


@dataclass(frozen=True)
class Frame:
    draft: Draft
    payload: str | bytes
    cmid: str | None  # the client_msg_id a correct server echoes, when the frame carries one
    size: int  # bytes on the wire

    def allowed(self, max_bytes: int) -> frozenset[str]:
        if self.size > max_bytes:
            return frozenset({CLOSE_TOO_BIG})
        return self.draft.expect


# -- building blocks -----------------------------------------------------------------------------

SAFE_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
MARKER = re.compile("@@(CMID|USER|RAW|ESC)@@")
safe_text = st.text(alphabet=SAFE_CHARS, max_size=24).filter(lambda t: not MARKER.search(t))
messages = st.one_of(
    safe_text,
    st.sampled_from(UNICODE_EDGES),
    st.lists(st.sampled_from(UNICODE_EDGES), min_size=2, max_size=5).map("".join),
)


def _json_values(largest: float | None) -> st.SearchStrategy[Any]:
    """Any JSON value (shallow), its floats up to `largest` in magnitude (None: any double)."""
    floats = st.floats(
        allow_nan=False,
        allow_infinity=False,
        min_value=None if largest is None else -largest,
        max_value=largest,
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-MAX_INT64, max_value=MAX_INT64),
        floats,
        safe_text,
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(safe_text, inner, max_size=4),
        max_leaves=8,
    )


json_values = _json_values(None)
# PostgreSQL prints a jsonb number without an exponent (1e300 comes back as 301 digits), and
# python-socketio refuses integers of over 100 digits (engineio.json): a Socket.IO client that
# reads a history page holding 1e300 fails to decode it. Over Socket.IO the fuzz keeps its floats
# below 1e90 so that this, which SPEC does not settle, does not hide the rest.
json_values_for_socketio = _json_values(1e90)
wrong_types: st.SearchStrategy[Any] = st.sampled_from(
    [0, 7, -1, 1.5, True, False, [], ["x"], {}, {"a": 1}]
)


def _dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))


def _ok(ctx: Context, code: str, room: str | None) -> frozenset[str]:
    if room in ctx.forbidden:
        return frozenset({"FORBIDDEN"})
    return frozenset({SILENT if code == "typing" else ACK})


def _errors(
    ctx: Context, room: str | None, *codes: str, ok: bool = False, code: str = ""
) -> frozenset[str]:
    """The error codes allowed (and the frame's own outcome when `ok`); FORBIDDEN too in a room
    closed to the user, since SPEC does not order the access check and field validation."""
    allowed = set(codes)
    if ok:
        allowed |= _ok(ctx, code, room)
    if room in ctx.forbidden:
        allowed.add("FORBIDDEN")
    return frozenset(allowed)


@dataclass
class _Envelope:
    """A valid envelope being built, with what its acknowledgement must show."""

    ctx: Context
    code: str
    room: str
    body: dict[str, Any]
    message: str | None


@st.composite
def _valid(draw: st.DrawFn, ctx: Context, code: str | None = None) -> _Envelope:
    code = code or draw(st.sampled_from(CODES))
    room = draw(st.sampled_from(ctx.rooms * 3 + ctx.forbidden))
    body: dict[str, Any] = {"code": code, "room_id": room, "client_msg_id": CMID}
    data: dict[str, Any] = {}
    message = None
    if code in SENDS:
        message = draw(messages)
        data["message"] = message
        if draw(st.booleans()):
            data["sender"] = ctx.user_id
        if draw(st.integers(0, 3)) == 0:
            data["attached_files"] = draw(st.lists(safe_text, max_size=3))
    elif code == "typing":
        data["is_typing"] = draw(st.booleans())
    elif code == "history":
        if draw(st.booleans()):
            data["before"] = draw(st.integers(1, MAX_INT64))
        if draw(st.booleans()):
            data["limit"] = draw(st.integers(1, 100))
    if data or draw(st.booleans()):
        body["data"] = data
    if draw(st.integers(0, 3)) == 0:
        body["user_id"] = ctx.user_id
    if draw(st.integers(0, 3)) == 0:
        body["timestamp"] = "2026-01-02T03:04:05Z"
    return _Envelope(ctx, code, room, body, message)


def _draft(
    env: _Envelope, label: str, expect: frozenset[str], *, ascii_only: bool = True, **fields: Any
) -> Draft:
    text = _dumps(env.body, ascii_only)
    return _finish(env, label, text, expect, **fields)


def _finish(env: _Envelope, label: str, text: str, expect: frozenset[str], **fields: Any) -> Draft:
    parsed_cmid = CMID in text
    fields.setdefault("echo", parsed_cmid)
    acked = ACK in expect
    return Draft(
        label,
        text,
        expect,
        code=env.code,
        room=env.room,
        message=env.message if acked else None,
        **fields,
    )


def _data(env: _Envelope) -> dict[str, Any]:
    data = env.body.get("data")
    if not isinstance(data, dict):
        data = {}
        env.body["data"] = data
    return data


def _substitute(text: str, raw: str) -> str:
    """Replace the JSON string "@@RAW@@" (quotes included) by raw JSON text."""
    return text.replace(f'"{RAW}"', raw, 1)


# -- mutations -----------------------------------------------------------------------------------


@st.composite
def valid_frames(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx))
    return _draft(env, "valid", _ok(ctx, env.code, env.room), ascii_only=draw(st.booleans()))


@st.composite
def missing_fields(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx))
    which = draw(st.sampled_from(["code", "room_id", "data", "user_id", "timestamp"]))
    env.body.pop(which, None)
    if which == "data":
        env.message = None
    if which == "code":
        expect = _errors(ctx, env.room, "MESSAGE_CODE_REQUIRED")
    elif which == "room_id":
        expect = _errors(ctx, None, "ROOM_ID_REQUIRED")
    elif which == "data" and env.code in SENDS:
        expect = _errors(ctx, env.room, "INVALID_MESSAGE", ok=True, code=env.code)
    else:
        expect = _ok(ctx, env.code, env.room)
    return _draft(env, f"missing {which}", expect)


@st.composite
def wrong_codes(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx))
    choice = draw(st.integers(0, 3))
    if choice == 0:
        code: Any = draw(safe_text.filter(lambda t: t not in CODES and t not in DOC_CODES))
    elif choice == 1:
        code = draw(st.sampled_from(SERVER_ONLY))
    elif choice == 2:
        code = draw(
            st.sampled_from(["CHAT", " chat", "chat ", "ch\u0430t", "Join", "chat\n", "typing!"])
        )
    else:
        code = draw(st.one_of(wrong_types, st.none()))
    env.body["code"] = code
    if code is None or code == "":
        expect = _errors(ctx, env.room, "MESSAGE_CODE_REQUIRED")
    elif isinstance(code, str):
        expect = _errors(ctx, env.room, "UNSUPPORTED_MESSAGE_TYPE")
    else:
        expect = _errors(ctx, env.room, "INVALID_MESSAGE")
    return _draft(env, "wrong code", expect, ascii_only=draw(st.booleans()))


@st.composite
def wrong_rooms(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx))
    room: Any = draw(st.one_of(st.sampled_from(BAD_ROOM_IDS), wrong_types, st.none()))
    env.body["room_id"] = room
    if room is None or room == "":
        expect = _errors(ctx, None, "ROOM_ID_REQUIRED", "INVALID_MESSAGE")
    else:
        expect = _errors(ctx, None, "INVALID_MESSAGE")
    env.room = ""
    return _draft(env, "wrong room_id", expect, ascii_only=draw(st.booleans()))


@st.composite
def wrong_identity(draw: st.DrawFn, ctx: Context) -> Draft:
    """user_id or data.sender naming someone else (SPEC 6: nobody may pose as another user)."""
    env = draw(_valid(ctx))
    target = draw(st.sampled_from(["user_id", "sender"]))
    who: Any = draw(
        st.sampled_from([ctx.other_user, "haitch", "Haitch", ctx.user_id + "x", "x" + ctx.user_id])
        | st.sampled_from(["a b", "", 7, ["x"], {"id": ctx.user_id}])
    )
    if target == "user_id":
        env.body["user_id"] = who
    else:
        _data(env)["sender"] = who
    sends = env.code in SENDS
    if isinstance(who, str) and who and re.fullmatch(r"[A-Za-z0-9_.@:+|=~\-]{1,128}", who):
        strict = target == "user_id" or sends
        expect = _errors(ctx, env.room, "USER_ID_MISMATCH", ok=not strict, code=env.code)
    else:
        expect = _errors(
            ctx,
            env.room,
            "INVALID_MESSAGE",
            "USER_ID_MISMATCH",
            ok=target == "sender" and not sends,
            code=env.code,
        )
    return _draft(env, f"foreign {target}", expect)


@st.composite
def wrong_data(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx))
    choice = draw(st.integers(0, 4))
    ok = False
    if choice == 0:
        env.body["data"] = value = draw(st.one_of(wrong_types, st.none(), safe_text))
        ok = value is None or value == {} or value == {"a": 1}
        label = "data of the wrong type"
    elif choice == 1 and env.code in SENDS:
        _data(env)["message"] = value = draw(st.one_of(wrong_types, st.none()))
        ok = value is None
        env.message = None  # a null message may be taken as none at all
        label = "data.message of the wrong type"
    elif choice == 2 and env.code in SENDS:
        _data(env)["attached_files"] = value = draw(
            st.sampled_from(["a.png", [1], [[]], {"a": 1}, ["x"] * 101, ["y" * 2000], 5])
        )
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        label = "data.attached_files of the wrong type or size"
    elif choice == 3 and env.code == "typing":
        _data(env)["is_typing"] = value = draw(st.sampled_from([[], {}, "maybe", 1, None, [True]]))
        ok = value in ("maybe", 1, None)
        label = "data.is_typing of the wrong type"
    else:
        env.body["timestamp"] = value = draw(
            st.sampled_from([*BAD_TIMESTAMPS, *LENIENT_TIMESTAMPS, [], {}])
        )
        ok = value in LENIENT_TIMESTAMPS
        label = "timestamp of the wrong type"
    if ok and value in (None, {}, {"a": 1}) and label.startswith("data of") and env.code in SENDS:
        env.message = None  # the message was replaced: nothing to compare
    expect = _errors(ctx, env.room, "INVALID_MESSAGE", ok=ok, code=env.code)
    return _draft(env, label, expect)


@st.composite
def long_strings(draw: st.DrawFn, ctx: Context) -> Draft:
    """Huge strings: within a size the server may take, past it, and past the frame limit."""
    env = draw(_valid(ctx, draw(st.sampled_from(["chat", "chat", "join", "history"]))))
    length = draw(
        st.sampled_from([1000, 40_000, ctx.max_bytes - 200, ctx.max_bytes + 1, 3 * ctx.max_bytes])
    )
    where = draw(st.sampled_from(["message", "extra", "code", "room_id", "client_msg_id"]))
    text = "x" * length
    if where == "message" and env.code in SENDS:
        _data(env)["message"] = env.message = text
        expect = _errors(ctx, env.room, "INVALID_MESSAGE", ok=True, code=env.code)
    elif where == "code":
        env.body["code"] = text
        expect = _errors(ctx, env.room, "UNSUPPORTED_MESSAGE_TYPE", "INVALID_MESSAGE")
    elif where == "room_id":
        env.body["room_id"] = text
        expect = _errors(ctx, None, "INVALID_MESSAGE")
    elif where == "client_msg_id":
        env.body["client_msg_id"] = text
        expect = _errors(ctx, env.room, "INVALID_MESSAGE")
    else:
        _data(env)["padding"] = text
        expect = _errors(ctx, env.room, "INVALID_MESSAGE", ok=True, code=env.code)
    return _draft(env, f"{length}-character {where}", expect)


@st.composite
def extra_fields(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx))
    key = draw(safe_text.filter(lambda k: k not in ENVELOPE_FIELDS | DATA_FIELDS))
    value = draw(json_values_for_socketio if ctx.socketio else json_values)
    if draw(st.booleans()):
        env.body[key] = value
        where = "envelope"
    else:
        _data(env)[key] = value
        where = "data"
    return _draft(
        env, f"extra field in {where}", _ok(ctx, env.code, env.room), ascii_only=draw(st.booleans())
    )


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"k":' * depth + "1" + "}" * depth


@st.composite
def deep_nesting(draw: st.DrawFn, ctx: Context) -> Draft:
    """Containers nested up to 100,000 deep, in data, at the top, as the code, as the frame."""
    env = draw(_valid(ctx, draw(st.sampled_from(["chat", "join", "history", "typing"]))))
    depth = draw(st.sampled_from(DEPTHS))
    kind = draw(st.sampled_from(["list", "object"]))
    where = draw(st.sampled_from(["data", "data", "envelope", "code", "frame", "unclosed"]))
    nested = _nested(depth, kind)

    def by_depth(total: int, *shallow: str, ok: bool = False) -> frozenset[str]:
        if total <= ACCEPTED_DEPTH:
            return _errors(ctx, env.room, *shallow, ok=ok, code=env.code)
        refused = _errors(ctx, env.room, "INVALID_MESSAGE")
        if total > REFUSED_DEPTH:
            return refused
        return refused | _errors(ctx, env.room, *shallow, ok=ok, code=env.code)

    if where == "data":
        _data(env)["nested"] = RAW
        text = _substitute(_dumps(env.body, True), nested)
        expect = by_depth(depth + 2, ok=True)
    elif where == "envelope":
        env.body["nested"] = RAW
        text = _substitute(_dumps(env.body, True), nested)
        expect = by_depth(depth + 1, ok=True)
    elif where == "code":
        env.body["code"] = RAW
        text = _substitute(_dumps(env.body, True), nested)
        expect = by_depth(depth + 1, "INVALID_MESSAGE")
    elif where == "frame":
        env.room = ""
        text = nested
        if kind == "list":  # not an object, however deep: either rule may be reported
            expect = by_depth(depth, "INVALID_JSON") | frozenset({"INVALID_JSON"})
        else:
            expect = by_depth(depth, "MESSAGE_CODE_REQUIRED")
    else:
        env.room = ""
        text = nested[: len(nested) // 2 + 1]
        expect = frozenset({"INVALID_JSON", "INVALID_MESSAGE"})
    return _finish(env, f"{kind} nested {depth} deep in {where}", text, expect, echo=depth < 30)


@st.composite
def huge_integers(draw: st.DrawFn, ctx: Context) -> Draft:
    """Integers past 64 bits (and just inside) in history's before/limit, and elsewhere."""
    env = draw(_valid(ctx, draw(st.sampled_from(["history", "history", "history", "chat"]))))
    where = draw(st.sampled_from(["before", "limit", "extra"]))
    value: Any = draw(
        st.sampled_from(
            [*HUGE_INTS, MAX_INT64, 1, 0, -1, 100, 101, 1.5, 1e30, "abc", [], {}, True, "5", 1.0]
        )
    )
    raw = draw(st.sampled_from([None, None, "1" + "0" * 5000, "1" + "0" * 30]))
    if where == "extra":
        target = "extra"
        if ctx.socketio and value == 10**100:
            # Taken and stored (a double holds it), it is echoed to the room, where
            # python-socketio cannot read it: engineio.json refuses integers of over 100 digits.
            value = 10**99
        _data(env)["big"] = RAW if raw else value
    else:
        target = where
        _data(env)[where] = RAW if raw else value
    text = _dumps(env.body, True)
    if raw:
        text = _substitute(text, raw)
    expect: frozenset[str]
    if target == "extra":
        expect = _errors(ctx, env.room, "INVALID_MESSAGE", "INVALID_JSON", ok=True, code=env.code)
    elif env.code != "history":
        # before/limit are history's parameters; elsewhere the server may ignore them
        expect = _errors(ctx, env.room, "INVALID_MESSAGE", "INVALID_JSON", ok=True, code=env.code)
    elif raw is not None:
        # Python's int() refuses more than 4300 digits: such a number may be taken for not JSON
        allowed = {"INVALID_MESSAGE"} | ({"INVALID_JSON"} if len(raw) > 4000 else set())
        expect = _errors(ctx, env.room, *allowed)
    else:
        top = MAX_INT64 if where == "before" else 100
        lenient = value in (True, "5", 1.0)
        fine = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= top
        expect = _errors(ctx, env.room, "INVALID_MESSAGE", ok=fine or lenient, code=env.code)
        if fine:
            expect = _ok(ctx, env.code, env.room)
    shown = raw if raw else repr(value)
    return _finish(env, f"{where}={shown[:40]}", text, expect)


@st.composite
def non_finite_numbers(draw: st.DrawFn, ctx: Context) -> Draft:
    """NaN, Infinity and numbers that overflow a double, as raw JSON text: not JSON."""
    env = draw(_valid(ctx))
    raw = draw(st.sampled_from(RAW_NUMBERS))
    where = draw(st.sampled_from(["message", "before", "extra", "envelope", "list", "code"]))
    if where == "envelope":
        env.body["n"] = RAW
    elif where == "code":
        env.body["code"] = RAW
    elif where == "list":
        _data(env)["values"] = [1, RAW, 3]
    elif where == "message" and env.code in SENDS:
        _data(env)["message"] = RAW
    else:
        _data(env)["before" if where == "before" else "n"] = RAW
    text = _substitute(_dumps(env.body, True), raw)
    return _finish(env, f"{raw} in {where}", text, frozenset({"INVALID_JSON"}), echo=False)


@st.composite
def unstorable_text(draw: st.DrawFn, ctx: Context) -> Draft:
    """NUL and lone surrogates, as JSON escapes, anywhere in the frame: INVALID_MESSAGE."""
    env = draw(_valid(ctx))
    escape = draw(st.sampled_from(ESCAPES))
    where = draw(
        st.sampled_from(
            [
                "code",
                "room_id",
                "message",
                "sender",
                "data key",
                "envelope key",
                "nested",
                "user_id",
                "client_msg_id",
                "timestamp",
            ]
        )
    )
    echo = True
    if where == "code":
        env.body["code"] = env.code + ESC
    elif where == "room_id":
        env.body["room_id"] = env.room + ESC
    elif where == "message" and env.code in SENDS:
        _data(env)["message"] = "hi" + ESC
    elif where == "sender":
        _data(env)["sender"] = ctx.user_id + ESC
    elif where == "data key":
        _data(env)["k" + ESC] = 1
    elif where == "envelope key":
        env.body["k" + ESC] = 1
    elif where == "user_id":
        env.body["user_id"] = ctx.user_id + ESC
    elif where == "client_msg_id":
        env.body["client_msg_id"] = CMID + ESC
        echo = False
    elif where == "timestamp":
        env.body["timestamp"] = "2026-01-02T03:04:05Z" + ESC
    else:
        _data(env)["nested"] = {"a": [{"b": "x" + ESC}]}
    text = _dumps(env.body, True).replace(ESC, escape)
    expect = _errors(ctx, env.room, "INVALID_MESSAGE")
    return _finish(env, f"{escape} in {where}", text, expect, echo=echo)


@st.composite
def unicode_edges(draw: st.DrawFn, ctx: Context) -> Draft:
    """Astral, combining, right-to-left, U+2028: taken and echoed as sent; escaped surrogate
    pairs are one character; none of it is an id."""
    env = draw(_valid(ctx, draw(st.sampled_from(["chat", "chat", "join", "typing"]))))
    edge = draw(st.sampled_from(UNICODE_EDGES))
    where = draw(st.sampled_from(["message", "message", "pair", "room_id", "code", "user_id"]))
    ascii_only = draw(st.booleans())
    if where == "message" and env.code in SENDS:
        _data(env)["message"] = env.message = edge
        expect = _ok(ctx, env.code, env.room)
    elif where == "pair" and env.code in SENDS:
        _data(env)["message"] = RAW
        env.message = "smile \U0001f600"
        text = _substitute(_dumps(env.body, ascii_only), '"smile \\ud83d\\ude00"')
        return _finish(env, "escaped surrogate pair", text, _ok(ctx, env.code, env.room))
    elif where == "room_id":
        env.body["room_id"] = "r" + edge
        expect = _errors(ctx, None, "INVALID_MESSAGE")
        env.room = ""
    elif where == "code":
        env.body["code"] = env.code + edge
        expect = _errors(ctx, env.room, "UNSUPPORTED_MESSAGE_TYPE")
    elif where == "user_id":
        env.body["user_id"] = ctx.user_id + edge
        expect = _errors(ctx, env.room, "INVALID_MESSAGE", "USER_ID_MISMATCH")
    else:
        _data(env)["label"] = edge
        expect = _ok(ctx, env.code, env.room)
    return _draft(env, f"unicode {edge!r} in {where}", expect, ascii_only=ascii_only)


@st.composite
def not_json_objects(draw: st.DrawFn, ctx: Context) -> Draft:
    """Frames that are not a JSON object: other JSON, broken JSON, trailing garbage."""
    choice = draw(st.integers(0, 5))
    env = draw(_valid(ctx))
    text = _dumps(env.body, True)
    expect = frozenset({"INVALID_JSON"})
    if choice == 0:
        frame = _dumps(draw(json_values.filter(lambda v: not isinstance(v, dict))), True)
        label = "JSON that is not an object"
    elif choice == 1:
        frame = draw(st.sampled_from(["", " ", "\n", "{", "}", "[", "null", "'x'", "{'code': 1}"]))
        label = "not JSON"
    elif choice == 2:
        frame = text[: draw(st.integers(0, len(text) - 1))]
        label = "a truncated envelope"
    elif choice == 3:
        garbage = draw(st.sampled_from([" x", "}", ",", "{}", "\x00", " // c"]))
        frame = text + garbage
        if "\x00" in garbage:  # a raw NUL: not JSON, and text PostgreSQL cannot store
            expect = frozenset({"INVALID_JSON", "INVALID_MESSAGE"})
        label = "trailing garbage"
    elif choice == 4:
        frame = "\ufeff" + text
        expect = frozenset({"INVALID_JSON", "INVALID_MESSAGE"}) | _ok(ctx, env.code, env.room)
        label = "a byte order mark before the envelope"
    else:
        # a raw control character inside a JSON string is not JSON (RFC 8259 section 7)
        frame = text.replace('"room_id":"', '"room_id":"\x00', 1)
        expect = frozenset({"INVALID_JSON", "INVALID_MESSAGE"})
        label = "a raw NUL inside a string"
    return _finish(env, label, frame, expect, echo=False)


@st.composite
def binary_frames(draw: st.DrawFn, ctx: Context) -> Draft:
    """Binary frames: an envelope as UTF-8 bytes, bytes that are not UTF-8, random bytes."""
    choice = draw(st.integers(0, 2))
    env = draw(_valid(ctx))
    if choice == 0:
        inner = draw(st.one_of(valid_frames(ctx), unstorable_text(ctx), wrong_codes(ctx)))
        assert isinstance(inner.template, str)
        # A server may take a binary frame as text, or refuse binary frames outright.
        expect = inner.expect | frozenset({"INVALID_JSON", "INVALID_MESSAGE"})
        return Draft(
            f"binary {inner.label}",
            inner.template.encode("utf-8"),
            expect,
            code=inner.code,
            room=inner.room,
            message=inner.message,
            echo=False,
        )
    if choice == 1:
        payload = draw(st.sampled_from(NOT_UTF8))
        return Draft(
            "bytes that are not UTF-8", payload, frozenset({"INVALID_JSON", "INVALID_MESSAGE"})
        )
    payload = draw(st.binary(min_size=1, max_size=64))
    return Draft("random bytes", payload, FRAME_ERRORS, room=env.room)


@st.composite
def duplicate_keys(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx, "chat"))
    text = _dumps(env.body, True)
    first = draw(st.sampled_from(['{"code":"nope",', '{"room_id":7,', '{"data":[],']))
    frame = first + text[1:]
    expect = _errors(
        ctx,
        env.room,
        "UNSUPPORTED_MESSAGE_TYPE",
        "INVALID_MESSAGE",
        "INVALID_JSON",
        ok=True,
        code=env.code,
    )
    return _finish(env, "duplicate keys", frame, expect, echo=False)


@st.composite
def client_msg_ids(draw: st.DrawFn, ctx: Context) -> Draft:
    env = draw(_valid(ctx))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        env.body["client_msg_id"] = draw(wrong_types)
        return _draft(
            env, "client_msg_id of the wrong type", _errors(ctx, env.room, "INVALID_MESSAGE")
        )
    if choice == 1:
        expect = _errors(ctx, env.room, "INVALID_MESSAGE")
        return _draft(env, "client_msg_id of 65 characters", expect, cmid_length=65, echo=False)
    return _draft(
        env, "client_msg_id of 64 characters", _ok(ctx, env.code, env.room), cmid_length=64
    )


def resends() -> st.SearchStrategy[Draft]:
    return st.just(Draft("the last acknowledged chat again", "", frozenset({ACK}), kind="resend"))


def socketio_events(ctx: Context) -> st.SearchStrategy[Draft]:
    """Socket.IO packets beside `message`: reserved event names, extra arguments, no argument."""
    frame = _dumps({"code": "history", "room_id": ctx.rooms[0], "client_msg_id": "x"}, True)
    cases = [
        ("disconnect", ()),
        ("connect", ()),
        ("connect", ({"token": "x"},)),
        ("connect_error", ("x",)),
        ("something", (frame,)),
        ("message", ()),
        ("message", (frame, frame)),
        ("message", ({"code": "chat"}, 1, 2)),
        ("message", (None,)),
        ("message", (1,)),
    ]
    tolerated = FRAME_ERRORS | frozenset({SILENT, "close:1000", "close:1008"})
    return st.sampled_from(cases).map(
        lambda case: Draft(
            f"socket.io event {case[0]!r} with {len(case[1])} arguments",
            "",
            tolerated,
            kind="event",
            event=case[0],
            args=case[1],
        )
    )


def drafts(ctx: Context) -> st.SearchStrategy[Draft]:
    """Every kind of frame, the valid ones first (Hypothesis shrinks towards them)."""
    kinds = [
        valid_frames(ctx),
        missing_fields(ctx),
        wrong_codes(ctx),
        wrong_rooms(ctx),
        wrong_identity(ctx),
        wrong_data(ctx),
        client_msg_ids(ctx),
        extra_fields(ctx),
        unicode_edges(ctx),
        long_strings(ctx),
        deep_nesting(ctx),
        deep_nesting(ctx),
        huge_integers(ctx),
        non_finite_numbers(ctx),
        unstorable_text(ctx),
        unstorable_text(ctx),
        not_json_objects(ctx),
        binary_frames(ctx),
        duplicate_keys(ctx),
        resends(),
    ]
    if ctx.socketio:
        kinds.append(socketio_events(ctx))
    return st.one_of(kinds)


# -- what answers may not contain ----------------------------------------------------------------

LEAK_MARKERS = (
    "Traceback",
    'File "',
    ".py",
    "site-packages",
    "pydantic",
    "asyncpg",
    "psycopg",
    "sqlalchemy",
    "SQLSTATE",
    "Inbound",
    "instance of",
    "input_value",
    "input_type",
    "[type=",
    "^[A-Za-z",
    "{1,128}",
    "Error(",
    "recursion",
    "jsonb",
    "errors.pydantic.dev",
)
_LEAK_PATTERN = re.compile(
    "|".join(re.escape(marker) for marker in LEAK_MARKERS) + r"|\b[A-Z][A-Za-z]*(Error|Exception)\b"
)


def leaked(text: str, sent: str | bytes) -> str | None:
    """The first internal detail in a server's text that the client did not send itself."""
    sent_text = sent if isinstance(sent, str) else sent.decode("utf-8", "replace")
    for match in _LEAK_PATTERN.finditer(text):
        if match.group(0) not in sent_text:
            return match.group(0)
    return None

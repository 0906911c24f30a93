"""The test suite's envelopes, held to docs/asyncapi.yaml (a pytest plugin: tests/conftest.py).

Every envelope that the test clients (`tests.client.Client`, the Socket.IO `SioClient`) send or
receive is validated with `jsonschema` against the payload schemas of the messages of the
matching AsyncAPI operation: what a client sends against the channel's `receive` operation,
what it receives against its `send` operation (or, for a Socket.IO acknowledgement, against the
`receive` operation's reply). One that matches none of them fails the test that sent or received
it, and the terminal summary counts them all. A native client's frames are checked when the
test's body (or its teardown) is over, off the clock of tests that time how fast clients read.

Which frames a test sent on purpose to be refused is decided by the server's own parser
(`productflo.envelopes.parse_inbound`), not guessed: a frame it accepts (or refuses only for a
rule JSON Schema cannot state, `USER_ID_MISMATCH`) must match the document, and one it refuses is
counted apart (`refused`). Of those, the ones refused for a rule the document does state (a
missing or unknown `code`, no `room_id`) must be refused by the document too, so that the
document is not looser than the server there either.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.typing import Data

from productflo.envelopes import WELCOME_MESSAGE, Inbound, parse_inbound
from productflo.errors import ErrorCode, ProtocolError

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
# What the server refuses and the document must refuse too; the other refusals are for rules
# JSON Schema cannot state (nesting depth, text PostgreSQL cannot store) or for lax types.
_STATED_REFUSALS = frozenset(
    {
        ErrorCode.MESSAGE_CODE_REQUIRED,
        ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
        ErrorCode.ROOM_ID_REQUIRED,
    }
)


class EnvelopeMismatch(AssertionError):
    """An envelope that no message of its operation describes."""


@dataclass(frozen=True)
class Message:
    name: str  # its key in components/messages
    validator: Any  # jsonschema.protocols.Validator
    codes: frozenset[str] | None  # the envelope codes it allows (None: it does not say)


@dataclass
class Contract:
    """The document's operations, each with its messages' validators."""

    document: dict[str, Any]
    _operations: dict[str, list[Message]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = DOCUMENT) -> Contract:
        return cls(yaml.safe_load(path.read_text(encoding="utf-8")))

    def messages(self, operation: str, *, reply: bool = False) -> list[Message]:
        key = f"{operation}.reply" if reply else operation
        if key not in self._operations:
            spec = self.document["operations"][operation]
            refs = (spec["reply"] if reply else spec)["messages"]
            self._operations[key] = [self.message(ref["$ref"]) for ref in refs]
        return self._operations[key]

    def message(self, ref: str) -> Message:
        """The message a `$ref` names (a channel's message names a component)."""
        target = self._resolve(ref)
        while "$ref" in target:
            ref = target["$ref"]
            target = self._resolve(ref)
        payload = target["payload"]
        assert payload["schemaFormat"].startswith("application/schema+json;version=draft-07")
        # The document's $refs inlined: validating then looks nothing up (2.5 times faster).
        schema = self._inlined(payload["schema"], ())
        validator = jsonschema.Draft7Validator(schema)
        return Message(ref.rsplit("/", 1)[-1], validator, _codes(schema))

    def kind(self, envelope: Any, operation: str) -> str | None:
        """Which message an envelope inside a Socket.IO payload is, for the census: one of the
        operation's, or the `closing` envelope only Socket.IO clients get."""
        candidates = [*self.messages(operation), self.message("#/components/messages/closing")]
        return next((m.name for m in candidates if m.validator.is_valid(envelope)), None)

    def match(self, operation: str, payload: Any, *, reply: bool = False) -> str:
        """The name of the first message of the operation that describes `payload`; raises
        EnvelopeMismatch naming what is wrong with it for the closest ones."""
        candidates = self.messages(operation, reply=reply)
        code = payload.get("code") if isinstance(payload, dict) else None
        for message in candidates:
            if message.codes is not None and code not in message.codes:
                continue
            if message.validator.is_valid(payload):
                return message.name
        raise EnvelopeMismatch(_explain(operation, payload, candidates))

    def _inlined(self, node: Any, via: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [self._inlined(item, via) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            assert ref not in via, f"a $ref cycle: {via}"
            return self._inlined(self._resolve(ref), (*via, ref))
        return {key: self._inlined(value, via) for key, value in node.items()}

    def _resolve(self, ref: str) -> Any:
        assert ref.startswith("#/"), f"only the document's own $refs: {ref}"
        node: Any = self.document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node


def _codes(schema: Any) -> frozenset[str] | None:
    """The `code`s an (inlined) envelope schema allows, where it says so (`const` or `enum`,
    through `allOf`); None where it does not, and any code may match."""
    found: frozenset[str] | None = None
    code = schema.get("properties", {}).get("code", {})
    if "const" in code:
        found = frozenset([code["const"]])
    elif "enum" in code:
        found = frozenset(code["enum"])
    for part in schema.get("allOf", []):
        narrowed = _codes(part)
        if narrowed is not None:
            found = narrowed if found is None else found & narrowed
    return found


def _explain(operation: str, payload: Any, candidates: list[Message]) -> str:
    """What each message of the same `code` and `status` finds wrong (or, when none has them,
    that none has)."""
    lines = [f"no message of AsyncAPI operation {operation} describes this envelope:"]
    lines.append(json.dumps(payload, ensure_ascii=False, default=repr)[:2000])
    close = []
    for message in candidates:
        errors = list(message.validator.iter_errors(payload))
        if not any(list(error.absolute_path)[:1] in (["code"], ["status"]) for error in errors):
            close.append((message, errors))
    if not close:
        lines.append("(no message of this operation has its code and status)")
    close.sort(key=lambda pair: len(pair[1]))
    for message, errors in close[:2]:
        for error in errors[:5]:
            where = "/".join(str(part) for part in error.absolute_path) or "(the envelope)"
            lines.append(f"  {message.name}: at {where}: {error.message[:300]}")
    return "\n".join(lines)


@cache
def contract() -> Contract:
    return Contract.load()


@dataclass
class Census:
    """What was validated during the run; what failed during the current test."""

    inbound: int = 0
    outbound: int = 0
    refused: int = 0  # inbound frames the server refuses, sent on purpose
    lenient: int = 0  # inbound frames the server takes only by converting a value's type
    seen: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    reported: int = 0  # how many of them a test has failed of
    # Checks of native frames, run when the test's body (or teardown) is over: validating costs
    # 50 to 150 us a frame, which a test that measures how fast a client reads would feel.
    pending: list[Callable[[], None]] = field(default_factory=list)

    def settle(self) -> None:
        """Run the pending checks; what they find is in `mismatches`."""
        pending, self.pending = self.pending, []
        for check in pending:
            with contextlib.suppress(EnvelopeMismatch):
                check()

    def record(self, operation: str, payload: Any, *, inbound: bool, reply: bool = False) -> None:
        try:
            name = contract().match(operation, payload, reply=reply)
        except EnvelopeMismatch as mismatch:
            self.mismatches.append(str(mismatch))
            raise
        self.seen[name] += 1
        if inbound:
            self.inbound += 1
        else:
            self.outbound += 1


census = Census()


def check_inbound(operation: str, frame: Any, connection_user: str | None) -> None:
    """A frame a client sends (an object, or its JSON text), on the operation's channel."""
    envelope = _object_of(frame)
    if envelope is None:  # not a JSON object: INVALID_JSON, and no envelope to hold to anything
        census.refused += 1
        return
    reading = _reading(envelope, connection_user)
    if reading == _STRICT:
        census.record(operation, envelope, inbound=True)
    elif reading == _LENIENT:
        census.lenient += 1
    else:
        census.refused += 1
        if reading in _STATED_REFUSALS and _described(operation, envelope):
            mismatch = (
                f"the server refuses this frame ({reading}) but AsyncAPI operation {operation}"
                f" describes it: {json.dumps(envelope, default=repr)[:2000]}"
            )
            census.mismatches.append(mismatch)
            raise EnvelopeMismatch(mismatch)


def check_outbound(operation: str, payload: Any, *, reply: bool = False) -> None:
    census.record(operation, payload, inbound=False, reply=reply)


def _object_of(frame: Any) -> dict[str, Any] | None:
    if isinstance(frame, dict):
        return frame
    try:
        parsed = json.loads(frame)
    except (TypeError, ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


_STRICT = "strict"
_LENIENT = "lenient"


def _reading(envelope: dict[str, Any], connection_user: str | None) -> str | ErrorCode:
    """How the server's parser reads the envelope: the error code it refuses it with, or
    `_STRICT` when it takes it as it is (or refuses it only for a user id JSON Schema cannot
    know), or `_LENIENT` when it takes it only by converting a value of another type (pydantic's
    lax mode: `"is_typing": 0`, `"before": "5"`), which the document leaves out of the contract."""
    try:
        frame = json.dumps(envelope, ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):
        return ErrorCode.INVALID_JSON
    user = connection_user if connection_user is not None else envelope.get("user_id")
    try:
        parse_inbound(frame, user if isinstance(user, str) else "")
    except ProtocolError as error:
        if error.error_code is not ErrorCode.USER_ID_MISMATCH:
            return error.error_code
    try:
        Inbound.model_validate_json(frame, strict=True)
    except ValidationError:
        return _LENIENT
    return _STRICT


def _described(operation: str, envelope: dict[str, Any]) -> bool:
    try:
        contract().match(operation, envelope)
    except EnvelopeMismatch:
        return False
    return True


class CheckedConnection(ClientConnection):
    """A `websockets` client connection whose every frame, both ways, is checked."""

    checked_user: str | None = None  # the welcome's, for the server's parser

    @property
    def _channel(self) -> str:
        assert self.request is not None
        return "secure" if self.request.path.startswith("/ws/secure") else "anonymous"

    async def send(self, message: Any, *, text: bool | None = None) -> None:
        if isinstance(message, str | bytes):  # frames are immutable: checked later (Census)
            operation = f"{self._channel}Receive"
            census.pending.append(partial(check_inbound, operation, message, self.checked_user))
        await super().send(message, text=text)

    async def recv(self, decode: bool | None = None) -> Data:
        frame = await super().recv(decode)
        census.pending.append(partial(_check_frame, f"{self._channel}Send", frame))
        if self.checked_user is None:
            envelope = _object_of(frame)
            if envelope is not None and _is_welcome(envelope):
                self.checked_user = envelope["user_id"]
        return frame


def _check_frame(operation: str, frame: Data) -> None:
    envelope = _object_of(frame)
    check_outbound(operation, frame if envelope is None else envelope)


def _is_welcome(envelope: dict[str, Any]) -> bool:
    data = envelope.get("data")
    return isinstance(data, dict) and data.get("message") == WELCOME_MESSAGE


class SocketIOCheck:
    """The same checks for a Socket.IO client: what it emits, its `message` events, and the
    acknowledgements its callbacks receive."""

    def __init__(self) -> None:
        self.user: str | None = None

    def emitted(self, data: Any) -> None:
        check_inbound("socketioReceive", data, self.user)
        envelope = _object_of(data)
        if envelope is not None:
            census.seen[contract().kind(envelope, "anonymousReceive") or "?"] += 1

    def event(self, payload: Any) -> None:
        """Never raises (it runs in python-socketio's handler): the test fails at its end."""
        envelope = payload.get("data") if isinstance(payload, dict) else None
        with contextlib.suppress(EnvelopeMismatch):
            check_outbound("socketioSend", payload)
            census.seen[contract().kind(envelope, "anonymousSend") or "?"] += 1
        if self.user is None and isinstance(envelope, dict) and _is_welcome(envelope):
            self.user = envelope["user_id"]

    def answered(self, answer: Any) -> None:
        if answer is not None:  # `typing` has no answer
            check_outbound("socketioReceive", answer, reply=True)
            census.seen[contract().kind(answer, "anonymousSend") or "?"] += 1


# -- the plugin ----------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    census.reported = len(census.mismatches)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a test whose envelopes broke the document even where it caught the error (or where
    a Socket.IO handler, which cannot raise into the test, met it)."""
    try:
        result = yield
    except BaseException:
        census.settle()
        _unreported()  # it failed already, of the mismatch or of something else
        raise
    census.settle()
    _fail_on(_unreported())
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """... and one whose clients met such an envelope as they closed (a Socket.IO event)."""
    result = yield
    census.settle()
    _fail_on(_unreported())
    return result


def _unreported() -> list[str]:
    found = census.mismatches[census.reported :]
    census.reported = len(census.mismatches)
    return found


def _fail_on(found: list[str]) -> None:
    if found:
        raise EnvelopeMismatch(f"{len(found)} envelope(s) broke {DOCUMENT.name}:\n" + found[0])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    total = census.inbound + census.outbound
    if total == 0 and census.refused == 0:
        return
    terminalreporter.write_line(
        f"AsyncAPI: {total:,} envelopes validated ({census.inbound:,} inbound,"
        f" {census.outbound:,} outbound) against docs/{DOCUMENT.name};"
        f" {census.refused:,} inbound frames the server refuses, {census.lenient:,} it takes only"
        " by converting a value's type (outside the contract)"
    )
    messages = contract().document["components"]["messages"]
    unseen = sorted(set(messages) - set(census.seen))
    if unseen:
        terminalreporter.write_line(f"AsyncAPI: messages no test met: {', '.join(unseen)}")
    else:
        terminalreporter.write_line(f"AsyncAPI: every one of the {len(messages)} messages was met")

"""docs/asyncapi.yaml: a valid AsyncAPI 3 document, and the check that holds the suite to it.

The envelopes themselves are checked wherever the test clients send and receive them
(tests/asyncapi.py); these tests show the document parses with the official parser and that the
check rejects what breaks it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from productflo.envelopes import InboundCode
from productflo.errors import CloseCode, ErrorCode
from tests import asyncapi
from tests.asyncapi import DOCUMENT, Contract, EnvelopeMismatch
from tests.test_seed_js import JS, node

ROOT = DOCUMENT.parent.parent
VALIDATE = JS / "asyncapi_validate.js"


def parse(path: Path) -> tuple[int, dict[str, Any]]:
    """Run @asyncapi/parser on a document: its exit code and its report."""
    if not (JS / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"@asyncapi/parser is missing: run `npm ci` in {JS}", pytrace=False)
    completed = subprocess.run(
        [node(), str(VALIDATE), str(path)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode in (0, 1), completed.stderr
    return completed.returncode, json.loads(completed.stdout)


def test_the_document_is_valid_asyncapi_3() -> None:
    code, report = parse(DOCUMENT)
    # Not a warning, not even the hint that a newer AsyncAPI 3 exists.
    assert (code, report["diagnostics"]) == (0, [])
    assert report["version"].startswith("3.")
    # /ws, /ws/secure, Socket.IO; what each receives and sends.
    assert (report["channels"], report["operations"]) == (3, 6)


def test_the_parser_refuses_a_broken_document(tmp_path: Path) -> None:
    """A message that names a schema that does not exist: the parser must say so."""
    broken = DOCUMENT.read_text(encoding="utf-8").replace(
        "$ref: '#/components/schemas/Chat'", "$ref: '#/components/schemas/NoSuchSchema'", 1
    )
    assert broken != DOCUMENT.read_text(encoding="utf-8")
    (tmp_path / "asyncapi.yaml").write_text(broken, encoding="utf-8")
    code, report = parse(tmp_path / "asyncapi.yaml")
    assert code == 1
    assert any(d["severity"] == "error" for d in report["diagnostics"]), report


def test_every_example_matches_its_message() -> None:
    """The examples in the document are envelopes too."""
    contract = asyncapi.contract()
    messages = contract.document["components"]["messages"]
    checked = 0
    for name, message in messages.items():
        for example in message.get("examples", []):
            validator = contract.message(f"#/components/messages/{name}").validator
            errors = [error.message for error in validator.iter_errors(example["payload"])]
            assert errors == [], (name, errors)
            checked += 1
    assert checked >= 15


GOOD_CHAT = {
    "status": "success",
    "code": "chat_response",
    "user_id": "user-123",
    "room_id": "product-456",
    "timestamp": "2026-11-26T10:30:45.120Z",
    "data": {"message": "hi", "sender": "user-123"},
    "event_id": 1042,
    "client_msg_id": "c-1",
}


def _broken(change: Any) -> dict[str, Any]:
    envelope = copy.deepcopy(GOOD_CHAT)
    change(envelope)
    return envelope


@pytest.mark.parametrize(
    "envelope",
    [
        _broken(lambda e: e.pop("event_id")),  # everything from the log has its position
        _broken(lambda e: e.update(event_id="1042")),
        _broken(lambda e: e.update(status="ok")),
        _broken(lambda e: e.update(timestamp="2026-11-26 10:30:45")),  # not ISO 8601 with a Z
        _broken(lambda e: e.update(room_id="a room")),  # not an id
        _broken(lambda e: e.update(surprise=True)),  # a field the document does not name
        _broken(lambda e: e["data"].update(message=5)),
        {  # an error_code the protocol does not have
            "status": "error",
            "code": "system",
            "user_id": "user-123",
            "room_id": None,
            "timestamp": "2026-11-26T10:30:45.120Z",
            "data": {"message": "x", "details": {"error_code": "OOPS", "message": "x"}},
        },
    ],
)
def test_a_known_bad_envelope_is_rejected(envelope: dict[str, Any]) -> None:
    contract = asyncapi.contract()
    assert contract.match("anonymousSend", GOOD_CHAT) == "chatMessage"
    with pytest.raises(EnvelopeMismatch, match="no message of AsyncAPI operation anonymousSend"):
        contract.match("anonymousSend", envelope)
    with pytest.raises(EnvelopeMismatch):
        contract.match("socketioSend", {"data": envelope})


def test_inbound_and_outbound_are_told_apart() -> None:
    """An outbound envelope is no inbound one, and the other way round."""
    contract = asyncapi.contract()
    inbound = {"code": "chat", "room_id": "product-456", "data": {"message": "hi"}}
    assert contract.match("secureReceive", inbound) == "chat"
    with pytest.raises(EnvelopeMismatch):
        contract.match("secureSend", inbound)
    with pytest.raises(EnvelopeMismatch):
        contract.match("secureReceive", GOOD_CHAT)
    # Socket.IO's `message` argument may be the frame's text; the server's is wrapped in `data`.
    assert contract.match("socketioReceive", json.dumps(inbound)) == "socketioMessage"
    with pytest.raises(EnvelopeMismatch):
        contract.match("socketioSend", GOOD_CHAT)


def test_a_document_looser_than_the_server_is_caught(tmp_path: Path) -> None:
    """Where the server refuses a frame for a rule the document states (here: no room_id), a
    document that takes it fails the test that sent it."""
    loose = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    loose["components"]["schemas"]["InboundEnvelopeFields"]["required"] = ["code"]
    path = tmp_path / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(loose), encoding="utf-8")
    frame = {"code": "chat", "data": {"message": "no room"}}
    strict, lax = Contract.load(DOCUMENT), Contract.load(path)
    with pytest.raises(EnvelopeMismatch):
        strict.match("anonymousReceive", frame)
    assert lax.match("anonymousReceive", frame) == "chat"


def test_a_mismatch_fails_the_test_even_when_it_is_caught(tmp_path: Path) -> None:
    """The plugin fails a test whose envelope broke the document, though the test swallowed
    the error (as a Socket.IO event handler must), or met it as it closed, and counts what it
    validated."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            from tests import asyncapi

            def pytest_configure(config):
                config.pluginmanager.register(asyncapi, "asyncapi")
            """
        ),
        encoding="utf-8",
    )
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import functools

            import pytest

            from tests import asyncapi

            GOOD = {GOOD_CHAT!r}

            def test_good():
                asyncapi.check_outbound("anonymousSend", GOOD)
                asyncapi.check_inbound("anonymousReceive", {{"code": "join", "room_id": "r"}}, "u")

            def test_bad_native_frame():
                # What CheckedConnection.recv queues: checked once the test's body is over.
                frame = '{{"status": "success", "code": "nonsense"}}'
                asyncapi.census.pending.append(
                    functools.partial(asyncapi._check_frame, "anonymousSend", frame)
                )

            def test_bad_but_caught():
                try:
                    asyncapi.check_outbound("anonymousSend", {{**GOOD, "status": "ok"}})
                except AssertionError:
                    pass

            @pytest.fixture
            def closing_client():
                yield
                try:  # as a Socket.IO event arriving while the test's clients close
                    asyncapi.check_outbound("anonymousSend", {{**GOOD, "event_id": 0}})
                except AssertionError:
                    pass

            def test_bad_as_it_closes(closing_client):
                pass
            """
        ),
        encoding="utf-8",
    )
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 1, output
    assert "2 failed, 2 passed, 1 error" in output, output
    assert "FAILED test_inner.py::test_bad_native_frame" in output, output
    assert "FAILED test_inner.py::test_bad_but_caught" in output, output
    assert "ERROR test_inner.py::test_bad_as_it_closes" in output, output
    assert "broke asyncapi.yaml" in output, output
    assert "AsyncAPI: 2 envelopes validated (1 inbound, 1 outbound)" in output, output


def test_the_protocol_guide_points_to_the_document() -> None:
    guide = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert "(asyncapi.yaml)" in guide


def test_every_error_and_close_code_is_in_the_document() -> None:
    """The document's enums are the server's own."""
    contract = asyncapi.contract()
    schemas = contract.document["components"]["schemas"]
    assert schemas["ErrorCode"]["enum"] == [str(code) for code in ErrorCode]
    assert sorted(schemas["CloseCode"]["enum"]) == sorted(int(code) for code in CloseCode)
    for channel in ("anonymous", "secure"):
        received = [message.codes for message in contract.messages(f"{channel}Receive")]
        assert all(codes is not None and len(codes) == 1 for codes in received)
        assert sorted(code for codes in received for code in codes or ()) == sorted(InboundCode)

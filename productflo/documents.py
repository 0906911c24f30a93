"""Collaborative documents (SPEC section 7): Yjs documents whose every update is an event.

Pure: no I/O. A document is the set of its updates (Yjs v1 encoding) in the room's stream;
what this module does with them is Yjs's own arithmetic, through pycrdt (the Rust `yrs`):

- `decode` checks that a client's base64 text is a Yjs update before it is appended;
- `State` folds updates into a document's merged state and answers a `doc_open`: the update a
  client's state vector lacks, and the server's state vector;
- `seeded` is the update that writes a generated document (the assistant's markdown) into a new
  document, as if a client of the server's had typed it.

Yjs merges updates in any order and any grouping to the same document, and pycrdt encodes that
document to the same bytes (`State.encoded`): a projection rebuilt over the log in batches of
another size holds byte-equal states, which the tests check.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from pycrdt import Doc, Text, get_state, get_update

from productflo.events.models import JsonObject

TEXT = "content"  # the Y.Text a document's text lives in (SPEC section 7)
TITLE_CHARS = 120
# The client id the server writes seeded documents with: the largest a Yjs client id can be
# (2^53 - 1), which no browser's random 32-bit id takes.
SERVER_CLIENT_ID = 2**53 - 1
# Awareness updates go between processes in a NOTIFY payload (under 8,000 bytes): a cursor and
# a user's name and colour take a few hundred characters.
MAX_AWARENESS_CHARS = 4096


class NotAnUpdate(ValueError):
    """Text that is not a base64 Yjs update (or state vector)."""


def decode(text: str, *, limit: int) -> bytes:
    """The bytes of a base64 Yjs update, checked to decode as one and to be at most `limit`
    bytes long, or NotAnUpdate saying what is wrong."""
    raw = _base64(text, "update")
    if len(raw) > limit:
        raise NotAnUpdate(f"data.update is {len(raw)} bytes; the limit is {limit}")
    try:
        Doc().apply_update(raw)
    except ValueError:
        raise NotAnUpdate("data.update is not a Yjs update (v1 encoding)") from None
    return raw


def decode_state_vector(text: str) -> bytes:
    raw = _base64(text, "state_vector")
    try:
        get_update(b"\x00\x00", raw)
    except ValueError:
        raise NotAnUpdate("data.state_vector is not a Yjs state vector") from None
    return raw


def decode_awareness(text: str) -> bytes:
    """The bytes of a base64 awareness update (y-protocols' encoding, relayed as it is)."""
    return _base64(text, "update")


def encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NotAnUpdate(f"data.{field} must be base64") from None


class State:
    """One document's merged state, folded from its updates in log order."""

    def __init__(self, encoded: bytes | None = None) -> None:
        self._doc: Doc[Any] = Doc()
        if encoded:
            self._doc.apply_update(encoded)

    def apply(self, updates: Iterable[bytes]) -> None:
        for update in updates:
            self._doc.apply_update(update)

    @property
    def encoded(self) -> bytes:
        """The whole document as one update: the same bytes for the same updates, however
        they were grouped or ordered."""
        return self._doc.get_update()

    @property
    def state_vector(self) -> bytes:
        return self._doc.get_state()

    @property
    def text(self) -> str:
        return str(self._doc.get(TEXT, type=Text))

    def change(self, update: bytes) -> list[JsonObject]:
        """Apply `update`; return what it did to the text, as a Yjs delta
        (`[{"retain": 5}, {"insert": "abc"}, {"delete": 2}]`): who changed what, for the audit."""
        deltas: list[JsonObject] = []
        content = self._doc.get(TEXT, type=Text)
        subscription = content.observe(lambda event: deltas.extend(event.delta))
        try:
            self._doc.apply_update(update)
        finally:
            content.unobserve(subscription)
        return [dict(delta) for delta in deltas]

    def missing(self, state_vector: bytes | None) -> bytes:
        """What a client with `state_vector` lacks (everything when it has none)."""
        if state_vector is None:
            return self.encoded
        return get_update(self.encoded, state_vector)


def seeded(text: str) -> bytes:
    """The update that writes `text` into a new document's content."""
    doc: Doc[Any] = Doc(client_id=SERVER_CLIENT_ID)
    content = doc.get(TEXT, type=Text)
    content += text
    return doc.get_update()


def title_of(text: str) -> str:
    """A document's title: its first line that has words, markdown heading marks dropped."""
    for line in text.splitlines():
        words = line.strip().lstrip("#").strip()
        if words:
            return words[:TITLE_CHARS]
    return ""


def state_vector_of(update: bytes) -> bytes:
    """The state vector of an encoded document (what a client that applied it has)."""
    return get_state(update)

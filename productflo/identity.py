"""Who an anonymous connection may say it is: the user-id rules both transports apply to /ws.

A connection without a token names its user (query, header, cookie, or Socket.IO auth) or is
given a generated id. Pure: no I/O.
"""

from __future__ import annotations

import re
import uuid

from productflo.ai.prompts import ASSISTANT_ID

_ANONYMOUS_ID = re.compile(r"^[A-Za-z0-9_.@:+|=~\-]{1,128}$")
# Ids nobody may claim without a token: the assistant's answers come from "haitch".
RESERVED_IDS = frozenset({ASSISTANT_ID})


def id_problem(named: str) -> str | None:
    """Why an anonymous connection may not call itself `named`; None when it may."""
    if not _ANONYMOUS_ID.match(named):
        return "user_id is not a valid id"
    if named.lower() in RESERVED_IDS:
        return f"user_id {named!r} is reserved"
    return None


def generated_user_id() -> str:
    """The id of an anonymous connection that named none."""
    return f"anon-{uuid.uuid4().hex[:16]}"

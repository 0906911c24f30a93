"""JSON text as the server takes it, and text as PostgreSQL can store it. Pure: no I/O.

`decode_object` is the one step by which an inbound frame becomes Python values (SPEC section 6):

- bytes that are not UTF-8, text that is not JSON, `NaN`, `Infinity`, `-Infinity`, numbers a
  double cannot hold (`1e400`, an integer of 400 digits) and any JSON value but an object are
  `INVALID_JSON`;
- nesting deeper than `MAX_DEPTH` levels (however deep: the parser's own recursion limit included)
  and text PostgreSQL cannot store, anywhere in the frame (raw or as a JSON escape such as
  `\\u0000`, keys included), are `INVALID_MESSAGE`. A raw NUL is looked for before the JSON: it
  is text PostgreSQL cannot store before it is anything else.

`is_storable` is the one rule on what PostgreSQL can store: no U+0000 (neither `text` nor `jsonb`
can hold it) and no lone surrogate (no UTF-8 encoding exists for one). The decoder applies it to
every frame, the event store to every event, so that no event's content can fail a batch.
`storable` escapes what breaks the rule, for the audit of refused frames.

`describe` tells a pydantic validation error in our own words: never a class name, a pattern or
the input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from productflo.errors import ErrorCode, ProtocolError

__all__ = ["MAX_DEPTH", "decode_object", "describe", "is_storable", "safe_location", "storable"]

MAX_DEPTH: Final = 32
"""The deepest nesting a frame may have: the envelope object is level 1, its `data` level 2, a
list inside `data` level 3, and so on. A frame with an object or list at level 33 is refused."""

Echo = Callable[[dict[str, Any]], str | None]

_NOT_JSON = "The message is not valid JSON"
_NOT_FINITE = "The message is not valid JSON: numbers must be finite and fit in a double"
_TOO_DEEP = f"The message is nested deeper than {MAX_DEPTH} levels"
_UNSTORABLE = "Text may not contain NUL characters or lone surrogates"

# A double holds up to about 1.8e308: an integer literal shorter than this many characters (a
# sign included) is below 1e308, so only longer ones need the exact check.
_SHORT_INT = 309
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
_CONTAINERS = (dict, list, tuple)


class _NotFinite(ValueError):
    """A number JSON cannot carry (raised from inside the parser by its hooks)."""


def _parse_constant(name: str) -> Any:
    raise _NotFinite(name)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # NaN is only reachable through `NaN`, which _parse_constant refuses
        raise _NotFinite(text)
    return value


def _parse_int(text: str) -> int:
    if len(text) < _SHORT_INT:
        return int(text)
    try:
        value = int(text)  # over 4,300 digits Python refuses too: a ValueError
        float(value)
    except (OverflowError, ValueError):
        raise _NotFinite(text) from None
    return value


_DECODER = json.JSONDecoder(
    parse_float=_parse_float,
    parse_int=_parse_int,
    parse_constant=_parse_constant,
    strict=True,
)


def decode_object(frame: str | bytes, *, echo: Echo | None = None) -> dict[str, Any]:
    """The JSON object a frame holds, or ProtocolError (INVALID_JSON or INVALID_MESSAGE).

    `echo` picks the `client_msg_id` a refusal of a parsed object carries (it sees the object
    before its depth and text are checked, so it must check what it returns)."""
    try:
        text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.INVALID_JSON, _NOT_JSON) from None
    if not _storable_text(text):  # a raw NUL (not JSON either), or a str frame's lone surrogate
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, _UNSTORABLE)
    try:
        value = _DECODER.decode(text)
    except _NotFinite:
        raise ProtocolError(ErrorCode.INVALID_JSON, _NOT_FINITE) from None
    except RecursionError:  # nested deeper than the parser goes: far beyond MAX_DEPTH
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, _TOO_DEEP) from None
    except ValueError:  # JSONDecodeError
        raise ProtocolError(ErrorCode.INVALID_JSON, _NOT_JSON) from None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "The message must be a JSON object")
    # The text holds no raw NUL or surrogate (checked above): only a \u escape can put one in a
    # decoded string, and no value can nest deeper than the text has brackets. Most frames have
    # no escape and few brackets: they skip the walk.
    if "\\u" not in text and text.count("{") + text.count("[") <= MAX_DEPTH:
        return value
    problem = _problem(value, MAX_DEPTH)
    if problem is not None:
        client_msg_id = echo(value) if echo is not None else None
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, problem, client_msg_id=client_msg_id)
    return value


def is_storable(value: object) -> bool:
    """True when PostgreSQL can store `value` verbatim: a string without U+0000 or a lone
    surrogate, or JSON data (dicts, lists, tuples) whose every key and string is one and whose
    every number is finite."""
    return _problem(value, None) is None


_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def encode(value: object) -> bytes:
    """`value` as compact JSON, UTF-8 (orjson, some ten times as fast as the standard library,
    which still writes what orjson refuses: integers past 64 bits, keys that are not strings).
    Check `is_storable` first: orjson writes a non-finite number as null. Dates and dataclasses
    are refused, as the standard library refuses them, not written as orjson would."""
    try:
        return orjson.dumps(value, option=_STRICT)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def decode_stored(text: str) -> Any:
    """JSON text as PostgreSQL gives it back (a jsonb column), as Python values, read as the
    standard library reads it, about twice as fast: orjson, whose result is kept unless it holds
    a float, which may be an integer past 64 bits that orjson read as one (the standard library
    keeps it exact); then, and for what only the standard library reads (a lone surrogate's
    escape), the standard library."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    return json.loads(text) if _holds_float(value) else value


def _holds_float(value: object) -> bool:
    # Loops, not any(): this runs for every column read from the log.
    if type(value) is dict:
        for item in value.values():
            if _holds_float(item):
                return True
    elif type(value) is list:
        for item in value:
            if _holds_float(item):
                return True
    return type(value) is float


def encode_text(value: object) -> str:
    """`encode` as a str (a query parameter's text)."""
    return encode(value).decode()


def storable(text: str) -> str:
    """`text` with what PostgreSQL cannot store escaped visibly (U+0000 as the six characters
    `\\u0000`, a lone surrogate as `\\ud800`); `text` itself when it can be stored. Nothing else
    is escaped, backslashes included: for audit, not a reversible encoding."""
    if _storable_text(text):
        return text
    return _UNSTORABLE_CHARACTER.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _storable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")  # fails on a lone surrogate, and only then
    except UnicodeEncodeError:
        return False
    return True


def _problem(value: object, max_depth: int | None) -> str | None:
    """Why `value` cannot be taken (too deep, text that cannot be stored), or None.

    Iterative, so that no nesting can exhaust the stack."""
    if isinstance(value, str):
        return None if _storable_text(value) else _UNSTORABLE
    if not isinstance(value, _CONTAINERS):
        return None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if max_depth is not None and depth > max_depth:
            return _TOO_DEEP
        if isinstance(node, dict):
            if not all(_storable_text(key) for key in node if isinstance(key, str)):
                return _UNSTORABLE
            node = node.values()
        for item in node:
            if isinstance(item, str):
                if not _storable_text(item):
                    return _UNSTORABLE
            elif isinstance(item, _CONTAINERS):
                stack.append((item, depth + 1))
            elif isinstance(item, float) and not math.isfinite(item):
                return _NOT_FINITE  # only built by the server: a client's is refused as it parses
    return None


# -- validation errors, in our own words ------------------------------------------------------

# By pydantic error type. Only numeric bounds are taken from an error's context: they are the
# server's own constraints, never the client's input.
_BY_TYPE: Final[Mapping[str, str]] = {
    "missing": "{where} is required",
    "string_type": "{where} must be a string",
    "string_too_short": "{where} must be at least {min_length} characters",
    "string_too_long": "{where} must be at most {max_length} characters",
    "string_pattern_mismatch": "{where} is not in the accepted format",
    "int_type": "{where} must be an integer",
    "int_parsing": "{where} must be an integer",
    "int_parsing_size": "{where} must be an integer",
    "int_from_float": "{where} must be an integer",
    "float_type": "{where} must be a number",
    "float_parsing": "{where} must be a number",
    "finite_number": "{where} must be a finite number",
    "bool_type": "{where} must be true or false",
    "bool_parsing": "{where} must be true or false",
    "greater_than": "{where} must be greater than {gt}",
    "greater_than_equal": "{where} must be at least {ge}",
    "less_than": "{where} must be less than {lt}",
    "less_than_equal": "{where} must be at most {le}",
    "dict_type": "{where} must be an object",
    "model_type": "{where} must be an object",
    "model_attributes_type": "{where} must be an object",
    "list_type": "{where} must be a list",
    "too_short": "{where} must have at least {min_length} items",
    "too_long": "{where} must have at most {max_length} items",
    "datetime_type": "{where} must be an ISO 8601 date and time",
    "datetime_parsing": "{where} must be an ISO 8601 date and time",
    "datetime_from_date_parsing": "{where} must be an ISO 8601 date and time",
    "datetime_object_invalid": "{where} must be an ISO 8601 date and time",
    "enum": "{where} is not one of the accepted values",
    "literal_error": "{where} is not one of the accepted values",
    "uuid_type": "{where} must be a UUID",
    "uuid_parsing": "{where} must be a UUID",
    "json_invalid": "{where} is not valid JSON",
    "extra_forbidden": "{where} is not accepted here",
}
_BOUNDS = ("gt", "ge", "lt", "le", "min_length", "max_length")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")


def describe(error: Mapping[str, object], rules: Mapping[str, str] | None = None) -> str:
    """One pydantic error (an item of `ValidationError.errors()`) as a message for a client.

    `rules` maps a field (its dotted location without list indexes, e.g. `data.limit`) to the
    whole rule it breaks, told whatever the error type; other fields get a message by type."""
    location = safe_location(error.get("loc"))
    field = ".".join(str(part) for part in location if isinstance(part, str))
    if rules is not None and field in rules:
        return rules[field]
    where = ".".join(str(part) for part in location) or "message"
    error_type = error.get("type")
    if error_type == "value_error":
        told = _validator_message(error)
        if told is not None:
            return told
    template = _BY_TYPE.get(error_type, "") if isinstance(error_type, str) else ""
    context = error.get("ctx")
    bounds = {
        key: bound
        for key in _BOUNDS
        if isinstance(context, Mapping)
        and isinstance(bound := context.get(key), int | float)
        and not isinstance(bound, bool)
    }
    try:
        return template.format(where=where, **bounds) if template else f"{where} is not valid"
    except KeyError:  # a bound the template names is missing from this error's context
        return f"{where} is not valid"


def _validator_message(error: Mapping[str, object]) -> str | None:
    """What one of our validators said (a ValueError it raised), unless it quotes the input."""
    context = error.get("ctx")
    raised = context.get("error") if isinstance(context, Mapping) else None
    if isinstance(raised, ValueError):
        message = str(raised)
    else:
        msg = error.get("msg")
        message = msg.removeprefix("Value error, ") if isinstance(msg, str) else ""
    given = error.get("input")
    quoted = isinstance(given, str) and given != "" and given in message
    return message if message and not quoted and is_storable(message) else None


def safe_location(loc: object) -> list[str | int]:
    """The parts of a pydantic error location that name fields or list indexes; anything else
    (a dict key the client chose, a validator's tag) is left out."""
    if not isinstance(loc, list | tuple):
        return []
    return [
        part
        for part in loc
        if (isinstance(part, int) and not isinstance(part, bool))
        or (isinstance(part, str) and _NAME.fullmatch(part))
    ]

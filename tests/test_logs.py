"""No secret in any log line: the filter on its own, then a real `productflo serve` whose output
is read for the tokens it was handed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from productflo.auth import mint
from productflo.database import DatabaseUrl
from productflo.logs import JsonFormatter, RedactSecrets, bind, config, redact
from productflo.settings import Settings
from tests.client import Client
from tests.test_processes import _environment, _ready, launch  # noqa: F401

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ1c2VyLTEyMyIsImV4cCI6MTk5OTk5OTk5OX0"
    ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
)
SECRET = "s3cr3t-value"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger `redaction` whose handler is set up as `productflo.logs.config()` sets one up,
    and what that handler printed."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(config()["formatters"]["text"]["format"]))
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"GET /ws/secure?access_token={SECRET}", "GET /ws/secure?access_token=[redacted]"),
        (f"/r?room=a&token={SECRET}&limit=5", "/r?room=a&token=[redacted]&limit=5"),
        (f'"GET /r?api_key={SECRET} HTTP/1.1" 200', '"GET /r?api_key=[redacted] HTTP/1.1" 200'),
        (f"/r?key={SECRET}&password={SECRET}", "/r?key=[redacted]&password=[redacted]"),
        (f"/r?Secret={SECRET}", "/r?Secret=[redacted]"),
        (f"/r?access%5Ftoken={SECRET}", "/r?access%5Ftoken=[redacted]"),
        (f"host=db password={SECRET} user=u", "host=db password=[redacted] user=u"),
        (f"Authorization: Bearer {SECRET}", "Authorization: Bearer [redacted]"),
        (f"token {JWT} refused", "token [redacted] refused"),
        (f"postgresql://app:{SECRET}@db/productflo", "postgresql://app:[redacted]@db/productflo"),
    ],
)
def test_secrets_are_redacted(line: str, expected: str) -> None:
    assert redact(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "/rooms/r/messages?before=10&limit=5",
        "/r?monkey=1&keys=2&token_count=3",
        "replay of 10 events for user=alice in room=design",
        "Application startup complete.",
        "Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)",
        "postgresql://postgres:@/productflo?host=/tmp/pgdata",
        "http://h:8000/?from=a@b",
    ],
)
def test_what_is_not_a_secret_is_left_alone(line: str) -> None:
    assert redact(line) == line


def test_a_record_with_arguments_is_redacted_once_formatted(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = logged
    logger.info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/ws/secure?access_token={JWT}"
    )
    assert out.getvalue().endswith(
        ' INFO redaction: 127.0.0.1:5000 - "WebSocket /ws/secure?access_token=[redacted]"'
        " [accepted]\n"
    )


def test_a_record_from_a_child_logger_is_redacted_by_the_parents_handler(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    _, out = logged
    logging.getLogger("redaction.child").warning("Bearer %s", JWT)
    assert "WARNING redaction.child: Bearer [redacted]" in out.getvalue()
    assert JWT not in out.getvalue()


def test_a_traceback_is_kept_and_redacted(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged

    def connect() -> None:
        raise ConnectionError(f"refused: ws://h/ws/secure?access_token={JWT}")

    try:
        connect()
    except ConnectionError:
        logger.exception("could not connect with %s", f"token={SECRET}")
    text = out.getvalue()
    assert "ERROR redaction: could not connect with token=[redacted]\n" in text
    assert "Traceback (most recent call last):" in text
    assert "in connect\n" in text
    assert "ConnectionError: refused: ws://h/ws/secure?access_token=[redacted]" in text
    assert JWT not in text and SECRET not in text


def _log_with_stack(logger: logging.Logger, token: str) -> None:
    logger.info("here", stack_info=True)


def test_a_stack_is_redacted(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    # The stack shows this source line, and so the token in it.
    _log_with_stack(logger, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln")
    assert "Stack (most recent call last):" in out.getvalue()
    assert '_log_with_stack(logger, "[redacted]")' in out.getvalue()
    assert "eyJzdWIiOiJ4In0" not in out.getvalue()


def test_arguments_that_do_not_fit_are_still_redacted(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = logged
    logger.info("%s and %s", f"password={SECRET}")
    assert "password=[redacted]" in out.getvalue()
    assert SECRET not in out.getvalue()


# -- productflo serve ----------------------------------------------------------------------------

ACCEPTED = re.compile(
    r'^\S+ \S+ INFO uvicorn\.error: 127\.0\.0\.1:\d+ - "WebSocket /ws/secure\?access_token='
    r'\[redacted\]" \[accepted\]$',
    re.MULTILINE,
)
ACCESS = re.compile(
    r'^\S+ \S+ INFO uvicorn\.access: 127\.0\.0\.1:\d+ - "GET /rooms/r/messages\?access_token='
    r'\[redacted\] HTTP/1\.1" 200$',
    re.MULTILINE,
)


@pytest.mark.slow
async def _connect_and_request_with_a_token(
    server: Any, env: dict[str, str], tmp_path: Path, user: str
) -> str:
    """Once the server is ready: a secure connection and an HTTP request, each with a token in
    its query (and the request in its Authorization header); then the server stopped. The token."""
    await _ready(server)
    settings = Settings(data_dir=tmp_path / "data", jwt_secret=env["PRODUCTFLO_JWT_SECRET"])
    token = mint(settings, user)
    client = await Client.open(f"{server.ws}/ws/secure?access_token={token}")
    assert client.user_id == user
    await client.close()
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(
            f"/rooms/r/messages?access_token={token}",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    assert await asyncio.to_thread(server.stop)
    return token


@pytest.mark.anyio
@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_logs_requests_without_their_tokens(
    launch: Any,  # noqa: F811
    database_url: DatabaseUrl,
    tmp_path: Path,
    workers: int,
) -> None:
    """The access and WebSocket lines are there, with `access_token=[redacted]`; with --workers
    they are printed by worker processes, which configure logging for themselves."""
    env = _environment(database_url, tmp_path)
    server = launch(env, "--no-migrate", "--workers", str(workers))
    token = await _connect_and_request_with_a_token(server, env, tmp_path, "log-user")

    output = server.output_so_far()
    assert ACCEPTED.search(output), output
    assert ACCESS.search(output), output
    signature = token.rsplit(".", 1)[1]
    assert signature not in output, output


@pytest.mark.anyio
async def test_json_lines_carry_the_connection_a_task_works_for_and_no_secret() -> None:
    """PRODUCTFLO_LOG_FORMAT=json: one object a line, redacted as the text lines are, with the
    connection and user `bind` named for the task that logged, and for the tasks it started."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("json-lines")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def session() -> None:
        bind(connection_id="c1", user_id="alice")
        logger.info("opened with access_token=%s", SECRET)
        await asyncio.create_task(_log_later(logger))

    try:
        await asyncio.create_task(session())
        logger.info("outside any session")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "opened with access_token=[redacted]",
        "from a task the session started",
        "outside any session",
    ]
    assert [(line.get("connection_id"), line.get("user_id")) for line in lines] == [
        ("c1", "alice"),
        ("c1", "alice"),
        (None, None),
    ]
    assert all(line["level"] == "INFO" and line["logger"] == "json-lines" for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)


async def _log_later(logger: logging.Logger) -> None:
    logger.info("from a task the session started")


@pytest.mark.anyio
async def test_serve_with_json_logs_prints_only_json_lines(
    launch: Any,  # noqa: F811
    database_url: DatabaseUrl,
    tmp_path: Path,
) -> None:
    """Every line `productflo serve` prints, uvicorn's access lines included, is one JSON
    object; a secure connection's token is redacted in them."""
    env = {**_environment(database_url, tmp_path), "PRODUCTFLO_LOG_FORMAT": "json"}
    server = launch(env, "--no-migrate")
    token = await _connect_and_request_with_a_token(server, env, tmp_path, "json-user")

    output = server.output_so_far()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert any(line["logger"] == "uvicorn.access" for line in lines), output
    assert any("access_token=[redacted]" in line["message"] for line in lines), output
    assert token.rsplit(".", 1)[1] not in output, output

"""The HTTP API fuzzed from its own OpenAPI document (schemathesis): no 5xx for any input.

The live server's `/openapi.json` is loaded by schemathesis, which generates requests for every
operation, both ones that fit the schema and ones that do not (wrong types, out of range, extra
parameters), sent with an admin token and with a user token. Every answer must be below 500
(`not_a_server_error`) and no refusal may show internals (tests/fuzz/frames.py's `leaked`). The
log is seeded first with what makes pages interesting: chats, a mention, deep nesting within the
limit, and refused frames (NUL, lone surrogates) whose audit keeps them escaped.

`PRODUCTFLO_FUZZ_EXAMPLES` scales the examples per operation, token and mode (tests/fuzz/tally.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from productflo.auth import mint
from tests.conftest import ServerThread
from tests.fuzz.frames import leaked
from tests.fuzz.harness import TIMEOUT, Closed, NativeConnection
from tests.fuzz.tally import examples, tally

HTTP_SHARE = 5  # an HTTP example per this many WebSocket batches (each is several frames)
SEED_FRAMES = (
    '{"code":"chat","room_id":"fz-h","data":{"message":"hello @fz-http-user"},"client_msg_id":"1"}',
    '{"code":"chat","room_id":"fz-h","data":{"message":"n","n":' + "[" * 28 + "]" * 28 + "}}",
    '{"code":"chat","room_id":"fz-h","data":{"message":"nul \\u0000"}}',
    '{"code":"chat\\ud800","room_id":"fz-h"}',
    '{"code":"history","room_id":"fz-h","data":{"before":1e400}}',
    '{"code":"chat","room_id":"fz-h","data":{"n":' + "[" * 500 + "]" * 500 + "}}",
    '{"code":"chat","room_id":"fz-h","data":{"message":"\\ud83d\\ude00 \u2028 \u202e"},'
    '"client_msg_id":"2"}',
)


def http_examples() -> int:
    return max(10, examples() // HTTP_SHARE)


async def seed(server: ServerThread) -> None:
    """Events for the pages to hold; waits for the last acknowledgement, so all are logged."""
    client = await NativeConnection.open(server.ws + "/ws?user_id=fz-seed", {})
    for frame in SEED_FRAMES:
        await client._ws.send(frame)
    async with asyncio.timeout(TIMEOUT):
        while True:
            item = await client.next(TIMEOUT)
            assert not isinstance(item, Closed), item
            if item[0].get("client_msg_id") == "2":
                break
    await client.close()


def fuzz_operation(
    server: ServerThread, operation: Any, token: str, mode: GenerationMode
) -> Callable[[], None]:
    """A Hypothesis test of one operation: its requests sent with the token, answers checked."""
    counts = tally("http")
    headers = {"Authorization": f"Bearer {token}"}

    @settings(
        max_examples=http_examples(),
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=server.http, headers=headers, timeout=TIMEOUT)
        counts.frames += 1
        counts.answers[str(response.status_code)] += 1
        if response.status_code >= 500:
            counts.server_errors += 1
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code < 400:
            return  # what an operation is for (/metrics names the server's internals on purpose)
        sent = json.dumps([case.path_parameters, case.query, case.body], default=str)
        found = leaked(response.text, sent)
        if found is not None:
            counts.leaks += 1
            raise AssertionError(f"{found!r} in {response.text[:400]}")

    return fuzz


def test_http_api_answers_no_input_with_a_server_error(start_server: Any) -> None:
    server: ServerThread = start_server()
    asyncio.run(seed(server))
    counts = tally("http")
    schema = schemathesis.openapi.from_url(server.http + "/openapi.json")
    tokens = {
        "admin": mint(server.settings, "fz-http-admin", admin=True),
        "user": mint(server.settings, "fz-http-user"),
    }
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the OpenAPI document lists no operation"
    for operation in operations:
        for who, token in tokens.items():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz = fuzz_operation(server, operation, token, mode)
                try:
                    fuzz()
                except Unsatisfiable:
                    continue  # nothing to get wrong: the operation takes no parameter (negative)
                except Exception as failure:
                    description = f"{operation.label} ({who} token, {mode.value}): {failure}"
                    failures.append(description[:3000])
                    counts.failures.append(description[:500])
    print("\n".join(counts.lines("http")))
    assert not failures, "\n\n".join(failures)


def test_http_integer_parameters_past_64_bits_are_4xx(start_server: Any) -> None:
    """The bounds SPEC section 6 names, each tried by hand: 4xx, never a 5xx."""
    server: ServerThread = start_server()
    admin = {"Authorization": f"Bearer {mint(server.settings, 'fz-http-admin', admin=True)}"}
    user = {"Authorization": f"Bearer {mint(server.settings, 'fz-http-user')}"}
    values = ["1" + "0" * 30, str(2**63), str(2**64), "-" + "9" * 25, "1e400", "NaN", "1" * 5000]
    requests = [
        ("GET", "/rooms/fz-h/messages", "before", user),
        ("GET", "/rooms/fz-h/messages", "limit", user),
        ("GET", "/admin/events", "after", admin),
        ("GET", "/admin/events", "limit", admin),
        ("GET", "/users/me/notifications", "limit", user),
    ]
    counts = tally("http bounds")
    answered: list[str] = []
    with httpx.Client(base_url=server.http, timeout=TIMEOUT) as http:
        for method, path, name, headers in requests:
            for value in values:
                response = http.request(method, path, params={name: value}, headers=headers)
                counts.frames += 1
                counts.answers[str(response.status_code)] += 1
                if not 400 <= response.status_code < 500:
                    counts.server_errors += response.status_code >= 500
                    answered.append(f"{path}?{name}={value[:40]}: {response.status_code}")
        for value in values:
            response = http.post(
                "/users/me/notifications/read", content=f'{{"up_to": {value}}}', headers=user
            )
            counts.frames += 1
            counts.answers[str(response.status_code)] += 1
            if not 400 <= response.status_code < 500:
                counts.server_errors += response.status_code >= 500
                answered.append(f"POST read up_to={value[:40]}: {response.status_code}")
    print("\n".join(counts.lines("http bounds")))
    assert not answered, answered

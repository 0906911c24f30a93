"""Property-based fuzz of /ws, /ws/secure and Socket.IO against a live server (SPEC section 6).

Each test starts a real server over real PostgreSQL and lets Hypothesis send it batches of
random and mutated frames (tests/fuzz/frames.py) through one connection, checking after every
frame and batch what tests/fuzz/harness.py lists: exactly one SPEC answer or a SPEC close, the
server alive, no internals shown; and at the end that every acknowledged event is in the log.

The server runs with a rate limit out of reach, so that the fuzz tests decoding, not the limiter
(tests/test_ratelimit.py does that), and a frame limit of 256 KiB, so that nesting 100,000 deep
fits in a frame while larger frames still meet the limit (1009).

Runs are repeatable (derandomized). `PRODUCTFLO_FUZZ_EXAMPLES` sets the number of batches per
transport (tests/fuzz/tally.py); `make fuzz` runs 20 times the default. The counts are printed
in the terminal summary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from productflo.auth import mint
from tests.conftest import ServerThread
from tests.fuzz.frames import Context, drafts
from tests.fuzz.harness import (
    TIMEOUT,
    Closed,
    Connection,
    Harness,
    NativeConnection,
    ServerErrors,
    SocketIOConnection,
)
from tests.fuzz.tally import examples, tally

MAX_BYTES = 2**18
RATE = 1_000_000.0
BATCH_SIZE = 6
ROOMS = ("fz-a", "fz-b", "fz-c")
SECURE_ROOM = "fz-secure"
OTHER_USER = "fz-someone-else"


def fuzz_settings() -> settings:
    return settings(
        max_examples=examples(),
        derandomize=True,  # the same frames on every run: a failure in CI reproduces locally
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


def fuzz_server(start_server: Any) -> ServerThread:
    server: ServerThread = start_server(rate_limit=RATE, max_message_bytes=MAX_BYTES)
    return server


def run_fuzz(
    name: str,
    server: ServerThread,
    ctx: Context,
    open_connection: Callable[[str], Awaitable[Connection]],
    probe: Callable[[], Awaitable[Connection]],
    prefix: str,
) -> None:
    counts = tally(name)
    errors = ServerErrors(server.thread.ident)
    with errors.installed(), asyncio.Runner() as runner:

        async def start() -> Harness:
            http = httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT)
            return Harness(
                name=name,
                ctx=ctx,
                open_connection=open_connection,
                probe=probe,
                http=http,
                admin_token=mint(server.settings, "fz-ops", admin=True),
                max_bytes=MAX_BYTES,
                tally=counts,
                errors_logged=errors,
                prefix=prefix,
            )

        harness = runner.run(start())

        def unreadable(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # The client's own reader failing (python-socketio decodes packets in tasks).
            error = context.get("exception")
            what = f"{type(error).__name__}: {error}" if error else context.get("message")
            harness.problem("wrong", None, f"the client could not read what it got: {what}")

        runner.get_loop().set_exception_handler(unreadable)

        @fuzz_settings()
        @given(batch=st.lists(drafts(ctx), min_size=1, max_size=BATCH_SIZE))
        def fuzz(batch: list[Any]) -> None:
            note("\n".join(repr(draft) for draft in batch))
            runner.run(harness.run_batch(batch))

        try:
            fuzz()
        finally:
            problems = runner.run(harness.finish())
            runner.run(harness.http.aclose())
            print("\n".join(counts.lines(name)))
    assert not problems, "\n".join(problems)
    assert not counts.failed(), "\n".join(counts.lines(name))


async def open_secure_room(server: ServerThread, room: str) -> None:
    """Use the room from /ws/secure first: it is closed to anonymous connections for good."""
    token = mint(server.settings, "fz-owner")
    owner = await NativeConnection.open(
        server.ws + "/ws/secure", {"Authorization": f"Bearer {token}"}
    )
    await owner._ws.send(json.dumps({"code": "join", "room_id": room, "client_msg_id": "own"}))
    async with asyncio.timeout(TIMEOUT):
        while True:
            item = await owner.next(TIMEOUT)
            assert not isinstance(item, Closed), item
            if item[0].get("client_msg_id") == "own":
                assert item[0]["status"] == "success", item
                break
    await owner.close()


def test_anonymous_endpoint_answers_every_fuzzed_frame(start_server: Any) -> None:
    server = fuzz_server(start_server)
    asyncio.run(open_secure_room(server, SECURE_ROOM))
    ctx = Context(ROOMS, (SECURE_ROOM,), OTHER_USER, MAX_BYTES)
    run_fuzz(
        "/ws",
        server,
        ctx,
        lambda user: NativeConnection.open(server.ws + f"/ws?user_id={user}", {}),
        lambda: NativeConnection.open(server.ws + "/ws?user_id=fz-probe", {}),
        "ws",
    )


def test_secure_endpoint_answers_every_fuzzed_frame(start_server: Any) -> None:
    """A token whose `rooms` claim names fz-s-*: other rooms answer FORBIDDEN."""
    server = fuzz_server(start_server)
    probe_token = mint(server.settings, "fz-probe")
    ctx = Context(("fz-s-a", "fz-s-b"), ("fz-outside",), OTHER_USER, MAX_BYTES)

    def bearer(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(server.settings, user, rooms=['fz-s-*'])}"}

    run_fuzz(
        "/ws/secure",
        server,
        ctx,
        lambda user: NativeConnection.open(server.ws + "/ws/secure", bearer(user)),
        lambda: NativeConnection.open(
            server.ws + "/ws/secure", {"Authorization": f"Bearer {probe_token}"}
        ),
        "wss",
    )


def test_socketio_answers_every_fuzzed_frame(start_server: Any) -> None:
    """Frames emitted as `message` (strings and bytes, as the client sent them), and the other
    packets a client can emit: reserved event names, extra arguments, none."""
    server = fuzz_server(start_server)
    asyncio.run(open_secure_room(server, SECURE_ROOM))
    ctx = Context(ROOMS, (SECURE_ROOM,), OTHER_USER, MAX_BYTES, socketio=True)
    run_fuzz(
        "socket.io",
        server,
        ctx,
        lambda user: SocketIOConnection.open(server.http, {"User-ID": user}),
        lambda: SocketIOConnection.open(server.http, {"User-ID": "fz-probe"}),
        "sio",
    )

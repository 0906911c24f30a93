"""The official Yjs and pycrdt edit one document together (issue 15's first test): two Node
editors (tests/js/yjs_editor.mjs, the vendored yjs) and a pycrdt one type at random positions at
once through two `productflo serve` processes on one database, one Node editor offline for part
of it; all three converge on the text of the projection, before and after it is rebuilt."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pycrdt import Decoder
from pydantic import SecretStr

from productflo.auth import mint
from productflo.database import DatabaseUrl
from productflo.documents import State
from productflo.projections.documents import Documents
from productflo.settings import Settings
from tests.client import Client
from tests.events import running_store
from tests.test_cli import run
from tests.test_documents import DOC, ROOM, Editor, b64
from tests.test_processes import _environment, _ready, launch  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JS = Path(__file__).resolve().parent / "js"
EDITOR = JS / "yjs_editor.mjs"
TIMEOUT = 30.0
EDITS = 40  # by each editor in each of the three rounds


def clocks(state_vector: bytes) -> dict[int, int]:
    """A Yjs state vector decoded: each client's next clock."""
    decoder = Decoder(state_vector)
    entries = decoder.read_var_uint()
    return dict((decoder.read_var_uint(), decoder.read_var_uint()) for _ in range(entries))


def covers(have: bytes, target: bytes) -> bool:
    held = clocks(have)
    return all(held.get(client, 0) >= clock for client, clock in clocks(target).items())


class NodeEditor:
    """tests/js/yjs_editor.mjs in a process of its own, one command answered at a time."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.process = process
        self.stderr = stderr

    async def do(self, command: str, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"do": command, **arguments}).encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)
        answer: dict[str, Any] = json.loads(line) if line else {"error": "exited"}
        assert "error" not in answer, f"{answer['error']}\n{self.stderr.read_text()}"
        return answer


@asynccontextmanager
async def node_editor(user: str, seed: int, directory: Path) -> AsyncIterator[NodeEditor]:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "ws").is_dir():
        pytest.fail("needs node and tests/js/node_modules (`make test`, or `npm ci` in tests/js)")
    stderr = directory / f"{user}.stderr"
    with stderr.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            node,
            str(EDITOR),
            user,
            ROOM,
            DOC,
            str(seed),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    try:
        yield NodeEditor(process, stderr)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


class LiveEditor(Editor):
    """A pycrdt editor that reads while it types: the others' updates applied as they come, its
    own acknowledged by their echo (each sent with a client_msg_id)."""

    def __init__(self, client: Client, rng: random.Random) -> None:
        super().__init__(client)
        self.rng = rng
        self.unacked: set[str] = set()
        self.errors: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._failure: Exception | None = None

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """While the block runs, what comes is applied (and a failure to read fails the waits)."""
        task = asyncio.create_task(self._read())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])

    async def _read(self) -> None:
        try:
            while True:
                self._take(await self.client.recv(timeout=3 * TIMEOUT))
                async with self._changed:
                    self._changed.notify_all()
        except Exception as error:
            self._failure = error
            async with self._changed:
                self._changed.notify_all()
            raise

    def _take(self, message: dict[str, Any]) -> None:
        if message["status"] == "error":
            self.errors.append(message)
        elif message["code"] == "doc_update" and message["data"]["doc_id"] == self.doc_id:
            self.receive(message)
            if message["user_id"] == self.client.user_id:
                self.unacked.discard(message.get("client_msg_id", ""))

    async def _until(self, done: Callable[[], bool]) -> None:
        def checked() -> bool:
            if self._failure is not None:
                raise AssertionError(f"the pycrdt editor stopped reading: {self._failure!r}")
            return done()

        async with self._changed:
            await self._changed.wait_for(checked)

    async def edit(self, edits: int) -> dict[str, int]:
        """`edits` small edits at random positions, each sent as it is made; what was typed."""
        inserted = 0
        for _ in range(edits):
            if len(self.text) >= 2 and self.rng.random() < 0.2:
                length = self.rng.randint(1, 2)
                start = self.rng.randint(0, len(self.text) - length)
                del self.text[start : start + length]
            else:
                chars = "".join(self.rng.choices("0123456789", k=self.rng.randint(1, 3)))
                self.text.insert(self.rng.randint(0, len(self.text)), chars)
                inserted += len(chars)
            [update] = self.outgoing
            self.outgoing.clear()
            self.sent += 1
            client_msg_id = f"{self.client.user_id}-{self.sent}"
            self.unacked.add(client_msg_id)
            await self.client.send(
                {
                    "code": "doc_update",
                    "room_id": self.room,
                    "client_msg_id": client_msg_id,
                    "data": {"doc_id": self.doc_id, "update": b64(update)},
                }
            )
            await asyncio.sleep(self.rng.random() * 0.004)  # pace, as the Node editors do
        return {"updates": edits, "inserted": inserted}

    async def holding(self, target: State) -> dict[str, Any]:
        """Once its updates are acknowledged and it holds all of `target`, a document that
        holds all of it: its state. (A state vector counts insertions only; the deletions of
        `target` are all in once the text is the same too.)"""

        def done() -> bool:
            covered = covers(self.doc.get_state(), target.state_vector)
            return not self.unacked and covered and str(self.text) == target.text

        await self._until(done)
        return {"text": str(self.text), "errors": self.errors}

    async def acknowledged(self) -> None:
        await self._until(lambda: not self.unacked)


async def _converge(nodes: list[NodeEditor], pycrdt: LiveEditor) -> State:
    """Wait until every editor holds what all of them hold now, every update acknowledged;
    that merged document."""
    target = State()
    target.apply(
        [base64.b64decode((await node.do("state"))["update"]) for node in nodes]
        + [pycrdt.doc.get_update()]
    )
    async with asyncio.timeout(TIMEOUT):
        held = await asyncio.gather(
            *(node.do("await", **_holding(target)) for node in nodes), pycrdt.holding(target)
        )
    assert [editor["text"] for editor in held] == [target.text] * len(held)
    assert [editor["errors"] for editor in held] == [[]] * len(held)
    return target


def _holding(target: State) -> dict[str, str]:
    """The arguments of a Node editor's `await` for `target`."""
    return {"state_vector": b64(target.state_vector), "text": target.text}


async def _column(database: DatabaseUrl, query: str) -> list[Any]:
    connection = await asyncpg.connect(database.dsn)
    try:
        return [row[0] for row in await connection.fetch(query)]
    finally:
        await connection.close()


DOC_UPDATE_USERS = (
    "SELECT metadata->>'user_id' FROM events WHERE type = 'doc_update' ORDER BY position"
)
SNAPSHOT_THROUGH = "SELECT snapshot_through FROM documents"
CAUGHT_UP = """
    SELECT (SELECT position FROM projection_checkpoints WHERE name = 'documents')
           >= (SELECT max(position) FROM events)
"""


async def _projected(database: DatabaseUrl) -> None:
    """Wait for the servers' documents projection to reach the end of the log (it has no
    event to wait for: read its checkpoint until it does, within TIMEOUT)."""
    async with asyncio.timeout(TIMEOUT):
        while await _column(database, CAUGHT_UP) != [True]:
            await asyncio.sleep(0.05)


async def _current(database: DatabaseUrl) -> tuple[bytes, str, int]:
    """The documents projection's document: its encoded state, text and version."""
    async with running_store(database) as store:
        document = await Documents.current(store, ROOM, DOC, await store.head())
    return document.state.encoded, document.state.text, document.version


async def test_yjs_and_pycrdt_editors_converge_through_two_processes_one_offline_for_a_while(
    launch: Callable[..., Any],  # noqa: F811
    database_url: DatabaseUrl,
    tmp_path: Path,
) -> None:
    env = _environment(database_url, tmp_path)
    one, two = launch(env, "--no-migrate"), launch(env, "--no-migrate")
    await _ready(one, two)
    seed = random.randrange(2**32)
    print(f"seed {seed}")  # shown when it fails: the same choices of edits again
    async with (
        node_editor("ana", seed, tmp_path) as ana,
        node_editor("ben", seed + 1, tmp_path) as ben,
    ):
        cy = LiveEditor(await Client.open(two.ws + "/ws?user_id=cy"), random.Random(seed + 2))
        await ana.do("connect", url=one.ws)
        await ben.do("connect", url=two.ws)
        await cy.open()
        try:
            async with cy.reading():
                await _edit_offline_and_converge(two.ws, ana, ben, cy)
                final = await _converge([ana, ben], cy)
                stopped = [await editor.do("stop") for editor in (ana, ben)]
        finally:
            await cy.client.close()
    assert [*(editor["text"] for editor in stopped), str(cy.text)] == [final.text] * 3
    assert all(covers(base64.b64decode(e["state_vector"]), final.state_vector) for e in stopped)

    users = await _column(database_url, DOC_UPDATE_USERS)
    assert sorted(set(users)) == ["ana", "ben", "cy"] and len(users) == 9 * EDITS
    # Editors taking turns would switch about ten times (ben's offline edits go in one run);
    # these take turns every few edits.
    switches = sum(a != b for a, b in itertools.pairwise(users))
    print(f"{switches} switches between editors in {len(users)} updates")
    assert switches >= 40, f"the edits hardly interleaved: {switches} switches"

    settings = Settings(jwt_secret=SecretStr(env["PRODUCTFLO_JWT_SECRET"]))
    headers = {"Authorization": f"Bearer {mint(settings, 'reader')}"}
    async with httpx.AsyncClient(base_url=one.url) as http:
        served = (await http.get(f"/rooms/{ROOM}/docs/{DOC}", headers=headers)).json()
    assert served["text"] == final.text and served["version"] == len(users)
    encoded, text, version = await _current(database_url)
    assert text == final.text and version == len(users)

    await _projected(database_url)
    [live_snapshot] = await _column(database_url, SNAPSHOT_THROUGH)
    rebuilt = await asyncio.to_thread(run, env, "projections", "rebuild", "documents")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert await _column(database_url, SNAPSHOT_THROUGH) != [live_snapshot], "the same snapshot"
    assert await _current(database_url) == (encoded, text, version), "not byte-equal"


async def _edit_offline_and_converge(
    ben_url: str, ana: NodeEditor, ben: NodeEditor, cy: LiveEditor
) -> None:
    """Three rounds of concurrent edits; ben is offline for the second and resumes with its
    state vector, receiving exactly what it lacked."""
    await asyncio.gather(ana.do("type", edits=EDITS), ben.do("type", edits=EDITS), cy.edit(EDITS))
    await _converge([ana, ben], cy)  # ben lacks nothing when he drops

    await ben.do("drop")
    typed = await asyncio.gather(
        ana.do("type", edits=EDITS), cy.edit(EDITS), ben.do("type", edits=EDITS)
    )
    async with asyncio.timeout(TIMEOUT):
        ana_id = (await ana.do("await"))["client_id"]  # acknowledged
        await cy.acknowledged()
    resumed = await ben.do("connect", url=ben_url)
    _assert_exactly_what_was_lacked(resumed, typed[:2], {str(ana_id), str(cy.doc.client_id)})

    await asyncio.gather(ana.do("type", edits=EDITS), ben.do("type", edits=EDITS), cy.edit(EDITS))


def _assert_exactly_what_was_lacked(
    resumed: dict[str, Any], typed: Sequence[dict[str, Any]], others: set[str]
) -> None:
    """The doc_sync of a reopening after the drop holds the others' edits made meanwhile and
    nothing more: per client, the clocks from ben's state vector to the server's, which add up
    to the characters the others typed; the same text as Yjs's own diff of what the replay
    brought; and the replay had each of their updates once."""
    assert resumed["overlapping"] == 0, "the sync held structs ben had"
    assert resumed["ranges"] == resumed["lacked"], resumed
    assert set(resumed["lacked"]) == others
    lacked = sum(r["clocks"] for r in resumed["lacked"].values())
    assert lacked == sum(t["inserted"] for t in typed), "inserted characters"
    assert resumed["replayed"] == sum(t["updates"] for t in typed)
    assert resumed["replayed_users"] == ["ana", "cy"]
    assert resumed["text_synced"] == resumed["text_expected"] == resumed["text_replayed"]
    assert resumed["sync_bytes"] < resumed["whole_bytes"]

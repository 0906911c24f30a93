"""Acknowledged but lost at a failover: kill -9 the primary under load, promote its standby, and
count the acknowledged messages the new primary does not hold (or holds at another position),
with a synchronous standby and with an asynchronous one (issue 16; docs/deployment.md).

    .venv/bin/python -m bench.standby_loss [--runs 5] [--clients 8] [--window 16] [--kill-at 600]

Each run builds its own pair on loopback (tests/replication.py: the embedded wheel's initdb and
pg_basebackup -R), migrated; `asynchronous` then clears the primary's
synchronous_standby_names and waits until it reports the standby `async`. One `productflo serve`
is given both hosts (target_session_attrs=read-write); --clients native clients each keep
--window chats in flight, and once --kill-at have been acknowledged the primary's postmaster is
killed with -9 and the standby promoted. An acknowledgement is the client's own chat_response,
carrying the event id it was stored at: lost means the new primary has no chat with that
client_msg_id at that position. A synchronous standby must lose none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from productflo import migrate
from tests import replication
from tests.test_processes import Server, _environment

ROOM = "failover"
TIMEOUT = 120.0  # for --kill-at acknowledgements: a server that takes none fails the run


class Acks:
    """Each acknowledged chat's event id, by client_msg_id; `reached` once `target` are in."""

    def __init__(self, target: int) -> None:
        self.positions: dict[str, int] = {}
        self.target = target
        self.reached = asyncio.Event()

    def record(self, key: str, position: int) -> None:
        self.positions[key] = position
        if len(self.positions) >= self.target:
            self.reached.set()


async def _client(url: str, user: str, window: int, acked: Acks, stop: asyncio.Event) -> None:
    """Send chats with `window` unanswered at most until `stop`; record each acknowledgement."""
    async with connect(f"{url}/ws?user_id={user}") as socket:
        await socket.recv()  # the welcome
        room = asyncio.Semaphore(window)

        async def read() -> None:
            with_ids = f"{user}-"
            try:
                async for raw in socket:
                    message = json.loads(raw)
                    echo = message.get("client_msg_id") or ""
                    if message["code"] == "chat_response" and echo.startswith(with_ids):
                        acked.record(echo, message["event_id"])
                        room.release()
                    elif message.get("status") == "error":
                        room.release()
            except ConnectionClosed:
                pass

        reading = asyncio.create_task(read())
        sent = 0
        try:
            while not stop.is_set():
                try:
                    async with asyncio.timeout(0.05):  # the window full: look at `stop` again
                        await room.acquire()
                except TimeoutError:
                    continue
                chat = {"code": "chat", "room_id": ROOM, "client_msg_id": f"{user}-{sent}",
                        "data": {"message": str(sent)}}  # fmt: skip
                await socket.send(json.dumps(chat))
                sent += 1
        except ConnectionClosed:
            pass  # the server's database went away under it
        finally:
            reading.cancel()


async def _make_asynchronous(primary: replication.Node) -> None:
    connection = await asyncpg.connect(primary.url("postgres").dsn)
    try:
        await connection.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        await connection.execute("SELECT pg_reload_conf()")
        while True:  # the primary says so once its walsender has taken the new setting
            state = await connection.fetchval("SELECT sync_state FROM pg_stat_replication")
            if state == "async":
                return
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def _stored(node: replication.Node) -> dict[str, int]:
    connection = await asyncpg.connect(node.url().dsn)
    try:
        rows = await connection.fetch(
            "SELECT metadata->>'client_msg_id' AS m, position FROM events WHERE type = 'chat'"
        )
    finally:
        await connection.close()
    return {row["m"]: row["position"] for row in rows}


async def one_run(synchronous: bool, options: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    with replication.primary_and_standby() as pair:
        await replication.create_database(pair)
        await replication.wait_for_synchronous_standby(pair.primary)
        await asyncio.to_thread(migrate.upgrade, pair.primary.url())
        if not synchronous:
            await _make_asynchronous(pair.primary)
        server = Server(_environment(pair.url(), scratch), "--no-migrate")
        try:
            await asyncio.to_thread(server.wait_ready)
            acked = Acks(options.kill_at)
            stop = asyncio.Event()
            clients = [
                asyncio.create_task(_client(server.ws, f"u{n}", options.window, acked, stop))
                for n in range(options.clients)
            ]
            async with asyncio.timeout(TIMEOUT):
                await acked.reached.wait()
            await asyncio.to_thread(pair.primary.kill)
            stop.set()
            await asyncio.gather(*clients)
            await asyncio.to_thread(pair.standby.promote)
            stored = await _stored(pair.standby)
        finally:
            server.output()  # kills it
    acknowledged = acked.positions
    lost = [key for key, position in acknowledged.items() if stored.get(key) != position]
    return {"synchronous": synchronous, "acknowledged": len(acknowledged), "lost": len(lost)}


async def main_async(options: argparse.Namespace) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="productflo-standby-loss-") as directory:
        for n in range(options.runs):
            for synchronous in (n % 2 == 0, n % 2 == 1):  # which goes first alternates
                result = await one_run(synchronous, options, Path(directory) / f"{n}-{synchronous}")
                print(json.dumps(result), flush=True)
                runs.append(result)
    summary = {}
    for synchronous in (True, False):
        lost = [r["lost"] for r in runs if r["synchronous"] is synchronous]
        summary["synchronous" if synchronous else "asynchronous"] = {
            "runs": len(lost),
            "lost_per_run": lost,
            "runs_that_lost": sum(1 for n in lost if n),
            "median_lost": statistics.median(lost),
        }
    return {"options": vars(options), "runs": runs, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--kill-at", type=int, default=600)
    parser.add_argument("--output", type=Path, default=Path("bench/results/standby_loss.json"))
    options = parser.parse_args()
    result = asyncio.run(main_async(options))
    options.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()

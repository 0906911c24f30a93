// A scripted editor of one collaborative document: the official Yjs (the vendored module the web
// client uses) in Node, speaking the native protocol (docs/protocol.md, "Collaborative
// documents") over `ws`. tests/test_documents_yjs.py drives it.
//
//   node yjs_editor.mjs USER_ID ROOM_ID DOC_ID SEED
//
// Control: one JSON command a line on stdin, each answered by one JSON line on stdout, in order
// (a failure prints {"error": ...} and exits 1):
//
//   {"do": "connect", "url": "ws://127.0.0.1:PORT"}  connect, open the document, send the outbox.
//       After a drop it resumes: last_event_id and log_id, the replay's doc_updates held until
//       the document is reopened with its state vector; answered with what that sync held.
//   {"do": "type", "edits": N}    N small edits at random positions, one update each, sent as they
//       are made when connected (kept in the outbox when not); answered {updates, inserted}.
//   {"do": "drop"}                the network goes: the socket is terminated (close 1006).
//   {"do": "await", "state_vector": B64, "text": T}   answered once every update of ours is
//       acknowledged and the document holds everything of that state vector and reads T (a state
//       vector counts insertions only; the others' deletions are in when the text is the same).
//       With neither: once every update of ours is acknowledged.
//   {"do": "state"} / {"do": "stop"}       what it holds (stop: then exits 0).

import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import * as Y from '../../productflo/static/vendor/yjs.mjs';

const [user, room, docId, seedText] = process.argv.slice(2);
const WELCOME = 'Connected to ProductFlo WebSocket server';
const REMOTE = 'remote'; // the origin of what the server sent: not an edit of ours
const ALPHABET = user.toUpperCase().slice(0, 1) + user.slice(1, 3); // readable in a diff

const doc = new Y.Doc();
const text = doc.getText('content');
const outbox = new Map(); // client_msg_id -> base64 update, until the server echoes it
const errors = [];
const waiters = new Set();
let socket = null;
let synced = false; // the document has been (re)opened on this connection
let welcome = null;
let replaying = false;
let held = [];
let sync = null;
let lastEventId = null;
let sent = 0;

// mulberry32: the same edits for the same seed, so a failure can be run again.
let seed = Number(seedText) >>> 0;
function random() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const below = (n) => Math.floor(random() * n);

function until(check) {
  if (check()) return Promise.resolve();
  return new Promise((resolve) => waiters.add({ check, resolve }));
}

function changed() {
  for (const waiter of [...waiters]) {
    if (waiter.check()) {
      waiters.delete(waiter);
      waiter.resolve();
    }
  }
}

function send(message) {
  socket.send(JSON.stringify(message));
}

function sendUpdate(id, update) {
  send({ code: 'doc_update', room_id: room, client_msg_id: id, data: { doc_id: docId, update } });
}

doc.on('update', (update, origin) => {
  if (origin === REMOTE) return;
  const id = `${user}-${++sent}`;
  outbox.set(id, Y.toBase64(update));
  if (synced) sendUpdate(id, outbox.get(id));
});

function applyRemote(message) {
  Y.applyUpdate(doc, Y.fromBase64(message.data.update), REMOTE);
  if (message.user_id === user) outbox.delete(message.client_msg_id);
}

function receive(message) {
  if (Number.isInteger(message.event_id)) lastEventId = Math.max(lastEventId ?? 0, message.event_id);
  const details = message.data?.details ?? {};
  if (message.status === 'error') errors.push(message);
  else if (message.code === 'system' && message.data?.message === WELCOME) welcome = details;
  else if (message.code === 'system' && details.replay_complete) replaying = false;
  else if (message.code === 'doc_sync' && message.data.doc_id === docId) sync = message;
  else if (message.code === 'doc_update' && message.data.doc_id === docId) {
    if (replaying || !synced) held.push(message);
    else applyRemote(message);
  }
  changed();
}

async function connect(url) {
  const resuming = lastEventId !== null;
  const resume = resuming ? `&last_event_id=${lastEventId}&log_id=${welcome.log_id}` : '';
  welcome = null;
  sync = null;
  held = [];
  replaying = resuming;
  socket = new WebSocket(`${url}/ws?user_id=${encodeURIComponent(user)}${resume}`);
  socket.on('message', (raw) => receive(JSON.parse(raw.toString())));
  socket.on('close', () => {
    synced = false;
    changed();
  });
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  await until(() => welcome !== null && !replaying);
  const before = Y.encodeStateAsUpdate(doc);
  const stateVector = Y.encodeStateVector(doc);
  const data = { doc_id: docId };
  if (resuming) data.state_vector = Y.toBase64(stateVector);
  send({ code: 'doc_open', room_id: room, client_msg_id: `${user}-open-${sent}`, data });
  await until(() => sync !== null);
  const report = resuming ? measure(before, stateVector, sync, held) : {};
  Y.applyUpdate(doc, Y.fromBase64(sync.data.update), REMOTE);
  synced = true;
  for (const message of held) applyRemote(message);
  held = [];
  for (const [id, update] of outbox) sendUpdate(id, update);
  return { ...report, event_id: sync.event_id, version: sync.data.version };
}

// What a resumed doc_sync held, measured against the state vector it was opened with:
// the clock ranges of its structs per client (the server's state vector minus ours, when it is
// exactly what we lacked), and the text it gives next to what Yjs itself computes we lacked of
// the document the replay brought (Y.encodeStateAsUpdate(replayed, ours)).
function measure(before, stateVector, sync, replayed) {
  const update = Y.fromBase64(sync.data.update);
  const ours = Y.decodeStateVector(stateVector);
  const servers = Y.decodeStateVector(Y.fromBase64(sync.data.state_vector));
  const ranges = {};
  let overlapping = 0;
  for (const struct of Y.decodeUpdate(update).structs) {
    const { client, clock } = struct.id;
    if (clock < (ours.get(client) ?? 0)) overlapping += 1;
    const range = (ranges[client] ??= { from: clock, to: clock, clocks: 0 });
    range.from = Math.min(range.from, clock);
    range.to = Math.max(range.to, clock + struct.length);
    range.clocks += struct.length;
  }
  const lacked = {};
  for (const [client, clock] of servers) {
    const had = ours.get(client) ?? 0;
    if (clock > had) lacked[client] = { from: had, to: clock, clocks: clock - had };
  }
  const server = copy(before);
  for (const message of replayed) Y.applyUpdate(server, Y.fromBase64(message.data.update));
  const opened = copy(before);
  Y.applyUpdate(opened, update);
  const expected = copy(before);
  Y.applyUpdate(expected, Y.encodeStateAsUpdate(server, stateVector));
  return {
    ranges,
    lacked,
    overlapping,
    sync_bytes: update.length,
    whole_bytes: Y.encodeStateAsUpdate(opened).length,
    replayed: replayed.length,
    replayed_users: [...new Set(replayed.map((m) => m.user_id))].sort(),
    text_synced: opened.getText('content').toString(),
    text_expected: expected.getText('content').toString(),
    text_replayed: server.getText('content').toString(),
  };
}

function copy(update) {
  const clone = new Y.Doc();
  Y.applyUpdate(clone, update);
  return clone;
}

async function type(edits) {
  let inserted = 0;
  for (let i = 0; i < edits; i++) {
    if (text.length >= 2 && random() < 0.2) {
      const length = 1 + below(2);
      text.delete(below(text.length - length + 1), length);
    } else {
      const length = 1 + below(3);
      let chars = '';
      for (let j = 0; j < length; j++) chars += ALPHABET[below(ALPHABET.length)];
      text.insert(below(text.length + 1), chars);
      inserted += length;
    }
    // Let the others' updates in between (and ours out): the edits interleave.
    await new Promise((resolve) => setTimeout(resolve, below(4)));
  }
  return { updates: edits, inserted };
}

function covers(target) {
  const have = Y.decodeStateVector(Y.encodeStateVector(doc));
  return [...target].every(([client, clock]) => (have.get(client) ?? 0) >= clock);
}

function state() {
  return {
    client_id: doc.clientID,
    text: text.toString(),
    state_vector: Y.toBase64(Y.encodeStateVector(doc)),
    update: Y.toBase64(Y.encodeStateAsUpdate(doc)),
    unacked: outbox.size,
    last_event_id: lastEventId,
    errors,
  };
}

async function drop() {
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.terminate();
  await closed;
  return {};
}

async function handle(command) {
  switch (command.do) {
    case 'connect':
      return connect(command.url);
    case 'type':
      return type(command.edits);
    case 'drop':
      return drop();
    case 'await': {
      const target = Y.decodeStateVector(Y.fromBase64(command.state_vector ?? 'AA=='));
      const reads = () => command.text === undefined || text.toString() === command.text;
      await until(() => synced && outbox.size === 0 && covers(target) && reads());
      return state();
    }
    case 'state':
      return state();
    case 'stop':
      socket?.close();
      return state();
    default:
      throw new Error(`unknown command ${JSON.stringify(command)}`);
  }
}

function reply(answer) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(answer) + '\n', resolve));
}

let queue = Promise.resolve();
createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line);
  queue = queue
    .then(() => handle(command))
    .then(reply)
    .then(() => command.do === 'stop' && process.exit(0))
    .catch(async (error) => {
      await reply({ error: String(error?.stack ?? error) });
      process.exit(1);
    });
});

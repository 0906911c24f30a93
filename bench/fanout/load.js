// The fan-out benchmark's load generator: one design for every server.
//
//   node load.js CONFIG_JSON
//
// The Python orchestrator (bench/fanout/__main__.py) starts several of these, one per core's worth
// of clients, and talks to each over its standard streams, one JSON object a line:
//
//   fanout mode: connect every client, have each join its room and wait for its own join to come
//   back, print {"event": "ready"}; read {"start_at": EPOCH_MS}; from that moment send the chats
//   (all at once, or paced); print {"event": "result", ...} once every client has received every
//   message of its room, or once deliveries have stalled; read {"close": true}, close, exit.
//
//   idle mode: read {"open": N}, bring the number of open connections to N, each welcomed, print
//   {"event": "opened", ...}; read {"close": true} (or end of input), close, exit.
//
// Transports: "ws" (the `ws` package, for productflo and the naive server on /ws), "socketio"
// (socket.io-client, websocket transport only, for the Node Socket.IO server) and
// "socketio-productflo" (socket.io-client the same way, on productflo's Socket.IO endpoint at /ws,
// with its framing: docs/protocol.md). Every chat's text starts with its sequence number and the
// sender's send time (performance.timeOrigin + performance.now(), ms), which every server returns
// as is, so each receiver measures delivery latency and each sender its acknowledgement latency
// (its own copy). Whole rooms live in one process, so a latency is always read on the clock it
// was written with.

'use strict';

const readline = require('node:readline');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

const config = JSON.parse(process.argv[2]);
const TEXT = 'Has anyone reviewed the latest design update? The enclosure tolerances changed.';
const SETUP_TIMEOUT_MS = 30000;
// Latencies are counted in buckets 1 % wide (bucket k holds values near 1.01^k ms), so that the
// orchestrator can pool the processes' histograms and read percentiles to within 1 %.
const BUCKET_BASE = Math.log(1.01);

function now() {
  return performance.timeOrigin + performance.now();
}

function emit(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

function bucket(histogram, ms) {
  const key = Math.round(Math.log(Math.max(ms, 0.001)) / BUCKET_BASE);
  histogram[key] = (histogram[key] || 0) + 1;
}

// -- connections: one shape over every transport -------------------------------------------------

// A client: `send(envelope)`, `close()`, `onEnvelope` and `onClose` (set by its owner), and
// `ready`, a promise that resolves once the server has welcomed it. `transport` is its socket's
// `send` and `close`.
function newClient(user, transport) {
  const client = {
    user,
    closed: false,
    onEnvelope: () => {},
    onClose: () => {},
    send: transport.send,
    close: () => { client.closed = true; transport.close(); },
  };
  return client;
}

// productflo welcomes a connection with its first envelope, or refuses it with an error envelope:
// `ready` waits for that one, and every envelope after it goes to `onEnvelope`. The transport
// calls `envelope` for each envelope it receives and `failed` when it fails or closes.
function awaitWelcome(client) {
  let welcomed = false;
  const hooks = {};
  client.ready = new Promise((resolve, reject) => {
    hooks.envelope = (envelope) => {
      if (welcomed) { client.onEnvelope(envelope); return; }
      welcomed = true;
      if (envelope.status === 'error') reject(new Error(`refused: ${JSON.stringify(envelope)}`));
      else resolve(client);
    };
    hooks.failed = (error) => { if (!welcomed) reject(error); };
  });
  return hooks;
}

// `ws` on productflo's (or the naive server's) /ws, the user in the query. No compression
// offered, as a Socket.IO client's default, unless BENCH_CLIENT_DEFLATE=1 (to measure
// PRODUCTFLO_WS_COMPRESSION=1 with clients that take it, as browsers do).
const DEFLATE = process.env.BENCH_CLIENT_DEFLATE === '1';
function connectWs(user) {
  const socket = new WebSocket(`${config.url}?user_id=${encodeURIComponent(user)}`, {
    perMessageDeflate: DEFLATE,
  });
  const client = newClient(user, {
    send: (envelope) => socket.send(JSON.stringify(envelope)),
    close: () => socket.terminate(),
  });
  const welcome = awaitWelcome(client);
  socket.on('message', (data) => welcome.envelope(JSON.parse(data.toString())));
  socket.on('error', welcome.failed);
  socket.on('close', (code) => {
    welcome.failed(new Error(`closed ${code} before the welcome`));
    if (!client.closed) client.onClose(code);
  });
  return client;
}

function socketIo(options) {
  return io(config.url, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    timeout: SETUP_TIMEOUT_MS,
    ...options,
  });
}

// socket.io-client on the plain Node Socket.IO server (server.js): events `join` and `message`,
// the envelope as their argument; connected is ready.
function connectSocketIo(user) {
  const socket = socketIo({ query: { user_id: user } });
  const client = newClient(user, {
    send: (envelope) => socket.emit(envelope.code === 'join' ? 'join' : 'message', envelope),
    close: () => socket.disconnect(),
  });
  socket.on('message', (envelope) => client.onEnvelope(envelope));
  client.ready = new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(client));
    socket.once('connect_error', reject);
  });
  socket.on('disconnect', (reason) => { if (!client.closed) client.onClose(reason); });
  return client;
}

// socket.io-client on productflo's Socket.IO endpoint (docs/protocol.md): path /ws, the user in
// the User-ID header, one event `message` both ways, the server's argument {data: envelope}, and
// the welcome first, as on /ws.
function connectProductfloSocketIo(user) {
  const socket = socketIo({ path: '/ws', extraHeaders: { 'User-ID': user } });
  const client = newClient(user, {
    send: (envelope) => socket.emit('message', envelope),
    close: () => socket.disconnect(),
  });
  const welcome = awaitWelcome(client);
  socket.on('message', (payload) => welcome.envelope(payload.data));
  socket.once('connect_error', welcome.failed);
  socket.on('disconnect', (reason) => {
    welcome.failed(new Error(`disconnected (${reason}) before the welcome`));
    if (!client.closed) client.onClose(reason);
  });
  return client;
}

const CONNECT = {
  ws: connectWs,
  socketio: connectSocketIo,
  'socketio-productflo': connectProductfloSocketIo,
};
const connect = CONNECT[config.transport];
if (connect === undefined) throw new Error(`unknown transport ${config.transport}`);

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// At most `limit` of `tasks` (functions returning promises) at a time; their results in order.
async function bounded(tasks, limit) {
  const results = new Array(tasks.length);
  let next = 0;
  async function worker() {
    while (next < tasks.length) {
      const index = next++;
      results[index] = await tasks[index]();
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}

// -- fan-out ----------------------------------------------------------------------------------

// One member of a room: what it must receive (every message of every member, itself included,
// exactly once) and what it did receive.
class Member {
  constructor(client, room, members, messages, tally) {
    this.client = client;
    this.room = room;
    this.tally = tally;
    this.messages = messages;
    this.expected = members.length * messages;
    this.unique = 0;
    this.seen = new Map(members.map((user) => [user, new Uint8Array(messages + 1)]));
    this.sent = 0;
  }

  receive(envelope) {
    const tally = this.tally;
    if (envelope.status === 'error') { tally.errors += 1; return; }
    if (envelope.code !== 'chat_response' || envelope.room_id !== this.room) return;
    const arrived = now();
    const text = envelope.data.message;
    const space = text.indexOf(' ');
    const seq = Number(text.slice(0, space));
    const sentAt = Number(text.slice(space + 1, text.indexOf(' ', space + 1)));
    const seen = this.seen.get(envelope.user_id);
    if (seen === undefined || !(seq >= 1 && seq <= this.messages)) { tally.unexpected += 1; return; }
    if (seen[seq]++ > 0) { tally.duplicates += 1; return; }
    this.unique += 1;
    tally.deliveries += 1;
    tally.lastDelivery = arrived;
    bucket(tally.delivery, arrived - sentAt);
    if (envelope.user_id === this.client.user) bucket(tally.ack, arrived - sentAt);
  }

  sendNext() {
    this.sent += 1;
    const sentAt = now();
    this.client.send({
      code: 'chat',
      room_id: this.room,
      data: { message: `${this.sent} ${sentAt.toFixed(3)} ${TEXT}` },
    });
    return sentAt;
  }
}

function newTally() {
  return {
    deliveries: 0, duplicates: 0, unexpected: 0, errors: 0, disconnects: 0, close_codes: {},
    firstSend: null, lastSend: null, lastDelivery: null, delivery: {}, ack: {}, lateness: {},
  };
}

async function joinRoom(client, room) {
  const joined = new Promise((resolve, reject) => {
    client.onEnvelope = (envelope) => {
      if (envelope.status === 'error') reject(new Error(`join refused: ${JSON.stringify(envelope)}`));
      const details = (envelope.data && envelope.data.details) || {};
      if (envelope.code === 'system' && envelope.room_id === room && details.action === 'join'
          && envelope.user_id === client.user) resolve();
    };
  });
  client.send({ code: 'join', room_id: room });
  await withTimeout(joined, SETUP_TIMEOUT_MS, `${client.user} joining ${room}`);
}

async function setUp(tally) {
  const members = [];
  for (const { room, users } of config.rooms) {
    for (const entry of users) members.push({ room, users: users.map((u) => u.user), ...entry });
  }
  const joinedMembers = await bounded(members.map((m) => async () => {
    const client = await withTimeout(connect(m.user).ready, SETUP_TIMEOUT_MS, `${m.user} connecting`);
    await joinRoom(client, m.room);
    const member = new Member(client, m.room, m.users, config.messages, tally);
    member.index = m.index;
    client.onClose = (code) => {
      tally.disconnects += 1;
      tally.close_codes[code] = (tally.close_codes[code] || 0) + 1;
    };
    return member;
  }), config.connect_concurrency || 50);
  for (const member of joinedMembers) {
    member.client.onEnvelope = (envelope) => member.receive(envelope);
  }
  return joinedMembers;
}

function sendAllAtOnce(members, tally) {
  // Flat out: every client sends its next message, round after round, yielding to the event loop
  // between rounds so that receiving goes on meanwhile.
  let round = 0;
  function nextRound() {
    round += 1;
    for (const member of members) {
      const sentAt = member.sendNext();
      if (tally.firstSend === null) tally.firstSend = sentAt;
      tally.lastSend = sentAt;
    }
    if (round < config.messages) setImmediate(nextRound);
  }
  nextRound();
}

function sendPaced(members, tally, startAt) {
  // Message j of the whole run (over every process) is due at startAt + j / rate: client g sends
  // its k-th at j = k * clients + g. Members are ordered by g, so the dues come in order.
  const perMs = config.rate / 1000;
  const total = config.total_clients;
  const ordered = [...members].sort((a, b) => a.index - b.index);
  let k = 0;
  let i = 0;
  function due() { return startAt + (k * total + ordered[i].index) / perMs; }
  function tick() {
    const moment = now();
    while (k < config.messages && due() <= moment) {
      const late = moment - due();
      const sentAt = ordered[i].sendNext();
      bucket(tally.lateness, late);
      if (tally.firstSend === null) tally.firstSend = sentAt;
      tally.lastSend = sentAt;
      i += 1;
      if (i === ordered.length) { i = 0; k += 1; }
    }
    if (k < config.messages) setTimeout(tick, Math.max(0, due() - now()));
  }
  tick();
}

async function fanout(commands) {
  const tally = newTally();
  const began = now();
  const members = await setUp(tally);
  emit({ event: 'ready', clients: members.length, setup_ms: now() - began });
  const start = await commands.next();
  if (start === null) return;
  const startAt = start.start_at;
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, startAt - now())));
  if (config.rate) sendPaced(members, tally, startAt);
  else sendAllAtOnce(members, tally);
  const stallMs = config.stall_s * 1000;
  const stalled = await new Promise((resolve) => {
    const check = setInterval(() => {
      const done = members.every((member) => member.unique === member.expected);
      const last = Math.max(tally.lastDelivery || startAt, tally.lastSend || startAt);
      if (done || now() - last > stallMs) { clearInterval(check); resolve(!done); }
    }, 5);
  });
  const lost = members.reduce((sum, member) => sum + member.expected - member.unique, 0);
  const expected = members.reduce((sum, member) => sum + member.expected, 0);
  const sent = members.reduce((sum, member) => sum + member.sent, 0);
  emit({
    event: 'result', clients: members.length, expected, lost, stalled, sent,
    clients_complete: members.filter((member) => member.unique === member.expected).length,
    ...tally, start_at: startAt,
  });
  await commands.next();
  for (const member of members) member.client.close();
}

// -- idle connections ---------------------------------------------------------------------------

async function idle(commands) {
  const clients = [];
  let failed = 0;
  let dropped = 0;
  for (;;) {
    const command = await commands.next();
    if (command === null || command.close) break;
    const wanted = command.open - clients.length;
    const began = now();
    const opened = await bounded(Array.from({ length: Math.max(0, wanted) }, (_, n) => async () => {
      const user = `${config.user_prefix}-${clients.length + n}`;
      try {
        const client = await withTimeout(connect(user).ready, SETUP_TIMEOUT_MS, `${user} connecting`);
        client.onClose = () => { dropped += 1; };
        return client;
      } catch (error) {
        failed += 1;
        return null;
      }
    }), config.connect_concurrency || 100);
    for (const client of opened) if (client !== null) clients.push(client);
    emit({ event: 'opened', open: clients.length, failed, dropped, seconds: (now() - began) / 1000 });
  }
  for (const client of clients) client.close();
}

// -- commands from the orchestrator -----------------------------------------------------------

function commandReader() {
  const lines = readline.createInterface({ input: process.stdin });
  const queue = [];
  const waiting = [];
  let ended = false;
  lines.on('line', (line) => {
    if (!line.trim()) return;
    const command = JSON.parse(line);
    if (waiting.length) waiting.shift()(command);
    else queue.push(command);
  });
  lines.on('close', () => {
    ended = true;
    while (waiting.length) waiting.shift()(null);
  });
  return {
    next: () => {
      if (queue.length) return Promise.resolve(queue.shift());
      if (ended) return Promise.resolve(null);
      return new Promise((resolve) => waiting.push(resolve));
    },
  };
}

async function main() {
  const commands = commandReader();
  try {
    if (config.mode === 'idle') await idle(commands);
    else await fanout(commands);
  } catch (error) {
    emit({ event: 'failed', error: String(error && error.stack ? error.stack : error) });
    process.exitCode = 1;
  }
  // Let the closes reach the server, then go, whatever still holds the loop (Socket.IO timers).
  setTimeout(() => process.exit(), 100);
}

main();

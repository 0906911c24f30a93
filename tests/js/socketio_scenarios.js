// Socket.IO as a front-end developer meets it: the official JavaScript client (socket.io-client)
// against a real server, with a native WebSocket (the `ws` package) where a second party is needed.
//
//   node tests/js/socketio_scenarios.js SCENARIO BASE_URL [NAME=VALUE ...]
//
// BASE_URL is the server's http://127.0.0.1:PORT. The scenarios and their NAME=VALUE arguments:
//   transports transport=websocket|polling ack=emitWithAck|callback user= room=
//       connect with only that transport and the header User-ID, take the welcome, emit a chat with
//       an acknowledgement callback, wait for the same chat as a `message` event;
//   cross sio_user= native_user= room=
//       a socket.io-client (default transports: polling, then the upgrade) and a native /ws client
//       in one room, a chat each way;
//   resume user= talker= room=
//       join a room, disconnect, a native client chats twice in the room, reconnect the same socket
//       with auth {last_event_id, log_id}: everything up to the replay's end (and a moment after);
//   bad_token token= user=
//       auth.token 'not-a-jwt' (default transports and reconnection), then auth.token TOKEN;
//   errors user= room=
//       callbacks of an unsupported code and of `typing`.
// A scenario waits for what it needs (each wait STEP_MS at most) and prints one JSON line on
// stdout: what it observed, the server's `message` payloads as received ({"data": envelope}). It
// asserts nothing: tests/transports/test_socketio_js.py does. When something it waits for does not
// come, it exits 1 with a message on stderr saying what and what had arrived instead; a wrong call
// exits 2. Every socket is closed before the process exits.

'use strict';

const { io } = require('socket.io-client');
const WebSocket = require('ws');

const STEP_MS = 10000; // the longest wait for one step (a commit on a loaded machine can take a while)
const RUN_MS = 25000;
const SETTLE_MS = 300; // how long to listen for what should not come
const CLOSE_MS = 5000; // how long to let the sockets close before exiting anyway
const WELCOME = 'Connected to ProductFlo WebSocket server';

// -- waiting for what arrives ---------------------------------------------------------------------

/** What a connection received, in order, and promises for what it is waiting for. */
class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = new Set();
  }

  push(item) {
    this.items.push(item);
    for (const waiter of [...this.waiters]) waiter(item);
  }

  /** The first item from `from` on (already here or still to come) that matches. */
  waitFor(what, predicate, from = 0) {
    const found = this.items.slice(from).find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter = (item) => {
        if (!predicate(item)) return;
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve(item);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(
          new Missing(
            `${this.name}: no ${what} within ${STEP_MS} ms; received:\n` +
              this.items.slice(from).map((item) => '  ' + JSON.stringify(item)).join('\n'),
          ),
        );
      }, STEP_MS);
      this.waiters.add(waiter);
    });
  }
}

/** Something a scenario waited for did not come: its message says what, and what came instead. */
class Missing extends Error {}

/** The command line is wrong. */
class UsageError extends Error {}

/** The named arguments, or a UsageError naming the missing ones. */
function need(args, ...names) {
  const missing = names.filter((name) => !args[name]);
  if (missing.length) throw new UsageError(`missing arguments: ${missing.map((n) => n + '=')}`);
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function within(what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Missing(`no ${what} within ${STEP_MS} ms`)), STEP_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Predicates on an envelope; `env` takes it out of a Socket.IO `message` payload.
const env = (payload) => (payload && typeof payload === 'object' && payload.data) || {};
const isWelcome = (m) => m.code === 'system' && m.data?.message === WELCOME;
const isChat = (text) => (m) => m.code === 'chat_response' && m.data?.message === text;
const isJoin = (user, room) => (m) =>
  m.code === 'system' && m.room_id === room && m.data?.details?.action === 'join' &&
  m.data?.details?.user_id === user;
const isReplayEnd = (m) => m.data?.details?.replay_complete === true;

// -- connections, all closed at the end -----------------------------------------------------------

const sockets = [];
const natives = [];

/** A socket.io-client socket at path /ws whose `message` payloads land in `inbox`. */
function sio(base, name, options) {
  const socket = io(base, { path: '/ws', reconnection: false, ...options });
  const inbox = new Inbox(`socket.io client ${name}`);
  const disconnects = [];
  const upgrades = []; // the transports the engine upgraded to
  socket.on('message', (payload) => inbox.push(payload));
  socket.on('disconnect', (reason) => disconnects.push(reason));
  socket.io.on('open', () => socket.io.engine.on('upgrade', (t) => upgrades.push(t.name)));
  sockets.push(socket);
  return { socket, inbox, disconnects, upgrades };
}

function connected(socket, name) {
  if (socket.connected) return Promise.resolve();
  return within(
    `connection for ${name}`,
    new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('connect_error', (error) => {
        const data = error.data === undefined ? '' : ` ${JSON.stringify(error.data)}`;
        reject(new Missing(`${name}: connect_error: ${error.message}${data}`));
      });
    }),
  );
}

/** A socket.io-client socket, connected, and the `message` payload that welcomed it. */
async function sioWelcomed(base, name, options) {
  const client = sio(base, name, options);
  await connected(client.socket, name);
  const welcome = await client.inbox.waitFor('welcome', (p) => isWelcome(env(p)));
  return { ...client, welcome };
}

/** A native /ws client, welcomed; its envelopes land in `inbox`. */
async function native(base, user) {
  const url = `${base.replace(/^http/, 'ws')}/ws?user_id=${encodeURIComponent(user)}`;
  const ws = new WebSocket(url);
  natives.push(ws);
  const inbox = new Inbox(`native client ${user}`);
  ws.on('message', (data) => inbox.push(JSON.parse(data.toString())));
  await within(
    `open native connection for ${user}`,
    new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    }),
  );
  const welcome = await inbox.waitFor('welcome', isWelcome);
  return { ws, inbox, welcome, send: (envelope) => ws.send(JSON.stringify(envelope)) };
}

async function nativeJoin(client, user, room) {
  client.send({ code: 'join', room_id: room });
  return client.inbox.waitFor(`join of ${room}`, isJoin(user, room));
}

/** Emit with a plain callback; the arguments the callback was called with. */
function emitWithCallback(socket, what, envelope) {
  return within(
    `callback for ${what}`,
    new Promise((resolve) => socket.emit('message', envelope, (...args) => resolve(args))),
  );
}

/** Emit with socket.timeout(STEP_MS).emitWithAck; the answer. */
async function emitWithAck(socket, what, envelope) {
  try {
    return await socket.timeout(STEP_MS).emitWithAck('message', envelope);
  } catch (error) {
    throw new Missing(`emitWithAck for ${what}: ${error.message}`);
  }
}

function transportOf(socket) {
  return socket.io.engine ? socket.io.engine.transport.name : null;
}

// -- the scenarios --------------------------------------------------------------------------------

const SCENARIOS = {
  async transports(base, args) {
    const { transport, ack, user, room } = need(args, 'transport', 'ack', 'user', 'room');
    if (!['emitWithAck', 'callback'].includes(ack)) {
      throw new UsageError(`ack must be emitWithAck or callback, not ${ack}`);
    }
    const options = { transports: [transport], extraHeaders: { 'User-ID': user } };
    const { socket, inbox, welcome, disconnects } = await sioWelcomed(base, user, options);
    const chat = {
      code: 'chat',
      room_id: room,
      client_msg_id: `${transport}-1`,
      data: { message: `hello over ${transport}` },
    };
    let answer;
    let answerArgs = null;
    if (ack === 'emitWithAck') {
      answer = await emitWithAck(socket, 'the chat', chat);
    } else {
      answerArgs = await emitWithCallback(socket, 'the chat', chat);
      answer = answerArgs[0];
    }
    const delivered = await inbox.waitFor(
      `message event for client_msg_id ${chat.client_msg_id}`,
      (p) => env(p).code === 'chat_response' && env(p).client_msg_id === chat.client_msg_id,
    );
    return {
      transport: transportOf(socket),
      connected: socket.connected,
      welcome,
      first: inbox.items[0],
      chat,
      answer: answer === undefined ? null : answer,
      answer_args_count: answerArgs && answerArgs.length,
      delivered,
      disconnects: [...disconnects], // before closeAll adds its own
    };
  },

  async cross(base, args) {
    const { sio_user: sioUser, native_user: nativeUser, room } = need(
      args, 'sio_user', 'native_user', 'room',
    );
    const other = await native(base, nativeUser);
    await nativeJoin(other, nativeUser, room);
    // Default options, as most pages have them: polling first, then the upgrade to websocket.
    const { socket, inbox, welcome, disconnects, upgrades } = await sioWelcomed(base, sioUser, {
      extraHeaders: { 'User-ID': sioUser },
    });

    const fromSio = 'from socket.io-client';
    const sioAnswer = await emitWithAck(socket, 'the chat from socket.io-client', {
      code: 'chat', room_id: room, client_msg_id: 'sio-1', data: { message: fromSio },
    });
    const nativeHeard = await other.inbox.waitFor(`"${fromSio}"`, isChat(fromSio));

    const fromNative = 'from a native WebSocket';
    other.send({
      code: 'chat', room_id: room, client_msg_id: 'native-1', data: { message: fromNative },
    });
    const nativeOwn = await other.inbox.waitFor(`its own "${fromNative}"`, isChat(fromNative));
    const sioHeard = await inbox.waitFor(`"${fromNative}"`, (p) => isChat(fromNative)(env(p)));
    if (!upgrades.length) {
      const upgraded = new Promise((resolve) => socket.io.engine.once('upgrade', resolve));
      await Promise.race([upgraded, sleep(STEP_MS)]); // the test says if it never came
    }
    return {
      upgrades: [...upgrades],
      transport: transportOf(socket),
      welcome,
      sio_answer: sioAnswer,
      native_heard: nativeHeard,
      native_own: nativeOwn,
      sio_heard: sioHeard,
      disconnects: [...disconnects], // before closeAll adds its own
    };
  },

  async resume(base, args) {
    const { user, talker, room } = need(args, 'user', 'talker', 'room');
    const other = await native(base, talker);
    await nativeJoin(other, talker, room);

    const options = { transports: ['websocket'], extraHeaders: { 'User-ID': user } };
    const { socket, inbox, welcome } = await sioWelcomed(base, user, options);
    socket.emit('message', { code: 'join', room_id: room });
    const joined = await inbox.waitFor(`join of ${room}`, (p) => isJoin(user, room)(env(p)));
    socket.disconnect();

    const sent = [];
    for (const text of ['missed 1', 'missed 2']) {
      const id = text.replace(' ', '-');
      other.send({ code: 'chat', room_id: room, client_msg_id: id, data: { message: text } });
      sent.push(await other.inbox.waitFor(`its own "${text}"`, isChat(text)));
    }

    // The same socket again, as a page resumes: its position in auth, then connect().
    const position = {
      last_event_id: joined.data.event_id,
      log_id: welcome.data.data.details.log_id,
    };
    socket.auth = position;
    const from = inbox.items.length;
    socket.connect();
    await connected(socket, `${user} again`);
    await inbox.waitFor('replay_complete', (p) => isReplayEnd(env(p)), from);
    await sleep(SETTLE_MS); // nothing more should come: no duplicate at the seam
    return { welcome, joined, position, sent, resumed: inbox.items.slice(from) };
  },

  async bad_token(base, args) {
    const { token, user } = need(args, 'token', 'user');
    // Defaults, reconnection included: a refusal must not be retried.
    const refused = io(base, { path: '/ws', auth: { token: 'not-a-jwt' } });
    sockets.push(refused);
    const events = [];
    refused.on('connect', () => events.push('connect'));
    refused.on('message', (payload) => events.push(['message', payload]));
    refused.on('connect_error', (error) => events.push(['connect_error', error.message]));
    const error = await within(
      'connect_error for the token not-a-jwt',
      new Promise((resolve) => refused.once('connect_error', resolve)),
    );
    const active = refused.active; // false: denied by the server, no reconnection
    await sleep(SETTLE_MS);

    const { socket, welcome } = await sioWelcomed(base, user, { auth: { token } });
    return {
      refused: {
        message: error.message,
        data: error.data === undefined ? null : error.data,
        active,
        connected: refused.connected,
        events,
      },
      accepted: { connected: socket.connected, welcome },
    };
  },

  async errors(base, args) {
    const { user, room } = need(args, 'user', 'room');
    const options = { transports: ['websocket'], extraHeaders: { 'User-ID': user } };
    const { socket } = await sioWelcomed(base, user, options);
    const unsupported = await emitWithCallback(socket, 'the code fly', {
      code: 'fly', room_id: room, client_msg_id: 'bad-1',
    });
    const typing = await emitWithCallback(socket, 'typing', {
      code: 'typing', room_id: room, data: { is_typing: true },
    });
    // JSON has no `undefined`: the count tells "no argument" from a null one.
    return {
      unsupported_args: unsupported,
      unsupported_args_count: unsupported.length,
      typing_args: typing,
      typing_args_count: typing.length,
    };
  },
};

// -- running one --------------------------------------------------------------------------------

function parse(argv) {
  const [scenario, base, ...pairs] = argv;
  if (!SCENARIOS[scenario]) {
    throw new UsageError(`unknown scenario ${scenario}; use one of ${Object.keys(SCENARIOS)}`);
  }
  if (!/^https?:\/\//.test(base || '')) {
    throw new UsageError(`BASE_URL must be the server's http://HOST:PORT, not ${base}`);
  }
  const args = {};
  for (const pair of pairs) {
    const at = pair.indexOf('=');
    if (at < 1) throw new UsageError(`arguments are NAME=VALUE, not ${pair}`);
    args[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return { scenario, base: base.replace(/\/+$/, ''), args };
}

/** Close every connection; resolve once they are closed, or after CLOSE_MS anyway. */
function closeAll() {
  const closing = [];
  for (const socket of sockets) {
    const engine = socket.io.engine;
    socket.disconnect(); // the manager's last socket: closes the engine too
    if (engine && engine.readyState !== 'closed') {
      closing.push(new Promise((resolve) => engine.once('close', resolve)));
    }
  }
  for (const ws of natives) {
    if (ws.readyState === WebSocket.CLOSED) continue;
    closing.push(new Promise((resolve) => ws.once('close', resolve)));
    ws.close(1000);
  }
  return Promise.race([Promise.all(closing), sleep(CLOSE_MS)]);
}

function exit(code, out, err) {
  if (err) process.stderr.write(`socketio_scenarios: ${err}\n`);
  process.stdout.write(out, () => process.exit(code));
}

async function main() {
  let parsed;
  try {
    parsed = parse(process.argv.slice(2));
  } catch (error) {
    return exit(2, '', error.message);
  }
  const { scenario, base, args } = parsed;
  const timer = setTimeout(() => {
    closeAll();
    exit(1, '', `${scenario}: not done within ${RUN_MS} ms`);
  }, RUN_MS);
  let result;
  let failure;
  try {
    result = await SCENARIOS[scenario](base, args);
  } catch (error) {
    failure = error;
  }
  await closeAll();
  clearTimeout(timer);
  if (failure) {
    const code = failure instanceof UsageError ? 2 : 1;
    const expected = failure instanceof UsageError || failure instanceof Missing;
    const why = expected ? failure.message : failure.stack;
    return exit(code, '', `${scenario}: ${why}`);
  }
  exit(0, JSON.stringify(result) + '\n');
}

main();

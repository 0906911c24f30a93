// The seed API document's Socket.IO client example, run unchanged in Node against a real server.
//
//   PRODUCTFLO_TEST_ORIGIN=http://127.0.0.1:PORT PRODUCTFLO_TEST_TOKEN=JWT \
//     node tests/js/seed_socketio.js [MESSAGE]
//
// The example between the BEGIN/END seed markers is copied verbatim from the seed (section
// "Connection Examples", "Socket.IO Client"). It is an ES module (`import { io } from
// 'socket.io-client'`), so it sits in a String.raw literal and is imported as a module of its
// own, with one line appended that exports its `socket` and `sendMessage` to the harness.
// Everything else is the harness, standing in for the browser and the deployment:
//   - `socket.io-client` as the example imports it is the real package behind a thin shim that
//     sends the connection to the test server instead of https://api.productflo.io, and puts the
//     test token in place of YOUR_JWT_TOKEN (the example's path, extraHeaders, auth and
//     reconnection options are passed on as written);
//   - console.log collected: what the example prints is the observation.
// Once connected, the harness calls the example's own sendMessage(MESSAGE). It exits 0 once the
// example has printed the welcome (data.data.code 'system') and the chat_response to its message
// in room product-456, and non-zero on an error envelope, a connect_error, a disconnect or a
// timeout. Each console.log call is printed on stdout as one JSON array per line (the arguments).

'use strict';

const {
  SEED_USER, SEED_ROOM, TIMEOUT_MS, printed, isWelcome, isAnswer, finisher,
} = require('./harness');

const finish = finisher('seed_socketio');

const { pathToFileURL } = require('node:url');
const nodeModule = require('node:module');
const realIo = require('socket.io-client').io;

const SEED_ORIGIN = 'https://api.productflo.io';
const SEED_TOKEN = 'YOUR_JWT_TOKEN';

// -- the seed's example, verbatim -----------------------------------------------------------------

const SEED_EXAMPLE = String.raw`
// ---- BEGIN seed: Socket.IO Client ----
import { io } from 'socket.io-client';

// Connect to Socket.IO endpoint
const socket = io('https://api.productflo.io', {
  path: '/ws',
  extraHeaders: { 'User-ID': 'user-123' }, // Optional user ID
  auth: { token: 'YOUR_JWT_TOKEN' }, // Optional token for authentication
  reconnection: true
});

// Handle connection
socket.on('connect', () => {
  console.log('Connected to Socket.IO');
});

// Listen for message events
socket.on('message', (data) => {
  console.log('Message received:', data);
  
  // Handle different message types
  if (data.data && data.data.code) {
    switch(data.data.code) {
      case 'chat_response':
        handleChatResponse(data.data);
        break;
      case 'system':
        handleSystemMessage(data.data);
        break;
      // Handle other message types
    }
  }
});

// Send a message
function sendMessage(message) {
  socket.emit('message', {
    code: "chat",
    user_id: "user-123",
    room_id: "product-456",
    data: {
      message: message,
      sender: "user-123"
    }
  });
}
// ---- END seed ----
`;

// The example calls these handlers without defining them (the application's own): the harness's.
globalThis.handleChatResponse = () => {};
globalThis.handleSystemMessage = () => {};

// -- the deployment: socket.io-client pointed at the test server -----------------------------------

function testUrl(url) {
  const origin = process.env.PRODUCTFLO_TEST_ORIGIN;
  if (!origin) throw new Error('PRODUCTFLO_TEST_ORIGIN is not set (e.g. http://127.0.0.1:8000)');
  if (url !== SEED_ORIGIN && !url.startsWith(SEED_ORIGIN + '/')) {
    throw new Error(`unexpected URL in the example: ${url}`);
  }
  return origin.replace(/\/+$/, '') + url.slice(SEED_ORIGIN.length);
}

function testOptions(options) {
  const result = { ...options };
  if (result.auth && result.auth.token === SEED_TOKEN) {
    const token = process.env.PRODUCTFLO_TEST_TOKEN;
    if (!token) throw new Error('the example needs a token: PRODUCTFLO_TEST_TOKEN is not set');
    result.auth = { ...result.auth, token };
  }
  return result;
}

globalThis.__productfloSeedIo = (url, options) => realIo(testUrl(url), testOptions(options));

const SHIM = 'export const io = (...args) => globalThis.__productfloSeedIo(...args);\n';
const SHIM_URL = 'data:text/javascript,' + encodeURIComponent(SHIM);
const HOOKS = `
export async function resolve(specifier, context, next) {
  if (specifier === 'socket.io-client') return { url: ${JSON.stringify(SHIM_URL)}, shortCircuit: true };
  return next(specifier, context);
}
`;
nodeModule.register('data:text/javascript,' + encodeURIComponent(HOOKS), pathToFileURL(__filename));


// -- the harness ----------------------------------------------------------------------------------

function envelopes() {
  return printed
    .filter((args) => args[0] === 'Message received:')
    .map((args) => (args[1] && args[1].data) || {});
}


async function run(text) {
  const timer = setTimeout(() => finish(1, `timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS);
  let socket, sendMessage;
  try {
    const source = SEED_EXAMPLE + '\nexport { socket, sendMessage };\n';
    ({ socket, sendMessage } = await import(
      'data:text/javascript,' + encodeURIComponent(source)
    ));
  } catch (error) {
    clearTimeout(timer);
    return finish(1, `the example threw: ${error.stack || error}`);
  }
  let done = false;
  const settle = (code, reason) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    socket.disconnect();
    finish(code, reason);
  };
  const start = () => sendMessage(text);
  if (socket.connected) start();
  else socket.once('connect', start);
  socket.on('message', () => {
    // The example's own handler ran first (it was added first) and printed what it got.
    const messages = envelopes();
    const error = messages.find((data) => data.status === 'error');
    if (error) return settle(1, `error envelope: ${JSON.stringify(error)}`);
    if (!messages.length || !isWelcome(messages[0])) {
      return settle(1, `the first message is not the welcome: ${JSON.stringify(messages[0])}`);
    }
    if (messages.some((data) => isAnswer(data, text))) settle(0);
  });
  socket.on('connect_error', (error) => settle(1, `connect_error: ${error.message}`));
  socket.on('disconnect', (reason) => settle(1, `disconnected before the answer: ${reason}`));
}

run(process.argv[2] || `Hello from the seed example ${Date.now()}`);

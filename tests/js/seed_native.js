// The seed API document's native WebSocket examples, run unchanged in Node against a real server.
//
//   PRODUCTFLO_TEST_ORIGIN=ws://127.0.0.1:PORT [PRODUCTFLO_TEST_TOKEN=JWT] \
//     node tests/js/seed_native.js standard|secure [MESSAGE]
//
// The two examples between the BEGIN/END seed markers are copied verbatim from the seed (section
// "Connection Examples"); each sits in a function only so that both can declare `const socket`.
// Everything else is the harness, standing in for the browser:
//   - a global `WebSocket` (the `ws` package) that sends the handshake to the test server instead
//     of wss://api.productflo.io, with the test token in place of YOUR_JWT_TOKEN;
//   - the browser's cookie jar: the examples send user_id "user-123", and a browser's
//     `new WebSocket(url)` cannot set headers but sends its cookies, so the handshake carries
//     `Cookie: user_id=user-123` (for /ws/secure the identity is the token's sub, user-123 too);
//   - console.log collected: what the example prints is the observation.
// After the socket opens, the harness calls the example's own sendMessage(MESSAGE). It exits 0 once
// the example has printed the welcome and the chat_response to its message in room product-456,
// and non-zero on an error envelope, an error, an early close or a timeout. Whatever the outcome,
// each console.log call is printed on stdout as one JSON array per line (the arguments).

'use strict';

const {
  SEED_USER, SEED_ROOM, TIMEOUT_MS, printed, isWelcome, isAnswer, finisher,
} = require('./harness');

const finish = finisher('seed_native');

const NodeWebSocket = require('ws');

const SEED_ORIGIN = 'wss://api.productflo.io';
const SEED_TOKEN = 'YOUR_JWT_TOKEN';

// -- the browser ----------------------------------------------------------------------------------

function testUrl(url) {
  const origin = process.env.PRODUCTFLO_TEST_ORIGIN;
  if (!origin) throw new Error('PRODUCTFLO_TEST_ORIGIN is not set (e.g. ws://127.0.0.1:8000)');
  if (!url.startsWith(SEED_ORIGIN + '/')) throw new Error(`unexpected URL in the example: ${url}`);
  let rewritten = origin.replace(/\/+$/, '') + url.slice(SEED_ORIGIN.length);
  if (rewritten.includes(SEED_TOKEN)) {
    const token = process.env.PRODUCTFLO_TEST_TOKEN;
    if (!token) throw new Error('the example needs a token: PRODUCTFLO_TEST_TOKEN is not set');
    rewritten = rewritten.replace(SEED_TOKEN, encodeURIComponent(token));
  }
  return rewritten;
}

class WebSocket extends NodeWebSocket {
  constructor(url, protocols) {
    // The options are the browser's cookie jar, not something the page could set.
    super(testUrl(url), protocols, { headers: { Cookie: `user_id=${SEED_USER}` } });
  }
}
globalThis.WebSocket = WebSocket;


// -- the seed's examples, verbatim ----------------------------------------------------------------

function standardExample() {
// ---- BEGIN seed: Standard WebSocket (Non-Authenticated) ----
// Connect to standard WebSocket endpoint
const socket = new WebSocket('wss://api.productflo.io/ws');

// Handle connection open
socket.onopen = () => {
  console.log('Connection established');
};

// Listen for messages
socket.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log('Received:', data);
};

// Send a message
function sendMessage(message) {
  socket.send(JSON.stringify({
    code: "chat",
    user_id: "user-123", // Use the user_id assigned by server or provided
    room_id: "product-456",
    data: {
      message: message,
      sender: "user-123"
    }
  }));
}
// ---- END seed ----
  return { socket, sendMessage };
}

function secureExample() {
// ---- BEGIN seed: Secure WebSocket (Authenticated) ----
// Connect to secure WebSocket endpoint with authentication
const socket = new WebSocket('wss://api.productflo.io/ws/secure?access_token=YOUR_JWT_TOKEN');

// Handle connection open
socket.onopen = () => {
  console.log('Authenticated connection established');
};

// Listen for messages
socket.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log('Received:', data);
};

// Send a message
function sendMessage(message) {
  socket.send(JSON.stringify({
    code: "chat",
    user_id: "user-123", // This should match the authenticated user ID
    room_id: "product-456",
    data: {
      message: message,
      sender: "user-123"
    }
  }));
}
// ---- END seed ----
  return { socket, sendMessage };
}

const SCENARIOS = { standard: standardExample, secure: secureExample };

// -- the harness ----------------------------------------------------------------------------------

function received() {
  return printed.filter((args) => args[0] === 'Received:').map((args) => args[1]);
}


function run(scenario, text) {
  const example = SCENARIOS[scenario];
  if (!example) return finish(2, `unknown scenario ${scenario}; use ${Object.keys(SCENARIOS)}`);
  const timer = setTimeout(() => finish(1, `timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS);
  let socket, sendMessage;
  try {
    ({ socket, sendMessage } = example());
  } catch (error) {
    return finish(1, `the example threw: ${error.stack || error}`);
  }
  let done = false;
  const settle = (code, reason) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    socket.close(1000);
    finish(code, reason);
  };
  socket.addEventListener('open', () => sendMessage(text));
  socket.addEventListener('message', () => {
    // The example's own handler ran first (it was added first) and printed what it got.
    const messages = received();
    const error = messages.find((data) => data.status === 'error');
    if (error) return settle(1, `error envelope: ${JSON.stringify(error)}`);
    if (!messages.length || !isWelcome(messages[0])) {
      return settle(1, `the first message is not the welcome: ${JSON.stringify(messages[0])}`);
    }
    if (messages.some((data) => isAnswer(data, text))) settle(0);
  });
  socket.addEventListener('error', (event) => settle(1, `socket error: ${event.message}`));
  socket.addEventListener('close', (event) =>
    settle(1, `closed before the answer: ${event.code} ${event.reason}`),
  );
}

run(process.argv[2] || 'standard', process.argv[3] || `Hello from the seed example ${Date.now()}`);

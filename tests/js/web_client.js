// The web client served at GET / (productflo/static/index.html), its script run unchanged in Node
// against a real server, with the page stood in for by a few fake elements.
//
//   node tests/js/web_client.js HTTP_BASE ROOM
//
// The harness fetches the page, takes its <script>, and runs it with `document`, `location` and a
// `WebSocket` (the `ws` package). Like a user it waits for the welcome, then types into the box and
// submits: a chat, then "/doc ..." (a documentation request). It exits 0 once the page shows the
// chat and haitch's finished document, and prints on stdout one JSON value per line: each line of
// the page (a string), then the history of the line haitch's answer is shown in (an array of what
// it showed, in order). On a timeout it exits 1 with what it has so far.

'use strict';

const NodeWebSocket = require('ws');

const [base, room] = process.argv.slice(2);
const TIMEOUT_MS = Number(process.env.PRODUCTFLO_TEST_TIMEOUT_MS || 15000);

class Element {
  constructor(id) {
    this.id = id;
    this.value = '';
    this.history = [];  // every text the element showed, in order
    this.children = [];
    this.dataset = {};
    this.className = '';
  }

  get textContent() {
    return this.history.length ? this.history[this.history.length - 1] : '';
  }

  set textContent(text) {
    this.history.push(text);
  }

  appendChild(child) {
    this.children.push(child);
    return child;
  }
}

const elements = {};
const document = {
  getElementById: (id) => (elements[id] ??= new Element(id)),
  createElement: (tag) => new Element(tag),
};

function lines() {
  return document.getElementById('log').children.map((item) => item.textContent);
}

function finish(code, reason) {
  if (reason) process.stderr.write(`web_client: ${reason}\n`);
  const items = document.getElementById('log').children;
  const answer = items.filter((item) => item.className === 'haitch').map((item) => item.history);
  const out = [...lines(), ...answer].map((value) => JSON.stringify(value)).join('\n');
  process.stdout.write(out ? out + '\n' : '', () => process.exit(code));
}

async function until(what, predicate) {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!predicate()) {
    if (Date.now() > deadline) finish(1, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function type(text) {
  document.getElementById('text').value = text;
  document.getElementById('send').onsubmit({ preventDefault() {} });
}

async function main() {
  const page = await (await fetch(base + '/')).text();
  const script = page.slice(page.indexOf('<script>') + 8, page.indexOf('</script>'));
  const url = new URL(base);
  const scope = {
    document,
    location: { protocol: url.protocol, host: url.host },
    WebSocket: NodeWebSocket,
    setTimeout,
    crypto: globalThis.crypto,
  };
  new Function(...Object.keys(scope), script)(...Object.values(scope));

  const status = document.getElementById('status');
  await until('the welcome', () => status.textContent.startsWith('you are '));
  document.getElementById('room').value = room;

  type('hello from the web page');
  await until('the chat', () => lines().some((l) => l.endsWith(`in ${room}: hello from the web page`)));

  type('/doc Specification for a waterproof thermostat');
  await until('the document', () => lines().some((l) => l.startsWith(`haitch in ${room}: Document ready`)));
  finish(0);
}

main().catch((error) => finish(1, String(error && error.stack ? error.stack : error)));

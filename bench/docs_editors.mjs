// The documents benchmark's editors: N Yjs editors of one document, one process, one design for
// productflo and the relay (bench/docs_throughput.py starts this and reads its output).
//
//   node bench/docs_editors.mjs CONFIG_JSON
//
// CONFIG_JSON: {"url": "ws://127.0.0.1:PORT/ws", "room": ..., "doc": ..., "editors": 20,
// "window": 1, "warmup": 1, "duration": 5, "drain": 30, "tag": ...}.
//
// Every editor connects (the `ws` package, from bench/fanout), opens the document and applies its
// doc_sync; then this prints {"event": "ready"} and waits for a line on its input. From then on each
// editor types: one keystroke (a character inserted at its cursor in the Y.Text `content`, with
// the official yjs vendored in productflo/static/vendor/yjs.mjs) is one Yjs update, sent as a
// doc_update with a client_msg_id of its own, and each editor keeps at most `window` of them
// unacknowledged (its own copy coming back is the acknowledgement). Every doc_update of another
// editor is applied to the editor's document, as a browser would. After `warmup` s, what arrives
// in the next `duration` s is counted: acknowledgements and deliveries to the others, with their
// latencies from the send (every editor lives in this process, so a latency is read on the clock
// it was written with). Then typing stops; once every update sent has reached every editor (or
// `drain` s have passed) this prints {"event": "result", ...}, including whether every editor's
// text is the same, and exits at the next line (or the end) of its input.

import { createRequire } from 'node:module';
import readline from 'node:readline';
import * as Y from '../productflo/static/vendor/yjs.mjs';

const require = createRequire(import.meta.url);
const WebSocket = require('./fanout/node_modules/ws');

const config = JSON.parse(process.argv[2]);
const SETUP_TIMEOUT_MS = 30000;
const REMOTE = 'remote';
const KEYS = 'abcdefghijklmnopqrstuvwxyz     ';
// Latencies are counted in buckets 1 % wide (bucket k holds values near 1.01^k ms), as the
// fan-out benchmark's load does (bench/fanout/report.py reads them).
const BUCKET_BASE = Math.log(1.01);

function emit(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

function bucket(histogram, ms) {
  const key = Math.round(Math.log(Math.max(ms, 0.001)) / BUCKET_BASE);
  histogram[key] = (histogram[key] || 0) + 1;
}

const tally = { acked: 0, delivered: 0, ack: {}, delivery: {}, errors: [] };
const sentAt = new Map(); // client_msg_id -> [send time, receivers still to hear it]
let window = null; // {start, end}, performance.now() ms, once typing begins
let sent = 0;
let outstanding = 0; // deliveries (acks included) not yet made
let onSettled = () => {};

function counts(moment) {
  return window !== null && moment >= window.start && moment <= window.end;
}

function heard(id, moment, histogram) {
  const entry = sentAt.get(id);
  if (entry === undefined) return false;
  if (counts(moment)) bucket(histogram, moment - entry[0]);
  entry[1] -= 1;
  if (entry[1] === 0) sentAt.delete(id);
  outstanding -= 1;
  if (outstanding === 0) onSettled();
  return true;
}

function newEditor(index) {
  const user = `${config.tag}-editor-${index}`;
  const doc = new Y.Doc();
  const text = doc.getText('content');
  const editor = { user, doc, text, cursor: 0, seq: 0, unacked: 0, synced: null, socket: null };
  let update = null;
  doc.on('update', (bytes, origin) => {
    if (origin !== REMOTE) update = bytes;
  });

  editor.type = () => {
    const length = text.length;
    editor.cursor = Math.min(editor.cursor, length);
    text.insert(editor.cursor, KEYS[(index + editor.seq) % KEYS.length]);
    editor.cursor += 1;
    const id = `${index}-${editor.seq++}`;
    sentAt.set(id, [performance.now(), config.editors]);
    outstanding += config.editors;
    sent += 1;
    editor.unacked += 1;
    editor.socket.send(
      JSON.stringify({
        code: 'doc_update',
        room_id: config.room,
        client_msg_id: id,
        data: { doc_id: config.doc, update: Y.toBase64(update) },
      }),
    );
  };

  editor.keepTyping = () => {
    while (window !== null && editor.unacked < config.window && performance.now() < window.end) {
      editor.type();
    }
  };

  editor.receive = (message) => {
    const moment = performance.now();
    if (message.status === 'error') {
      tally.errors.push(message.data);
      return;
    }
    if (message.code === 'doc_sync') {
      Y.applyUpdate(doc, Y.fromBase64(message.data.update), REMOTE);
      editor.synced();
      return;
    }
    if (message.code !== 'doc_update' || message.data.doc_id !== config.doc) return;
    if (message.user_id === user) {
      if (!heard(message.client_msg_id, moment, tally.ack)) return;
      if (counts(moment)) tally.acked += 1;
      editor.unacked -= 1;
      editor.keepTyping();
      return;
    }
    Y.applyUpdate(doc, Y.fromBase64(message.data.update), REMOTE);
    if (heard(message.client_msg_id, moment, tally.delivery) && counts(moment)) {
      tally.delivered += 1;
    }
  };

  editor.open = () =>
    new Promise((resolve, reject) => {
      const socket = new WebSocket(`${config.url}?user_id=${encodeURIComponent(user)}`, {
        perMessageDeflate: false,
      });
      editor.socket = socket;
      editor.synced = resolve;
      socket.on('open', () =>
        socket.send(
          JSON.stringify({
            code: 'doc_open',
            room_id: config.room,
            client_msg_id: `open-${index}`,
            data: { doc_id: config.doc },
          }),
        ),
      );
      socket.on('message', (data) => editor.receive(JSON.parse(data.toString())));
      socket.on('error', reject);
      socket.on('close', (code) => {
        if (window !== null && outstanding > 0) tally.errors.push({ closed: code, user });
      });
    });
  return editor;
}

function timeout(ms, what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(what)), ms).unref());
}

async function main() {
  const editors = Array.from({ length: config.editors }, (_, i) => newEditor(i));
  await Promise.race([
    Promise.all(editors.map((editor) => editor.open())),
    timeout(SETUP_TIMEOUT_MS, 'the editors did not all open the document in time'),
  ]);
  emit({ event: 'ready' });
  const input = readline.createInterface({ input: process.stdin });
  const lines = input[Symbol.asyncIterator]();
  await lines.next(); // go

  const begin = performance.now();
  window = { start: begin + 1000 * config.warmup, end: begin + 1000 * (config.warmup + config.duration) };
  for (const editor of editors) editor.keepTyping();
  await new Promise((resolve) => setTimeout(resolve, window.end - performance.now()));
  const drained = await Promise.race([
    new Promise((resolve) => {
      onSettled = () => resolve(true);
      if (outstanding === 0) resolve(true);
    }),
    new Promise((resolve) => setTimeout(() => resolve(false), 1000 * config.drain).unref()),
  ]);
  const texts = new Set(editors.map((editor) => editor.text.toString()));
  emit({
    event: 'result',
    editors: config.editors,
    window: config.window,
    seconds: config.duration,
    sent,
    acked: tally.acked,
    delivered: tally.delivered,
    ack: tally.ack,
    delivery: tally.delivery,
    drained,
    undelivered: outstanding,
    converged: texts.size === 1,
    text_length: editors[0].text.length,
    errors: tally.errors.slice(0, 10),
    error_count: tally.errors.length,
  });
  await lines.next(); // the orchestrator has read what it needs of this process (its CPU time)
  input.close();
  for (const editor of editors) editor.socket.close();
}

main().catch((error) => {
  emit({ event: 'failed', error: String(error && error.stack ? error.stack : error) });
  process.exit(1);
});

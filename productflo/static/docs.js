// A room's collaborative documents (docs/protocol.md, "Collaborative documents"): each one a
// Y.Doc kept in step with the server's, its Y.Text 'content' bound to a <textarea>, and others'
// cursors from y-protocols' awareness.

import * as Y from './vendor/yjs.mjs';

export const DOC_CODES = new Set(['doc_sync', 'doc_update', 'awareness']);
const TEXT = 'content';
const ID = /^[A-Za-z0-9_.@:+|=~-]{1,128}$/;
// Keystrokes merged into one doc_update, and cursor moves into one awareness message, at most
// this often: a fast typist stays well inside the server's rate limit (50 messages a second).
const SEND_EVERY_MS = 100;
const AWARENESS_EVERY_MS = 200;
// One doc_update holds at most this much (merged edits, a paste in pieces): base64 and the
// envelope keep its frame far below the server's limit (64 KiB by default; over it, close 1009).
const UPDATE_BYTES = 16 * 1024;
const PASTE_PIECE = 4096; // characters inserted per Yjs transaction: one update each
const REMOTE = Symbol('remote'); // the origin of what the server sent: never sent back
const TYPED = Symbol('typed');

// The doc_id a name typed by a person stands for: spaces become dashes, other characters go.
export function docIdOf(name) {
  const id = name.trim().replace(/\s+/g, '-').replace(/[^A-Za-z0-9_.@:+|=~-]/g, '').slice(0, 128);
  return ID.test(id) ? id : null;
}

// A document's title as the server gives it: its first line with words, heading marks dropped.
export function titleOf(text) {
  for (const line of text.split('\n')) {
    const words = line.trim().replace(/^#+/, '').trim();
    if (words) return words.slice(0, 120);
  }
  return '';
}

// The change from `before` to `after` as one splice: [index, deleted, inserted]. `caret` (where
// the selection ends in `after`) places an insertion among equal characters where it was typed.
export function splice(before, after, caret = after.length) {
  let start = 0;
  const most = Math.min(before.length, after.length);
  while (start < most && start < caret && before[start] === after[start]) start += 1;
  let end = 0;
  while (end < most - start && before[before.length - 1 - end] === after[after.length - 1 - end]) {
    end += 1;
  }
  // Never cut a surrogate pair in two: Yjs counts UTF-16 units, a person counts characters.
  if (start > 0 && isHigh(after.charCodeAt(start - 1))) start -= 1;
  if (end > 0 && isLow(after.charCodeAt(after.length - end))) end -= 1;
  return [start, before.length - start - end, after.slice(start, after.length - end)];
}

// Consecutive updates grouped so that each group's bytes stay within `most` (one larger
// update alone in its group).
function batches(updates, most) {
  const groups = [];
  let size = Infinity;
  for (const update of updates) {
    if (size + update.length > most) {
      groups.push([]);
      size = 0;
    }
    groups.at(-1).push(update);
    size += update.length;
  }
  return groups;
}

const isHigh = (unit) => unit >= 0xd800 && unit <= 0xdbff;
const isLow = (unit) => unit >= 0xdc00 && unit <= 0xdfff;

// One document of a room as this page holds it. `connection` is the page's Connection: edits go
// through its outbox (kept across reloads, resent until stored), awareness as signals.
export class SharedDoc {
  constructor(roomId, docId, me, connection, onChange) {
    this.roomId = roomId;
    this.docId = docId;
    this.me = me;
    this.connection = connection;
    this.onChange = onChange; // (what) with 'text', 'peers' or 'status'
    this.doc = new Y.Doc();
    this.text = this.doc.getText(TEXT);
    this.awareness = new Y.Awareness(this.doc);
    this.awareness.setLocalState(null); // present only while shown
    this.synced = false;
    this.pending = []; // local updates not in the outbox yet
    this.draft = null; // the outbox message the next edits may still be merged into
    this.sendTimer = null;
    this.awarenessTimer = null;
    this.owners = new Map(); // awareness client id -> the user the server says it came from
    this.doc.on('update', (update, origin) => {
      if (origin !== REMOTE) this.queue(update);
    });
    this.awareness.on('update', (changes, origin) => this.awarenessChanged(changes, origin));
  }

  get key() {
    return keyOf(this.roomId, this.docId);
  }

  // -- to the server

  // Ask for what this copy lacks (all of it, the first time): on opening, and after each
  // reconnect, when what was missed offline comes this way and the outbox sends what was typed.
  open() {
    const stateVector = Y.toBase64(Y.encodeStateVector(this.doc));
    this.connection.signal(this.message('doc_open', {state_vector: stateVector}));
    // Back after a drop: the others may have timed us out. A state they dropped comes back
    // only with a newer clock than the one they saw last: set it again, and say it now.
    const state = this.awareness.getLocalState();
    if (state === null) return;
    this.awareness.setLocalState(state);
    this.sendAwareness();
  }

  message(code, data) {
    return {code, room_id: this.roomId, data: {doc_id: this.docId, ...data}};
  }

  queue(update) {
    this.pending.push(update);
    this.sendTimer = this.sendTimer || setTimeout(() => this.flush(), SEND_EVERY_MS);
    this.onChange('status');
  }

  // The edits of the last moment as few updates as fit, into the outbox: merged into the
  // previous one while that has not gone out (offline), so a long offline session is a few
  // messages, not one per keystroke.
  flush() {
    clearTimeout(this.sendTimer);
    this.sendTimer = null;
    for (const batch of batches(this.pending, UPDATE_BYTES)) this.post(Y.mergeUpdates(batch));
    this.pending = [];
    this.onChange('status');
  }

  post(update) {
    const amended = (message) => {
      const both = Y.mergeUpdates([Y.fromBase64(message.data.update), update]);
      if (both.length > UPDATE_BYTES) return null;
      return this.message('doc_update', {update: Y.toBase64(both)});
    };
    if (this.draft === null || !this.connection.amend(this.draft, amended)) {
      this.draft = this.connection.send(this.message('doc_update', {update: Y.toBase64(update)}));
    }
  }

  // Whether edits are not stored yet: in the outbox, or about to be.
  unsaved() {
    if (this.pending.length) return true;
    for (const message of this.connection.outbox.values()) {
      if (message.code === 'doc_update' && message.room_id === this.roomId
          && message.data.doc_id === this.docId) return true;
    }
    return false;
  }

  // -- from the server

  received(message) {
    const data = message.data || {};
    if (message.code === 'awareness') {
      // The origin names who the server says sent it: a state cannot pose as another user.
      Y.applyAwarenessUpdate(this.awareness, Y.fromBase64(data.update), {user: message.user_id});
      return;
    }
    const before = this.text.toString();
    Y.applyUpdate(this.doc, Y.fromBase64(data.update), REMOTE);
    if (message.code === 'doc_sync') this.synced = true; // editable from now on
    if (message.code === 'doc_sync' || this.text.toString() !== before) this.onChange('text');
    this.onChange('peers'); // lines move under the cursors
  }

  // -- the editor's side

  // The person changed the text from what it was to `value`.
  edited(value, caret) {
    const [index, deleted, inserted] = splice(this.text.toString(), value, caret);
    if (deleted) this.doc.transact(() => this.text.delete(index, deleted), TYPED);
    // A long paste in pieces, each its own update, so that no doc_update outgrows a frame.
    for (let at = 0; at < inserted.length;) {
      let end = Math.min(at + PASTE_PIECE, inserted.length);
      if (end < inserted.length && isHigh(inserted.charCodeAt(end - 1))) end -= 1;
      const piece = inserted.slice(at, end);
      this.doc.transact(() => this.text.insert(index + at, piece), TYPED);
      at = end;
    }
  }

  // Where the person's selection is, kept across others' edits.
  anchor(start, end) {
    return [start, end].map((index) => Y.createRelativePositionFromTypeIndex(this.text, index));
  }

  place(positions) {
    return positions.map((position) => {
      const absolute = Y.createAbsolutePositionFromRelativePosition(position, this.doc);
      return absolute ? absolute.index : this.text.length;
    });
  }

  // -- awareness: who else has it open, and where their cursor is

  present(start, end) {
    const [anchor, head] = this.anchor(start, end).map(Y.relativePositionToJSON);
    this.awareness.setLocalState({user: {name: this.me}, cursor: {anchor, head}});
  }

  leave() {
    if (this.awareness.getLocalState() === null) return;
    Y.removeAwarenessStates(this.awareness, [this.doc.clientID], 'local');
    this.sendAwareness(); // at once: the page may be going away
  }

  awarenessChanged({added, updated, removed}, origin) {
    if (origin === 'local') {
      this.scheduleAwareness();
    } else if (origin && origin.user) {
      // Someone new (their first state may follow an empty one, so not only `added`): tell
      // them where we are, or they would not know until we move.
      const newcomers = [...added, ...updated].filter((id) => !this.owners.has(id));
      for (const id of [...added, ...updated]) this.owners.set(id, origin.user);
      if (newcomers.length && this.awareness.getLocalState() !== null) this.scheduleAwareness();
    }
    for (const id of removed) this.owners.delete(id);
    this.onChange('peers');
  }

  scheduleAwareness() {
    this.awarenessTimer = this.awarenessTimer
      || setTimeout(() => this.sendAwareness(), AWARENESS_EVERY_MS);
  }

  sendAwareness() {
    clearTimeout(this.awarenessTimer);
    this.awarenessTimer = null;
    if (!this.awareness.meta.has(this.doc.clientID)) return;
    const update = Y.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]);
    this.connection.signal(this.message('awareness', {update: Y.toBase64(update)}));
  }

  // Others with the document open: [{user, line, selected}], by name.
  peers() {
    const text = this.text.toString();
    const peers = [];
    for (const [id, state] of this.awareness.getStates()) {
      if (id === this.doc.clientID || !state) continue;
      const user = this.owners.get(id) || (state.user && state.user.name) || 'someone';
      const peer = {user, line: null, selected: 0};
      if (state.cursor) {
        const [anchor, head] = this.place(
          [state.cursor.anchor, state.cursor.head].map(Y.createRelativePositionFromJSON),
        );
        peer.line = text.slice(0, head).split('\n').length;
        peer.selected = Math.abs(head - anchor);
      }
      peers.push(peer);
    }
    return peers.sort((a, b) => a.user.localeCompare(b.user));
  }
}

export function keyOf(roomId, docId) {
  return `${roomId}\n${docId}`;
}

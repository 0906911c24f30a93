// The ProductFlo web client: sign-in, rooms, messages, the assistant and the inbox, over the
// native WebSocket protocol (docs/protocol.md). Plain modules, no build step.

import {Connection, RESEND, State} from './connection.js';
import {DocsPanel} from './docpanel.js';
import {DOC_CODES} from './docs.js';
import {RoomView} from './room.js';

const ASKS = {'/haitch': 'haitch_chat', '/idea': 'idea', '/doc': 'documentation', '/eng': 'engineering'};
const IDENTITY_KEY = 'productflo:identity';
const PAGE = 50;
const TYPING_EVERY_MS = 3000; // at most one `typing: true` this often while typing goes on
const TYPING_IDLE_MS = 4000; // then `typing: false`
const TYPING_SHOWN_MS = 6000; // a received signal is shown this long unless renewed
const INBOX_KEPT = 100;
const USER_ID = /^[A-Za-z0-9_.@:+|=~-]{1,128}$/;

const $ = (id) => document.getElementById(id);

// ---- who is signed in, and what is kept for them --------------------------------------------

function tokenSubject(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const sub = JSON.parse(atob(payload)).sub;
    return typeof sub === 'string' ? sub : null;
  } catch {
    return null;
  }
}

function loadJson(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

// Everything kept for one user (position, outbox, open room, inbox), under one key.
class UserStore {
  constructor(identity) {
    this.key = `productflo:${identity.kind}:${identity.user}`;
  }

  get() {
    return loadJson(this.key, {});
  }

  update(changes) {
    localStorage.setItem(this.key, JSON.stringify({...this.get(), ...changes}));
  }

  load() {
    return this.get();
  }

  save(position) {
    this.update(position);
  }
}

// ---- the session of a signed-in user --------------------------------------------------------

class Client {
  constructor(identity) {
    this.identity = identity;
    this.me = identity.user;
    this.store = new UserStore(identity);
    this.rooms = new Map();
    this.open = null;
    this.notifications = new Map(); // event_id -> {event_id, message, details, at}
    this.reads = new Map(); // client_msg_id of a history request -> its room
    this.typingSentAt = 0;
    this.typingIdle = null;
    const url = identity.kind === 'token'
      ? `/ws/secure?access_token=${encodeURIComponent(identity.token)}`
      : `/ws?user_id=${encodeURIComponent(identity.user)}`;
    this.connection = new Connection(url, this.store, {
      onWelcome: (details) => this.welcomed(details),
      onEvent: (message) => this.received(message),
      onReplayDone: (details, replay) => this.replayDone(details, replay),
      onState: (state, detail) => this.stateChanged(state, detail),
      onStop: (code) => this.stopped(code),
    });
    this.docs = new DocsPanel(this);
  }

  start(requestedRoom, requestedDoc) {
    for (const item of this.store.get().inbox || []) this.notifications.set(item.event_id, item);
    for (const message of this.connection.outbox.values()) this.showUnsent(message);
    const room = requestedRoom || this.store.get().openRoom;
    if (room) this.openRoom(room, {join: Boolean(requestedRoom)});
    if (room && requestedDoc) this.docs.open(room, requestedDoc, {focus: false});
    this.renderInbox();
    if (this.identity.kind === 'token') this.fetchInbox();
    this.connection.start();
  }

  stop() {
    this.docs.stop();
    this.connection.close();
    clearTimeout(this.typingIdle);
  }

  room(id) {
    let room = this.rooms.get(id);
    if (!room) {
      room = new RoomView(id, this.me, {
        needOlder: (view) => this.loadOlder(view),
        openDoc: (docId) => this.docs.open(id, docId),
      });
      this.rooms.set(id, room);
      $('logs').append(room.list);
      this.renderRooms();
    }
    return room;
  }

  // -- the connection's news

  welcomed(details) {
    for (const id of details.rooms || []) this.room(id).member = true;
    if (this.wantsJoin && !this.room(this.wantsJoin).member) {
      this.connection.send({code: 'join', room_id: this.wantsJoin});
    }
    this.wantsJoin = null;
    if (this.open) this.loadNewest(this.room(this.open));
    this.renderRooms();
  }

  replayDone(details, {resumedFrom, firstReplayed}) {
    if (details.reset) {
      // Another log: what is shown belongs to it. Start over from history.
      for (const room of this.rooms.values()) room.clear();
      if (this.open) this.loadNewest(this.room(this.open));
      for (const message of this.connection.outbox.values()) this.showUnsent(message);
    } else if (details.truncated) {
      // Only the newest part of what was missed came: page back to where we were, in every room.
      for (const room of this.rooms.values()) {
        room.backfillTo = resumedFrom;
        room.cursor = room.cursor === null ? firstReplayed : Math.min(room.cursor, firstReplayed);
        this.loadOlder(room);
      }
    }
  }

  stateChanged(state, detail) {
    const text = {
      [State.CONNECTING]: 'Connecting…',
      [State.CATCHING_UP]: 'Catching up…',
      [State.LIVE]: 'Connected',
      [State.OFFLINE]: detail && detail.waitingForNetwork ? 'Offline' : 'Reconnecting…',
      [State.STOPPED]: 'Disconnected',
    }[state];
    const indicator = $('connection');
    indicator.dataset.state = state;
    indicator.textContent = text;
    $('catching-up').hidden = state !== State.CATCHING_UP;
    this.docs.stateChanged(state);
    const label = state === State.LIVE ? 'sending…' : 'waiting to send';
    for (const room of this.rooms.values()) room.labelUnsent(label);
  }

  stopped(code) {
    const why = {
      4401: 'The server did not accept your token (expired or invalid). Sign in again.',
      4403: 'This page\'s origin is not allowed to use your token.',
      1008: 'The server refused this connection (an invalid name, or too many messages).',
      1009: 'A message was too large for the server.',
    }[code] || `The connection was closed (${code}).`;
    // A refused token needs a new one: back to the sign-in, where the outbox waits for it.
    if (code === 4401) signOut(why);
    else $('connection').textContent = `Disconnected: ${why}`;
  }

  received(message) {
    const details = (message.data && message.data.details) || {};
    if (message.code === 'history') return this.historyPage(message);
    if (message.code === 'typing') return this.typingSignal(message);
    if (message.code === 'notification') return this.notified(message);
    if (DOC_CODES.has(message.code)) return this.docs.received(message);
    if (message.code === 'logs') {
      const room = message.room_id && this.room(message.room_id);
      if (!room) return;
      if (details.step === 'stream') return room.piece(details);
      return room.progress(details, message.data.message);
    }
    if (message.status === 'error' && message.code === 'system') return this.refused(message);
    const roomId = message.room_id || details.room_id;
    if (!roomId) return;
    const room = this.room(roomId);
    if (message.code === 'system' && details.user_id === this.me) {
      room.member = details.action === 'join';
    }
    const isNew = room.add(message, 'live');
    this.documentSeen(message);
    if (message.code === 'chat_response' || message.code === 'system') this.stopTyping(room, message.user_id);
    if (isNew && roomId !== this.open && message.user_id !== this.me && !details.action) {
      room.unread += 1;
    }
    this.renderRooms();
  }

  // An error envelope: beside the line it answers, else as a notice in the room it is about.
  refused(message) {
    const id = message.client_msg_id;
    const code = (message.data.details || {}).error_code;
    const outgoing = id ? this.connection.outbox.get(id) : undefined;
    const read = id ? this.reads.get(id) : undefined;
    if (read) {
      this.reads.delete(id);
      read.loading = false;
      read.setMore('');
    }
    if (outgoing && RESEND.has(code)) return; // not stored: the connection sends it again
    if (outgoing && DOC_CODES.has(outgoing.code)) return this.docs.refused(message);
    const roomId = (outgoing && outgoing.room_id) || (read && read.id) || this.open;
    if (!roomId) return;
    const room = this.room(roomId);
    if (!room.refused(message)) room.notice(message.data.message);
  }

  historyPage(message) {
    this.reads.delete(message.client_msg_id);
    const room = this.room(message.room_id);
    room.page(message.data);
    for (const event of message.data.events || []) this.documentSeen(event);
    this.renderRooms();
    if (room.wantsMore()) this.loadOlder(room);
  }

  // An assistant's document is one of the room's collaborative documents.
  documentSeen(message) {
    const docId = ((message.data && message.data.details) || {}).doc_id;
    if (message.code !== 'documentation_response' || typeof docId !== 'string') return;
    this.docs.seen(message.room_id, docId, (message.data.document || {}).title);
  }

  // -- rooms

  openRoom(id, {join = false} = {}) {
    const room = this.room(id);
    if (join && !room.member) this.wantsJoin = id;
    for (const other of this.rooms.values()) other.list.hidden = other !== room;
    this.open = id;
    room.unread = 0;
    this.store.update({openRoom: id});
    $('room-title').textContent = id;
    $('no-room').hidden = true;
    $('leave').hidden = false;
    $('docs-toggle').hidden = false;
    $('composer-text').disabled = false;
    $('composer-send').disabled = false;
    this.renderTyping();
    this.renderRooms();
    if (this.connection.userId !== null) this.loadNewest(room);
    room.list.scrollTop = room.list.scrollHeight;
    this.docs.roomOpened(id);
  }

  loadNewest(room) {
    if (room.loaded) return;
    room.loaded = true;
    room.loading = true;
    room.setMore('Loading messages…');
    this.read(room, {limit: PAGE});
  }

  loadOlder(room) {
    if (!room.loaded && room.backfillTo === null) return this.loadNewest(room);
    if (room.loading || !room.hasMore || room.cursor === null) return;
    room.loading = true;
    room.setMore('Loading older messages…');
    this.read(room, {before: room.cursor, limit: PAGE});
  }

  read(room, data) {
    this.reads.set(this.connection.request({code: 'history', room_id: room.id, data}), room);
  }

  join(id) {
    this.connection.send({code: 'join', room_id: id});
    this.openRoom(id);
  }

  leave() {
    if (this.open) this.connection.send({code: 'leave', room_id: this.open});
  }

  renderRooms() {
    const list = $('room-list');
    const focused = list.contains(document.activeElement) ? document.activeElement.dataset.room : null;
    const items = [...this.rooms.values()].sort((a, b) => a.id.localeCompare(b.id));
    list.replaceChildren(...items.map((room) => {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.room = room.id;
      const name = document.createElement('span');
      name.className = room.member ? 'room-name' : 'room-name left-room';
      name.textContent = room.id;
      button.append(name);
      let label = room.id;
      if (room.unread) {
        const badge = document.createElement('span');
        badge.className = 'badge unread';
        badge.textContent = String(room.unread);
        button.append(badge);
        label += `, ${room.unread} unread`;
      }
      if (!room.member) label += ' (not a member)';
      button.setAttribute('aria-label', label);
      if (room.id === this.open) button.setAttribute('aria-current', 'true');
      button.addEventListener('click', () => this.openRoom(room.id));
      item.append(button);
      return item;
    }));
    // Rebuilt on every event: a keyboard user's place in the list is kept.
    if (focused) list.querySelector(`button[data-room="${CSS.escape(focused)}"]`)?.focus();
    $('leave').textContent = this.open && this.room(this.open).member ? 'Leave' : 'Join';
  }

  // -- sending

  submit(text) {
    if (!this.open || !text.trim()) return false;
    const [word, ...rest] = text.trim().split(/\s+/);
    const code = ASKS[word.toLowerCase()];
    const message = code
      ? {code, room_id: this.open, data: {message: rest.join(' ')}}
      : {code: 'chat', room_id: this.open, data: {message: text}};
    if (!message.data.message) return false;
    this.typed(false);
    const id = this.connection.send(message);
    this.showUnsent({...message, client_msg_id: id});
    return true;
  }

  showUnsent(message) {
    if (!message.room_id || !message.data || typeof message.data.message !== 'string') return;
    const label = this.connection.live ? 'sending…' : 'waiting to send';
    this.room(message.room_id).unsentLine(message, label);
  }

  // The composer's typing signals: throttled, and ended when it goes quiet or sends.
  typed(typing) {
    clearTimeout(this.typingIdle);
    if (!this.open) return;
    const now = Date.now();
    if (typing) {
      if (now - this.typingSentAt >= TYPING_EVERY_MS) {
        this.typingSentAt = now;
        this.typingRoom = this.open;
        this.connection.signal({code: 'typing', room_id: this.open, data: {is_typing: true}});
      }
      this.typingIdle = setTimeout(() => this.typed(false), TYPING_IDLE_MS);
    } else if (this.typingSentAt) {
      this.typingSentAt = 0;
      this.connection.signal({code: 'typing', room_id: this.typingRoom, data: {is_typing: false}});
    }
  }

  typingSignal(message) {
    if (!message.room_id || message.user_id === this.me) return;
    const room = this.room(message.room_id);
    this.stopTyping(room, message.user_id);
    if (message.data && message.data.is_typing) {
      const timer = setTimeout(() => this.stopTyping(room, message.user_id), TYPING_SHOWN_MS);
      room.typing.set(message.user_id, timer);
    }
    this.renderTyping();
  }

  stopTyping(room, user) {
    if (!room.typing.has(user)) return;
    clearTimeout(room.typing.get(user));
    room.typing.delete(user);
    this.renderTyping();
  }

  renderTyping() {
    $('typing').textContent = this.open ? this.room(this.open).typingText() : '';
  }

  // -- the inbox

  notified(message) {
    const item = {
      event_id: message.event_id,
      message: message.data.message,
      details: message.data.details || {},
      at: message.timestamp,
    };
    this.remember([item]);
  }

  remember(items) {
    for (const item of items) if (Number.isInteger(item.event_id)) this.notifications.set(item.event_id, item);
    const kept = [...this.notifications.values()].sort((a, b) => b.event_id - a.event_id);
    if (this.identity.kind === 'guest') this.store.update({inbox: kept.slice(0, INBOX_KEPT)});
    this.renderInbox();
  }

  async fetchInbox() {
    try {
      const response = await fetch('/users/me/notifications', {
        headers: {Authorization: `Bearer ${this.identity.token}`},
      });
      if (!response.ok) return;
      const body = await response.json();
      const items = body.notifications.map((n) => ({
        event_id: n.event_id, message: n.message, details: n.details || {}, at: n.created_at,
        read: n.read,
      }));
      const seen = this.store.get().inboxSeen || 0;
      const read = items.filter((n) => n.read).reduce((top, n) => Math.max(top, n.event_id), 0);
      if (read > seen) this.store.update({inboxSeen: read});
      this.remember(items);
    } catch {
      // Offline: the live notifications still arrive over the socket.
    }
  }

  unseen() {
    const seen = this.store.get().inboxSeen || 0;
    return [...this.notifications.values()].filter((n) => n.event_id > seen).length;
  }

  renderInbox() {
    const items = [...this.notifications.values()].sort((a, b) => b.event_id - a.event_id);
    $('inbox-list').replaceChildren(...items.map((n) => {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'notification';
      const title = document.createElement('span');
      title.className = 'title';
      title.textContent = n.message;
      button.append(title);
      if (n.details.text) {
        const excerpt = document.createElement('span');
        excerpt.className = 'excerpt';
        excerpt.textContent = n.details.text;
        button.append(excerpt);
      }
      const roomId = n.details.room_id;
      if (roomId) {
        button.addEventListener('click', () => {
          showInbox(false);
          this.openRoom(roomId);
          if (typeof n.details.doc_id === 'string') this.docs.open(roomId, n.details.doc_id);
        });
      }
      item.append(button);
      return item;
    }));
    $('inbox-empty').hidden = items.length > 0;
    const count = this.unseen();
    const badge = $('inbox-badge');
    badge.hidden = count === 0;
    badge.textContent = String(count);
    $('inbox-button').setAttribute('aria-label', count ? `Inbox, ${count} new` : 'Inbox');
  }

  inboxOpened() {
    const newest = Math.max(0, ...this.notifications.keys());
    if (!newest) return;
    this.store.update({inboxSeen: newest});
    this.renderInbox();
    if (this.identity.kind === 'token') {
      fetch('/users/me/notifications/read', {
        method: 'POST',
        headers: {Authorization: `Bearer ${this.identity.token}`, 'Content-Type': 'application/json'},
        body: JSON.stringify({up_to: newest}),
      }).catch(() => {});
    }
  }
}

// ---- the page -------------------------------------------------------------------------------

let client = null;

function showInbox(show) {
  $('inbox').hidden = !show;
  $('inbox-button').setAttribute('aria-expanded', String(show));
  if (show) {
    client.inboxOpened();
    $('inbox-close').focus();
  } else {
    $('inbox-button').focus();
  }
}

function signIn(identity, room, doc) {
  localStorage.setItem(IDENTITY_KEY, JSON.stringify(identity));
  $('sign-in').hidden = true;
  $('workspace').hidden = false;
  for (const id of ['identity', 'inbox-button', 'sign-out']) $(id).hidden = false;
  $('identity').textContent = identity.kind === 'token'
    ? `Signed in as ${identity.user}`
    : `${identity.user} (guest)`;
  client = new Client(identity);
  client.start(room, doc);
  if (client.open && !client.docs.shown) $('composer-text').focus();
}

function signOut(error = '') {
  localStorage.removeItem(IDENTITY_KEY);
  if (client) client.stop();
  client = null;
  $('logs').replaceChildren($('no-room'));
  $('no-room').hidden = false;
  $('room-title').textContent = 'No room open';
  $('leave').hidden = true;
  $('docs-toggle').hidden = true;
  $('typing').textContent = '';
  $('composer-text').disabled = true;
  $('composer-send').disabled = true;
  showInbox(false);
  $('room-list').replaceChildren();
  showSignIn(error);
}

function showSignIn(error) {
  $('workspace').hidden = true;
  for (const id of ['identity', 'inbox-button', 'sign-out']) $(id).hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = error;
  $('connection').dataset.state = 'stopped';
  $('connection').textContent = 'Not signed in';
  $('sign-in-user').focus();
}

function wire() {
  $('sign-in-name').addEventListener('submit', (event) => {
    event.preventDefault();
    const user = $('sign-in-user').value.trim();
    if (!USER_ID.test(user) || user.toLowerCase() === 'haitch') {
      $('sign-in-error').textContent = 'That name cannot be used: pick another.';
      return;
    }
    signIn({kind: 'guest', user});
  });
  $('sign-in-token').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('sign-in-jwt').value.trim();
    const user = tokenSubject(token);
    if (!user) {
      $('sign-in-error').textContent = 'That does not look like a token (three parts, with a sub).';
      return;
    }
    signIn({kind: 'token', token, user});
  });
  $('sign-out').addEventListener('click', () => signOut());
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const room = $('join-room').value.trim();
    if (!client || !USER_ID.test(room)) return;
    client.join(room);
    $('join-room').value = '';
    $('composer-text').focus();
  });
  $('leave').addEventListener('click', () => {
    if (!client || !client.open) return;
    if (client.room(client.open).member) client.leave();
    else client.join(client.open);
  });
  const box = $('composer-text');
  box.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  box.addEventListener('input', () => {
    if (client) client.typed(box.value.length > 0);
  });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    if (client && client.submit(box.value)) box.value = '';
  });
  wireDocs();
  $('inbox-button').addEventListener('click', () => showInbox($('inbox').hidden));
  $('inbox-close').addEventListener('click', () => showInbox(false));
  addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !$('inbox').hidden) showInbox(false);
  });
}

function wireDocs() {
  $('docs-toggle').addEventListener('click', () => client && client.docs.toggle());
  $('docs-close').addEventListener('click', () => {
    if (!client) return;
    client.docs.showPanel(false);
    $('docs-toggle').focus();
  });
  $('doc-new').addEventListener('submit', (event) => {
    event.preventDefault();
    if (client && client.docs.create($('doc-name').value)) $('doc-name').value = '';
  });
  $('doc-close').addEventListener('click', () => {
    if (!client) return;
    client.docs.close();
    $('doc-name').focus();
  });
  const editor = $('doc-text');
  editor.addEventListener('input', () => client && client.docs.typed());
  for (const name of ['select', 'keyup', 'mouseup', 'focus']) {
    editor.addEventListener(name, () => client && client.docs.moved());
  }
  document.addEventListener('selectionchange', () => {
    if (client && document.activeElement === editor) client.docs.moved();
  });
}

function main() {
  wire();
  const params = new URLSearchParams(location.search);
  const linked = params.get('user_id');
  const room = params.get('room');
  const doc = params.get('doc');
  if (linked && USER_ID.test(linked)) return signIn({kind: 'guest', user: linked}, room, doc);
  const saved = loadJson(IDENTITY_KEY, null);
  if (saved && saved.user) return signIn(saved, room, doc);
  showSignIn('');
}

main();

// The socket to the server, kept alive: resume from the highest event_id seen (and the log_id),
// back off with full jitter while the server is away, and an outbox that keeps every message
// until its answer names its client_msg_id (docs/protocol.md, "Reconnecting").

const BASE_MS = 500;
const CAP_MS = 10000;
const RETRY_MS = 1000; // after FAILED_TO_PROCESS_MESSAGE or RATE_LIMITED: not stored, send again
// Closes that a reconnect cannot mend: a bad token (4401), a foreign origin (4403), abuse or an
// invalid user id (1008), a frame too large (1009). Anything else is a drop: come back.
const FATAL = new Set([1008, 1009, 4401, 4403]);
export const RESEND = new Set(['FAILED_TO_PROCESS_MESSAGE', 'RATE_LIMITED']);

export const State = Object.freeze({
  CONNECTING: 'connecting',
  CATCHING_UP: 'catching-up',
  LIVE: 'live',
  OFFLINE: 'offline',
  STOPPED: 'stopped',
});

export function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// `store` keeps the position and the outbox across reloads: {load(), save(saved)} where saved is
// {lastEventId, logId, outbox: [envelope, ...]}. Handlers: onWelcome(details), onEvent(message),
// onReplayDone(details, {resumedFrom, firstReplayed}), onState(state, detail), onStop(code).
export class Connection {
  constructor(url, store, handlers) {
    this.url = url;
    this.store = store;
    this.handlers = handlers;
    const saved = store.load();
    this.lastEventId = saved.lastEventId ?? null;
    this.logId = saved.logId ?? null;
    this.outbox = new Map((saved.outbox || []).map((m) => [m.client_msg_id, m]));
    this.requests = new Map(); // reads (history) waiting for their answer: resent on reconnect
    // Outbox messages that never went out from this page: one of them can still be amended (a
    // document's offline edits merged into one update). Those loaded from storage may have gone.
    this.untransmitted = new Set();
    this.socket = null;
    this.userId = null;
    this.attempt = 0;
    this.live = false;
    this.stopped = false;
    this.timer = null;
    this.resendTimer = null;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.drop();
    addEventListener('online', this.onOnline);
    addEventListener('offline', this.onOffline);
  }

  start() {
    this.open();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    removeEventListener('online', this.onOnline);
    removeEventListener('offline', this.onOffline);
    if (this.socket) this.socket.close(1000);
    this.setState(State.STOPPED);
  }

  setState(state, detail) {
    this.state = state;
    this.handlers.onState(state, detail);
  }

  open() {
    if (this.stopped) return;
    if (!navigator.onLine) {
      this.setState(State.OFFLINE, {waitingForNetwork: true});
      return; // the `online` event comes back here
    }
    const target = new URL(this.url, location.href);
    target.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const resumedFrom = this.lastEventId;
    if (resumedFrom !== null) {
      target.searchParams.set('last_event_id', String(resumedFrom));
      if (this.logId) target.searchParams.set('log_id', this.logId);
    }
    this.setState(State.CONNECTING);
    const socket = new WebSocket(target);
    this.socket = socket;
    let welcomed = false;
    let firstReplayed = null;
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      const message = JSON.parse(event.data);
      const details = (message.data && message.data.details) || {};
      if (!welcomed) {
        if (message.status === 'error') {
          this.handlers.onEvent(message);
          return; // refused: the close follows
        }
        welcomed = true;
        this.welcomed(details, resumedFrom);
        return;
      }
      if (message.code === 'system' && details.replay_complete) {
        this.replayDone(details, {resumedFrom, firstReplayed});
        return;
      }
      if (Number.isInteger(message.event_id)) {
        if (!this.live && firstReplayed === null) firstReplayed = message.event_id;
        this.lastEventId = Math.max(this.lastEventId ?? 0, message.event_id);
      }
      this.handlers.onEvent(message); // first: it may look up what the message answers
      this.settle(message);
      this.save();
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.live = false;
      if (this.stopped) return;
      if (FATAL.has(event.code)) {
        this.stopped = true;
        this.setState(State.STOPPED, {code: event.code});
        this.handlers.onStop(event.code, event.reason);
        return;
      }
      this.retryLater();
    };
  }

  welcomed(details, resumedFrom) {
    this.attempt = 0;
    this.userId = details.user_id;
    this.logId = details.log_id;
    for (const request of this.requests.values()) this.transmit(request); // lost with the drop
    this.handlers.onWelcome(details);
    if (resumedFrom === null) {
      // Everything after the welcome's position reaches this connection: start from there.
      this.lastEventId = details.last_event_id;
      this.save();
      this.goLive();
    } else {
      this.setState(State.CATCHING_UP);
    }
  }

  replayDone(details, replay) {
    if (details.reset) {
      this.lastEventId = details.last_event_id;
      this.logId = details.log_id;
    } else {
      this.lastEventId = Math.max(this.lastEventId ?? 0, details.last_event_id);
    }
    this.save();
    this.handlers.onReplayDone(details, replay);
    this.goLive();
  }

  goLive() {
    this.live = true;
    this.setState(State.LIVE);
    this.flush();
  }

  retryLater() {
    clearTimeout(this.timer);
    const delay = Math.random() * Math.min(CAP_MS, BASE_MS * 2 ** this.attempt); // full jitter
    this.attempt += 1;
    this.setState(State.OFFLINE, {retryAt: Date.now() + delay});
    this.timer = setTimeout(() => this.open(), delay);
  }

  reconnectNow() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.timer);
    this.open();
  }

  // The network went away: the socket may not notice for a long while, so let it go now.
  drop() {
    if (!this.socket) return;
    const socket = this.socket;
    this.socket = null;
    this.live = false;
    socket.close();
    clearTimeout(this.timer);
    this.setState(State.OFFLINE, {waitingForNetwork: true});
  }

  // Caught up: send everything unanswered, in the order first sent.
  flush() {
    for (const message of this.outbox.values()) this.transmit(message);
  }

  settle(message) {
    const id = message.client_msg_id;
    if (!id) return;
    this.requests.delete(id);
    if (message.user_id !== this.userId || !this.outbox.has(id)) return;
    const error = message.status === 'error' ? (message.data.details || {}).error_code : null;
    if (RESEND.has(error)) {
      this.resendTimer = this.resendTimer || setTimeout(() => {
        this.resendTimer = null;
        if (this.live) this.flush();
      }, RETRY_MS);
      return;
    }
    this.outbox.delete(id); // stored, answered, or refused for good
  }

  transmit(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
      this.untransmitted.delete(message.client_msg_id);
    }
  }

  // A message to keep until answered (chat, the assistant, join, leave); its client_msg_id.
  send(envelope) {
    const message = {client_msg_id: newId(), ...envelope};
    this.outbox.set(message.client_msg_id, message);
    this.untransmitted.add(message.client_msg_id);
    this.save();
    if (this.live) this.transmit(message);
    return message.client_msg_id;
  }

  // Change a message of the outbox that has not gone out yet: `change(message)` gives its new
  // version, under the same client_msg_id, or null to leave it. False when it has gone (or may
  // have), or was left: send another.
  amend(id, change) {
    if (!this.untransmitted.has(id) || !this.outbox.has(id)) return false;
    const changed = change(this.outbox.get(id));
    if (!changed) return false;
    this.outbox.set(id, {...changed, client_msg_id: id});
    this.save();
    return true;
  }

  // A read (history): answered at any time after the welcome, asked again after a reconnect.
  request(envelope) {
    const message = {client_msg_id: newId(), ...envelope};
    this.requests.set(message.client_msg_id, message);
    if (this.socket && this.userId !== null) this.transmit(message);
    return message.client_msg_id;
  }

  // A signal (typing): sent now or never.
  signal(envelope) {
    if (this.live) this.transmit(envelope);
  }

  save() {
    this.store.save({
      lastEventId: this.lastEventId,
      logId: this.logId,
      outbox: [...this.outbox.values()],
    });
  }
}

// The document panel of the room view: the open room's documents, one of them in a shared text
// editor (a <textarea> bound to its Y.Text), and who else is in it, with their cursor's line.

import {SharedDoc, docIdOf, keyOf, titleOf} from './docs.js';
import {State} from './connection.js';

const $ = (id) => document.getElementById(id);
const LISTED_KEPT = 50; // documents remembered per room, for a guest who cannot list them

export class DocsPanel {
  // `client`: the signed-in session (app.js): its connection, store, identity and open room.
  constructor(client) {
    this.client = client;
    this.docs = new Map(); // keyOf(room, doc) -> SharedDoc, every one opened on this page
    this.shown = null; // the SharedDoc in the editor
    this.caret = null; // the editor's selection, as Yjs relative positions
    this.listed = new Map(); // room -> Map(doc_id -> title), from the API and what was seen
    this.onPageHide = () => this.pageHidden();
    addEventListener('pagehide', this.onPageHide);
  }

  stop() {
    removeEventListener('pagehide', this.onPageHide);
    this.pageHidden();
    this.shown = null;
    this.showPanel(false);
    $('doc-editor').hidden = true;
  }

  get connection() {
    return this.client.connection;
  }

  // -- which documents a room has

  roomOpened(roomId) {
    if (this.shown && this.shown.roomId !== roomId) this.close();
    if (!$('docs').hidden) this.reopen({focus: false});
    this.renderList();
    this.fetchList(roomId);
  }

  // The document last open in the room, if any, back in the editor.
  reopen(options) {
    const roomId = this.client.open;
    const remembered = roomId && (this.client.store.get().docsOpen || {})[roomId];
    if (!this.shown && remembered) this.open(roomId, remembered, options);
  }

  known(roomId) {
    let docs = this.listed.get(roomId);
    if (!docs) {
      const kept = (this.client.store.get().docsSeen || {})[roomId] || [];
      docs = new Map(kept.map(([id, title]) => [id, title]));
      this.listed.set(roomId, docs);
    }
    return docs;
  }

  // A document of the room this page has heard of: opened, answered by the assistant, updated.
  seen(roomId, docId, title = '') {
    const docs = this.known(roomId);
    if (docs.has(docId) && (!title || docs.get(docId) === title)) return;
    docs.set(docId, title || docs.get(docId) || '');
    const seenAll = this.client.store.get().docsSeen || {};
    seenAll[roomId] = [...docs].slice(-LISTED_KEPT);
    this.client.store.update({docsSeen: seenAll});
    if (roomId === this.client.open) this.renderList();
  }

  // A token user can ask the server for the room's documents; a guest has only what was seen.
  async fetchList(roomId) {
    const identity = this.client.identity;
    if (identity.kind !== 'token') return;
    try {
      const response = await fetch(`/rooms/${encodeURIComponent(roomId)}/docs`, {
        headers: {Authorization: `Bearer ${identity.token}`},
      });
      if (!response.ok) return;
      for (const doc of (await response.json()).docs) this.seen(roomId, doc.doc_id, doc.title);
    } catch {
      // Offline: the list is what was kept.
    }
  }

  renderList() {
    const roomId = this.client.open;
    const docs = roomId ? [...this.known(roomId)] : [];
    const list = $('doc-list');
    const active = document.activeElement;
    const focused = list.contains(active) ? active.dataset.doc : null;
    list.replaceChildren(...docs.sort(([a], [b]) => a.localeCompare(b)).map(([id, title]) => {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.doc = id;
      const shared = this.docs.get(keyOf(roomId, id));
      const name = document.createElement('span');
      name.textContent = (shared && titleOf(shared.text.toString())) || title || id;
      button.append(name);
      if (name.textContent !== id) {
        const docId = document.createElement('span');
        docId.className = 'doc-id';
        docId.textContent = id;
        button.append(docId);
      }
      if (this.shown && this.shown.key === keyOf(roomId, id)) {
        button.setAttribute('aria-current', 'true');
      }
      button.addEventListener('click', () => this.open(roomId, id));
      item.append(button);
      return item;
    }));
    // Rebuilt as the titles change: a keyboard user's place in the list is kept.
    if (focused) list.querySelector(`button[data-doc="${CSS.escape(focused)}"]`)?.focus();
    $('doc-list-empty').hidden = docs.length > 0;
  }

  // -- the panel and its editor

  showPanel(show) {
    $('docs').hidden = !show;
    $('docs-toggle').setAttribute('aria-expanded', String(show));
  }

  toggle() {
    const show = $('docs').hidden;
    this.showPanel(show);
    if (!show) return;
    this.reopen({focus: false});
    if (this.client.open) this.fetchList(this.client.open); // what others made since
    (this.shown ? $('doc-text') : $('doc-name')).focus();
  }

  // Open a document by the name a person typed (a new one opens empty).
  create(name) {
    const docId = docIdOf(name);
    if (!docId || !this.client.open) {
      $('doc-problem').textContent = 'A document name needs letters or digits.';
      return false;
    }
    this.open(this.client.open, docId);
    return true;
  }

  open(roomId, docId, {focus = true} = {}) {
    if (roomId !== this.client.open) this.client.openRoom(roomId);
    if (this.shown && this.shown.key !== keyOf(roomId, docId)) this.close();
    this.seen(roomId, docId);
    let shared = this.docs.get(keyOf(roomId, docId));
    if (!shared) {
      const onChange = (what) => this.changed(shared, what);
      shared = new SharedDoc(roomId, docId, this.client.me, this.connection, onChange);
      this.docs.set(shared.key, shared);
      if (this.connection.live) shared.open(); // else when the connection is live
    }
    this.shown = shared;
    this.caret = null;
    this.sentCaret = null;
    const open = this.client.store.get().docsOpen || {};
    this.client.store.update({docsOpen: {...open, [roomId]: docId}});
    this.showPanel(true);
    $('doc-problem').textContent = '';
    $('doc-editor').hidden = false;
    $('doc-title').textContent = docId;
    this.render();
    this.renderList();
    if (focus) $('doc-text').focus();
  }

  close() {
    const shared = this.shown;
    if (!shared) return;
    shared.flush();
    shared.leave();
    this.shown = null;
    this.caret = null;
    this.sentCaret = null;
    $('doc-editor').hidden = true;
    const open = this.client.store.get().docsOpen || {};
    delete open[shared.roomId];
    this.client.store.update({docsOpen: open});
    this.renderList();
  }

  pageHidden() {
    for (const shared of this.docs.values()) shared.flush();
    if (this.shown) this.shown.leave();
  }

  // The person typed: their change into the Y.Text, their cursor to the others.
  typed() {
    const shared = this.shown;
    if (!shared || !shared.synced) return;
    const box = $('doc-text');
    shared.edited(box.value, box.selectionEnd);
    this.moved();
  }

  moved() {
    const shared = this.shown;
    if (!shared || !shared.synced) return;
    const box = $('doc-text');
    const [start, end] = [box.selectionStart, box.selectionEnd];
    this.caret = shared.anchor(start, end);
    this.caretDirection = box.selectionDirection;
    if (this.sentCaret && this.sentCaret[0] === start && this.sentCaret[1] === end
        && this.sentCaret[2] === shared.text.length) return;
    this.sentCaret = [start, end, shared.text.length];
    const [anchor, head] = box.selectionDirection === 'backward' ? [end, start] : [start, end];
    shared.present(anchor, head);
  }

  // -- what the connection brings

  received(message) {
    const docId = message.data && message.data.doc_id;
    if (!message.room_id || typeof docId !== 'string') return;
    if (message.code === 'doc_update') this.seen(message.room_id, docId);
    const shared = this.docs.get(keyOf(message.room_id, docId));
    if (!shared) return;
    shared.received(message);
    // Our own update back is its acknowledgement: the outbox lets it go right after this.
    if (shared === this.shown) queueMicrotask(() => this.renderStatus());
  }

  // An edit the server refused for good (not a Yjs update, too large): said in the panel.
  refused(message) {
    $('doc-problem').textContent = message.data.message;
    this.renderStatus();
  }

  stateChanged(state) {
    if (state === State.LIVE) {
      for (const shared of this.docs.values()) shared.open();
      if (this.client.open) this.fetchList(this.client.open);
    }
    this.renderStatus();
  }

  changed(shared, what) {
    if (shared !== this.shown) {
      if (what === 'text') this.renderList();
      return;
    }
    if (what === 'text') this.render();
    else if (what === 'peers') this.renderPeers();
    else this.renderStatus();
  }

  // The editor shows the Y.Text; the person's selection stays on the characters it was on.
  render() {
    const shared = this.shown;
    const box = $('doc-text');
    box.readOnly = !shared.synced;
    const text = shared.text.toString();
    if (box.value !== text) {
      const scroll = box.scrollTop;
      box.value = text;
      if (this.caret) {
        const [start, end] = shared.place(this.caret);
        box.setSelectionRange(Math.min(start, end), Math.max(start, end), this.caretDirection);
      }
      box.scrollTop = scroll;
    }
    if (shared.synced && !this.caret) this.moved(); // present to the others from the start
    this.renderStatus();
    this.renderPeers();
    this.renderList();
  }

  renderStatus() {
    const shared = this.shown;
    if (!shared) return;
    let status;
    if (!shared.synced) status = 'Loading…';
    else if (!shared.unsaved()) status = 'All changes saved';
    else if (this.connection.live) status = 'Saving…';
    else status = 'Offline: changes waiting to send';
    if ($('doc-status').textContent !== status) $('doc-status').textContent = status;
  }

  renderPeers() {
    const shared = this.shown;
    const peers = shared ? shared.peers() : [];
    $('doc-peers').replaceChildren(...peers.map((peer) => {
      const item = document.createElement('li');
      let where = peer.line === null ? 'viewing' : `line ${peer.line}`;
      if (peer.selected) where += `, ${peer.selected} selected`;
      item.textContent = `${peer.user} — ${where}`;
      return item;
    }));
    $('doc-peers-empty').hidden = peers.length > 0;
  }
}

// One room's message list: every event once (keyed by event_id), in log order whichever way it
// came (live, replayed, or a history page), the user's own unsent messages after them, and the
// assistant's answer streamed into one bubble that its stored version then completes.

import {render} from './markdown.js';

export const ASK_LABELS = {
  haitch_chat: 'asked haitch:',
  idea: 'asked haitch for ideas:',
  documentation: 'asked haitch for a document:',
  engineering: 'asked haitch (engineering):',
};
const ANSWER_CODES = new Set([
  'chat_response', 'idea_response', 'documentation_response', 'engineering_response',
]);
const UNSENT = 1e15; // after every event_id: unsent messages follow the log, in the order typed
const NOTICE = 2e15; // after the unsent lines
const MENTION = /(^|[^\w@])(@[A-Za-z0-9_][A-Za-z0-9_.:+|=~-]*)/g;

function time(timestamp) {
  const node = document.createElement('time');
  const moment = timestamp ? new Date(timestamp) : new Date();
  node.dateTime = moment.toISOString();
  node.textContent = moment.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
  node.title = moment.toLocaleString();
  return node;
}

function plainText(node, text) {
  // Text nodes only; mentions stand out.
  let last = 0;
  for (const match of text.matchAll(MENTION)) {
    const start = match.index + match[1].length;
    node.append(text.slice(last, start));
    const mention = document.createElement('span');
    mention.className = 'mention';
    mention.textContent = match[2];
    node.append(mention);
    last = start + match[2].length;
  }
  node.append(text.slice(last));
}

export class RoomView {
  constructor(id, me, hooks) {
    this.id = id;
    this.me = me;
    this.hooks = hooks; // {needOlder(room), openDoc(docId)}
    this.list = document.createElement('ol');
    this.list.className = 'messages';
    this.list.setAttribute('role', 'log');
    this.list.setAttribute('aria-label', `Messages in ${id}`);
    this.list.tabIndex = 0;
    this.list.hidden = true;
    this.list.dataset.room = id;
    this.more = document.createElement('li');
    this.more.className = 'more';
    this.more.dataset.order = '-1';
    this.list.append(this.more);
    this.list.addEventListener('scroll', () => this.scrolled());
    this.byEvent = new Map(); // event_id -> its line
    this.byClient = new Map(); // client_msg_id -> this user's line for it
    this.answers = new Map(); // request event_id -> {line, text, done, next}
    this.unsent = 0;
    this.clear();
    this.unread = 0;
    this.member = false;
    this.typing = new Map(); // user -> timer
  }

  clear() {
    for (const line of [...this.list.children]) if (line !== this.more) line.remove();
    this.noticeLine = null;
    this.byEvent.clear();
    this.byClient.clear();
    this.answers.clear();
    this.cursor = null; // the oldest event_id a history page gave
    this.hasMore = true;
    this.loaded = false; // its newest page asked for on this page load
    this.loading = false;
    this.backfillTo = null;
    this.setMore('');
  }

  setMore(text) {
    this.more.textContent = text;
    this.more.hidden = !text;
  }

  // Keep the reader where they are: at the bottom when they were there, else on what they saw.
  place(line, order) {
    line.dataset.order = String(order);
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const fromBottom = list.scrollHeight - list.scrollTop;
    let next = null;
    for (let node = list.lastElementChild; node && Number(node.dataset.order) > order;) {
      next = node;
      node = node.previousElementSibling;
    }
    list.insertBefore(line, next);
    if (atBottom || line.classList.contains('own') && order >= UNSENT) {
      list.scrollTop = list.scrollHeight;
    } else if (next !== null) {
      list.scrollTop = list.scrollHeight - fromBottom; // a line above what is on screen
    }
  }

  line(kinds, sender, timestamp) {
    const line = document.createElement('li');
    line.className = `msg ${kinds}`;
    const meta = document.createElement('div');
    meta.className = 'meta';
    const who = document.createElement('span');
    who.className = 'sender';
    who.textContent = sender;
    meta.append(who, time(timestamp));
    const text = document.createElement('div');
    text.className = 'text';
    line.append(meta, text);
    if (sender === this.me) line.classList.add('own');
    return line;
  }

  note(line, kind, text) {
    let node = line.querySelector(`.${kind}`);
    if (!text) {
      if (node) node.remove();
      return;
    }
    if (!node) {
      node = document.createElement('p');
      node.className = kind;
      if (kind === 'problem') node.setAttribute('role', 'alert');
      line.append(node);
    }
    node.textContent = text;
  }

  // A message of this user's, not answered yet (typed offline, or on its way).
  unsentLine(message, label) {
    if (this.byClient.has(message.client_msg_id)) return;
    const ask = ASK_LABELS[message.code];
    const line = this.line(`pending ${ask ? 'request' : 'chat'}`, this.me, null);
    if (ask) line.querySelector('.text').dataset.ask = ask;
    plainText(line.querySelector('.text'), message.data.message);
    const state = document.createElement('span');
    state.className = 'state';
    state.textContent = label;
    line.querySelector('.meta').append(state);
    line.dataset.clientMsgId = message.client_msg_id;
    this.byClient.set(message.client_msg_id, line);
    this.unsent += 1;
    this.place(line, UNSENT + this.unsent);
  }

  labelUnsent(label) {
    for (const state of this.list.querySelectorAll('.pending .state')) state.textContent = label;
  }

  // An event of the room (or an answer to this user about it); true when it is new to the list.
  add(message, origin) {
    const id = message.event_id;
    if (Number.isInteger(id) && this.byEvent.has(id)) {
      this.settled(message, this.byEvent.get(id));
      return false;
    }
    const details = (message.data && message.data.details) || {};
    if (message.status === 'error' && ANSWER_CODES.has(message.code)) {
      this.answerFailed(message, details);
    } else if (ANSWER_CODES.has(message.code) && message.data.in_reply_to) {
      this.answered(message);
    } else if (message.code === 'chat_response') {
      this.stored(message, 'chat', message.data.message);
    } else if (message.code === 'system' && details.action) {
      const line = this.stored(message, 'membership', message.data.message, true);
      line.querySelector('.sender').remove();
    } else if (message.status === 'pending' && ASK_LABELS[message.code]) {
      const line = this.stored(message, 'request', message.data.message);
      line.querySelector('.text').dataset.ask = ASK_LABELS[message.code];
      const answered = this.answers.get(id);
      if (origin === 'live' && message.user_id === this.me && !(answered && answered.done)) {
        this.note(line, 'progress', 'haitch is working on it…');
      }
    } else {
      return false;
    }
    return true;
  }

  // A stored event's line, or this user's unsent line now stored.
  stored(message, kind, text, membership = false) {
    const mine = message.user_id === this.me ? this.byClient.get(message.client_msg_id) : null;
    let line = mine;
    if (line) {
      line.classList.remove('pending');
      line.querySelector('.state')?.remove();
      line.querySelector('time').replaceWith(time(message.timestamp));
    } else {
      line = this.line(kind, message.user_id, message.timestamp);
      if (membership) line.querySelector('.text').textContent = text;
      else plainText(line.querySelector('.text'), text || '');
    }
    line.dataset.eventId = String(message.event_id);
    this.byEvent.set(message.event_id, line);
    this.place(line, message.event_id);
    return line;
  }

  // An event already shown: an unsent copy of it (a resend's answer) goes.
  settled(message, line) {
    if (!line) return;
    const mine = message.user_id === this.me ? this.byClient.get(message.client_msg_id) : null;
    if (mine && mine !== line) {
      mine.remove();
      this.byClient.set(message.client_msg_id, line);
    }
  }

  // An error answering one of this user's messages, shown beside it.
  refused(message) {
    const line = this.byClient.get(message.client_msg_id);
    if (!line) return false;
    line.classList.add('failed');
    line.querySelector('.state')?.replaceChildren('not sent');
    this.note(line, 'problem', message.data.message);
    return true;
  }

  // A refusal no line of this room answers (a join, a history read): one notice, the latest.
  notice(text) {
    if (!this.noticeLine) {
      this.noticeLine = this.line('membership notice', '', null);
      this.noticeLine.querySelector('.sender').remove();
      this.noticeLine.setAttribute('role', 'alert');
    }
    this.noticeLine.querySelector('.text').textContent = text;
    this.place(this.noticeLine, NOTICE);
  }

  answer(requestId) {
    let answer = this.answers.get(requestId);
    if (!answer) {
      const line = this.line('answer', 'haitch', null);
      line.setAttribute('aria-busy', 'true');
      answer = {line, text: '', done: false, next: 0};
      this.answers.set(requestId, answer);
      this.place(line, requestId + 0.5); // right after the request, until it is stored
    }
    return answer;
  }

  // A piece of an answer as it streams (not stored): shown until the stored answer comes.
  piece(details) {
    const answer = this.answer(details.in_reply_to);
    if (answer.done) return; // the stored answer overtook its last pieces
    if (details.sequence === 0 && answer.next > 0) answer.text = ''; // streamed again
    answer.next = (details.sequence ?? answer.next) + 1;
    answer.text += details.delta || '';
    this.show(answer, answer.text);
  }

  answered(message) {
    const data = message.data;
    const answer = this.answer(data.in_reply_to.event_id);
    answer.done = true;
    answer.line.removeAttribute('aria-busy');
    const text = data.document ? `**${data.message}**\n\n${data.document.content}` : data.message;
    this.show(answer, text || '');
    answer.line.querySelector('time').replaceWith(time(message.timestamp));
    answer.line.dataset.eventId = String(message.event_id);
    this.byEvent.set(message.event_id, answer.line);
    this.place(answer.line, message.event_id);
    const request = this.byEvent.get(data.in_reply_to.event_id);
    if (request) this.note(request, 'progress', '');
    const docId = (data.details || {}).doc_id;
    if (typeof docId === 'string' && !answer.line.querySelector('.open-doc')) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'open-doc';
      button.textContent = 'Edit together';
      button.setAttribute('aria-label', `Edit ${data.document ? data.document.title : docId} together`);
      button.addEventListener('click', () => this.hooks.openDoc(docId));
      answer.line.append(button);
    }
  }

  show(answer, text) {
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    answer.line.querySelector('.text').replaceChildren(render(text));
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  progress(details, text) {
    const request = this.byEvent.get(details.in_reply_to);
    const answer = this.answers.get(details.in_reply_to);
    if (request && !(answer && answer.done)) this.note(request, 'progress', `haitch: ${text}`);
  }

  answerFailed(message, details) {
    const request = this.byEvent.get(details.in_reply_to) || this.byClient.get(message.client_msg_id);
    this.byEvent.set(message.event_id, request || null);
    if (!request) return;
    this.note(request, 'progress', '');
    this.note(request, 'problem', `haitch could not answer: ${message.data.message}`);
  }

  // A history page: its events, and where the next older page starts.
  page(data) {
    const events = data.events || [];
    for (const event of events) this.add(event, 'history');
    const first = events.length ? events[0].event_id : null;
    if (first !== null) this.cursor = this.cursor === null ? first : Math.min(this.cursor, first);
    this.hasMore = Boolean(data.has_more) && first !== null;
    this.loading = false;
    this.setMore(this.hasMore ? '' : 'The start of the room.');
    if (this.backfillTo !== null && (!this.hasMore || this.cursor <= this.backfillTo)) {
      this.backfillTo = null;
    }
  }

  scrolled() {
    if (this.list.scrollTop < 80) this.hooks.needOlder(this);
  }

  // After a page: ask for more while the list does not fill its box or a backfill is under way.
  wantsMore() {
    if (!this.hasMore || this.loading) return false;
    return this.backfillTo !== null || this.list.scrollHeight <= this.list.clientHeight + 80;
  }

  typingText() {
    const who = [...this.typing.keys()];
    if (!who.length) return '';
    if (who.length === 1) return `${who[0]} is typing…`;
    return `${who.slice(0, -1).join(', ')} and ${who.at(-1)} are typing…`;
  }
}

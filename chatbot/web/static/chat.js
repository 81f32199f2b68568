// The chat page: sessions in the sidebar, a model picker, streamed replies, the live queue
// position, stop, export. Everything goes through the public API (./api.js); all text shown
// is either set with textContent or rendered from escaped text by ./markdown.js.
import * as api from './api.js';
import { render } from './markdown.js';

const $ = (id) => document.getElementById(id);
const els = Object.fromEntries(['sessions', 'no-sessions', 'more-sessions', 'search', 'show-archived',
  'new-chat', 'key-box', 'forget-key', 'session-title', 'model', 'export-md', 'export-json',
  'notice', 'notice-text', 'notice-close', 'messages', 'composer', 'prompt', 'options', 'send',
  'stop', 'key-dialog', 'key-form', 'key', 'key-error', 'open-sidebar', 'close-sidebar']
  .map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), $(id)]));

const PER_PAGE = 30;
const TITLE_WAIT_MS = 8000; // how long a new session's title is waited for (AUTO_TITLES)
const AUTO_TITLES = document.body.dataset.autoTitles === 'true';
const state = { sessionId: null, page: 1, listed: 0, truncations: 0, turn: null };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : '');

// --- errors: a missing or refused key opens the key dialog; anything else is a notice ----

function guard(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      if (error instanceof api.Unauthorized) askKey(api.key.get() ? 'That key was refused.' : '');
      else notify(`Error: ${error.message}`);
    }
  };
}

function notify(text, kind = 'info') {
  els.noticeText.textContent = text;
  els.notice.dataset.kind = kind;
  els.notice.hidden = false;
}

function askKey(error = '') {
  els.keyError.textContent = error;
  els.key.value = '';
  if (!els.keyDialog.open) els.keyDialog.showModal();
  els.key.focus();
}

// --- start ---------------------------------------------------------------------------------

async function boot() {
  await loadModels(); // the first call that needs a key: a 401 here asks for one
  els.keyBox.hidden = !api.key.get();
  await loadSessions();
  const id = location.hash.slice(1);
  if (id) await openSession(id);
}

async function loadModels() {
  const { models = [] } = await api.json('/api/tags');
  const wanted = localStorage.getItem('chatbot.model');
  els.model.replaceChildren(...models.map((m) => new Option(m.name || m.model, m.name || m.model)));
  if (models.some((m) => (m.name || m.model) === wanted)) els.model.value = wanted;
  if (!models.length) els.model.append(new Option('no models', '', true, true));
}

// --- the sidebar ---------------------------------------------------------------------------

async function loadSessions(more = false) {
  state.page = more ? state.page + 1 : 1;
  const query = new URLSearchParams({ page: state.page, per_page: PER_PAGE,
    archived: els.showArchived.checked ? 'true' : 'false' });
  if (els.search.value.trim()) query.set('q', els.search.value.trim());
  const asked = ++state.listed;
  const data = await api.json(`/api/sessions?${query}`);
  if (asked !== state.listed) return; // a newer listing (typing in search) was asked for
  const items = data.sessions.map(sessionItem);
  if (more) els.sessions.append(...items);
  else els.sessions.replaceChildren(...items);
  els.noSessions.hidden = els.sessions.children.length > 0;
  els.moreSessions.hidden = data.page * data.per_page >= data.total;
}

function sessionItem(session) {
  const li = document.createElement('li');
  li.className = 'session';
  li.dataset.id = session.id;
  li.classList.toggle('current', session.id === state.sessionId);
  const open = button('open', '', () => openSession(session.id));
  const title = document.createElement('span');
  title.className = 'title';
  title.textContent = titleOf(session);
  const info = document.createElement('small');
  info.textContent = `${when(session.last_access)} · ${session.message_count} messages`;
  open.append(title, info);
  if (session.match) { // found by what was said: the words around it
    const said = document.createElement('small');
    said.className = 'match';
    said.textContent = session.match.snippet;
    open.append(said);
  }
  const actions = document.createElement('div');
  actions.className = 'actions';
  actions.append(
    button('rename', 'Rename', () => rename(li, session)),
    button('archive', session.archived ? 'Restore' : 'Archive', async () => {
      await api.json(`/api/sessions/${session.id}/${session.archived ? 'restore' : 'archive'}`,
        { method: 'POST' });
      await loadSessions();
    }),
    button('delete', 'Delete', async () => {
      if (!confirm(`Delete "${titleOf(session)}" and its messages?`)) return;
      await api.json(`/api/sessions/${session.id}`, { method: 'DELETE' });
      if (session.id === state.sessionId) newChat();
      await loadSessions();
    }));
  li.append(open, actions);
  return li;
}

function button(className, text, action) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = className;
  b.textContent = text;
  b.addEventListener('click', guard(action));
  return b;
}

const titleOf = (s) => s.title || `Untitled (${s.id.slice(0, 8)})`;

function rename(li, session) {
  const input = document.createElement('input');
  input.className = 'rename-input';
  input.value = session.title || '';
  input.setAttribute('aria-label', 'New title');
  li.querySelector('.open').replaceWith(input);
  input.focus();
  let done = false;
  const save = guard(async (keep) => {
    if (done) return;
    done = true;
    if (keep) await api.json(`/api/sessions/${session.id}`, { method: 'PATCH', body: { title: input.value.trim() || null } });
    await loadSessions();
    if (keep && session.id === state.sessionId) els.sessionTitle.textContent = input.value.trim() || titleOf(session);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') save(true);
    else if (e.key === 'Escape') save(false);
  });
  input.addEventListener('blur', () => save(true));
}

// --- a session's messages ------------------------------------------------------------------

function newChat() {
  state.sessionId = null;
  state.truncations = 0;
  history.replaceState(null, '', location.pathname);
  els.messages.replaceChildren();
  els.notice.hidden = true;
  els.sessionTitle.textContent = 'New chat';
  els.exportMd.disabled = els.exportJson.disabled = true;
  markCurrent();
  els.prompt.focus();
}

async function sessionMessages(id) {
  const messages = [];
  let info;
  for (let page = 1; page <= 50; page++) { // 100 a page: up to 5,000 messages
    info = await api.json(`/api/sessions/${encodeURIComponent(id)}?per_page=100&page=${page}`);
    messages.push(...info.messages);
    if (page * info.per_page >= info.total) break;
  }
  return { info, messages };
}

// After a turn: the messages on screen get their ids and branch controls, as stored.
async function attachControls(id) {
  const { messages } = await sessionMessages(id);
  const views = [...els.messages.querySelectorAll('article.message')];
  if (id !== state.sessionId) return;
  if (views.length !== messages.length) return openSession(id);
  state.messages = messages;
  views.forEach((el, i) => {
    if (el.querySelector('.branch')) return;
    withBranchControls({ el, head: el.querySelector('header'), body: el.querySelector('.body') },
      messages[i]);
  });
}

async function openSession(id) {
  const { info, messages } = await sessionMessages(id);
  state.sessionId = info.id;
  state.truncations = info.meta?.truncations || 0;
  history.replaceState(null, '', `#${info.id}`);
  els.sessionTitle.textContent = titleOf(info);
  els.exportMd.disabled = els.exportJson.disabled = false;
  state.messages = messages;
  els.messages.replaceChildren(...messages.map((m) => withBranchControls(messageView(m), m).el));
  els.notice.hidden = true;
  const last = messages.at(-1)?.model;
  if (last && [...els.model.options].some((o) => o.value === last)) els.model.value = last;
  markCurrent();
  document.body.classList.remove('sidebar-open');
  scrollDown(true);
}

// --- branches: edit a sent message, regenerate a reply, step between siblings ----------------

// The messages of the active path before `message`, as the model saw them.
function pathBefore(message) {
  const path = state.messages.filter((m) => m.status === 'ok' && m.model === message.model);
  return path.slice(0, path.findIndex((m) => m.id === message.id))
    .map(({ role, content }) => ({ role, content }));
}

function withBranchControls(view, message) {
  if (message.status !== 'ok' || !message.id) return view;
  const tools = document.createElement('span');
  tools.className = 'branch';
  const siblings = message.siblings;
  if (siblings) {
    const at = siblings.ids.indexOf(message.id);
    const step = (to) => async () => {
      await api.json(`/api/sessions/${state.sessionId}/branch`,
        { method: 'POST', body: { message_id: siblings.ids[to] } });
      await openSession(state.sessionId);
    };
    const prev = button('prev', '‹', step(at - 1));
    const next = button('next', '›', step(at + 1));
    prev.disabled = at === 0;
    next.disabled = at === siblings.count - 1;
    const where = document.createElement('span');
    where.className = 'where';
    where.textContent = `${at + 1}/${siblings.count}`;
    tools.append(prev, where, next);
  }
  if (message.role === 'user') {
    tools.append(button('edit', 'Edit', () => edit(view, message)));
  } else if (message.role === 'assistant') {
    tools.append(button('regenerate', 'Regenerate', () => rerun(view, message)));
  }
  view.head.append(tools);
  return view;
}

function cutFrom(view) { // this message and everything after it leave the screen
  while (view.el.nextSibling) view.el.nextSibling.remove();
  view.el.remove();
}

function edit(view, message) {
  if (state.turn) return;
  const box = document.createElement('textarea');
  box.className = 'edit-input';
  box.value = message.content;
  const save = button('save', 'Send', async () => {
    const text = box.value.trim();
    if (!text) return;
    cutFrom(view);
    await send(text, pathBefore(message));
  });
  const cancel = button('cancel', 'Cancel', () => { form.remove(); view.body.hidden = false; });
  const form = document.createElement('div');
  form.className = 'edit';
  form.append(box, save, cancel);
  view.body.hidden = true;
  view.el.append(form);
  box.focus();
}

async function rerun(view, message) {
  if (state.turn) return;
  const earlier = pathBefore(message);
  cutFrom(view);
  await send(null, earlier);
}

function markCurrent() {
  for (const li of els.sessions.children) li.classList.toggle('current', li.dataset.id === state.sessionId);
}

// One message: {el, body, content}. Stored statuses other than ok get a visible label.
function messageView({ role, content = '', model = '', status = 'ok', request_id: rid }) {
  const el = document.createElement('article');
  el.className = `message ${role}`;
  if (rid) el.dataset.requestId = rid;
  const head = document.createElement('header');
  head.textContent = role === 'assistant' ? model || 'assistant' : role;
  const body = document.createElement('div');
  body.className = 'body';
  el.append(head, body);
  const view = { el, head, body, content: content ?? '' };
  paint(view);
  if (status !== 'ok') mark(view, status === 'cancelled' ? 'stopped' : status);
  return view;
}

function paint(view) {
  view.body.innerHTML = render(view.content); // escaped by render(), see markdown.js
}

function mark(view, label, why = '') {
  const tag = document.createElement('span');
  tag.className = `status ${label}`;
  tag.textContent = why ? `${label}: ${why}` : label;
  view.head.append(tag);
}

function scrollDown(force = false) {
  const m = els.messages;
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 120) m.scrollTop = m.scrollHeight;
}

// --- sending a message ---------------------------------------------------------------------

function readOptions() {
  const text = els.options.value.trim();
  localStorage.setItem('chatbot.options', text);
  if (!text) return {};
  try {
    const options = JSON.parse(text);
    if (options && typeof options === 'object' && !Array.isArray(options)) return options;
  } catch { /* shown below */ }
  notify('Options must be a JSON object, e.g. {"temperature": 0.7}.', 'error');
  return null;
}

// `earlier`: an edit or a regenerate, sent as the whole conversation up to the new message
// (or, for a regenerate, `text` null: up to the reply), which the server makes a branch.
async function send(text, earlier = null) {
  const options = readOptions();
  if (options === null || state.turn) return;
  const model = els.model.value;
  localStorage.setItem('chatbot.model', model);
  const rid = api.requestId();
  const wasNew = !state.sessionId;
  if (text !== null) els.messages.append(messageView({ role: 'user', content: text }).el);
  const reply = messageView({ role: 'assistant', model, request_id: rid });
  reply.el.dataset.state = 'waiting';
  reply.badge = document.createElement('span');
  reply.badge.className = 'badge';
  reply.badge.textContent = 'sending…';
  reply.body.append(reply.badge);
  els.messages.append(reply.el);
  scrollDown(true);

  const turn = { rid, stopped: false, events: new AbortController(), chat: new AbortController() };
  let named; // the server names a new session after its first reply (AUTO_TITLES)
  const titled = new Promise((resolve) => { named = resolve; });
  state.turn = turn;
  busy(true);
  const started = () => {
    if (reply.el.dataset.state !== 'waiting') return;
    reply.el.dataset.state = 'streaming';
    reply.badge.remove();
  };
  // Subscribe to the request's events first, so that its first position is not missed.
  const subscribed = listen(rid, turn.events.signal, (event) => {
    if (event.type === 'queued' && reply.el.dataset.state === 'waiting') {
      reply.badge.textContent = `waiting: position ${event.data.position}`;
    } else if (event.type === 'started') {
      started();
    } else if (event.type === 'title') {
      named(event.data.title);
    }
  });
  await Promise.race([subscribed, sleep(3000)]);

  let sessionId = state.sessionId;
  const ending = (how, why = '') => {
    started();
    reply.el.dataset.state = how;
    if (how !== 'done') mark(reply, how, why);
  };
  try {
    // Resumable: a dropped connection (a phone changing networks) picks the reply up again.
    const said = text === null ? [] : [{ role: 'user', content: text }];
    const body = { model, messages: [...(earlier || []), ...said], stream: true, options,
      resumable: true };
    if (earlier) body.branch = true;
    if (sessionId) body.session_id = sessionId;
    const resp = await api.call('/api/chat', { method: 'POST', body, headers: { 'X-Request-ID': rid },
      signal: turn.chat.signal });
    sessionId = resp.headers.get('X-Session-ID') || sessionId;
    if (sessionId && reply.el.isConnected) { // still on screen: another session was not opened
      state.sessionId = sessionId;
      history.replaceState(null, '', `#${sessionId}`);
    }
    if (!resp.ok) {
      const error = (await resp.json().catch(() => ({}))).error || resp.statusText;
      ending(turn.stopped ? 'stopped' : 'error', turn.stopped ? '' : error);
    } else {
      const chunks = api.resumableChunks(resp, { rid: resp.headers.get('X-Request-ID') || rid,
        signal: turn.chat.signal, onRetry: () => { reply.el.dataset.reconnecting = 'true'; } });
      for await (const chunk of chunks) {
        delete reply.el.dataset.reconnecting;
        if (chunk.error) {
          ending(turn.stopped ? 'stopped' : 'error', turn.stopped ? '' : chunk.error);
          break;
        }
        started();
        if (chunk.message?.content) {
          reply.content += chunk.message.content;
          paint(reply);
          scrollDown();
        }
        if (chunk.done) ending('done');
      }
    }
  } catch (error) {
    ending(turn.stopped ? 'stopped' : 'error', turn.stopped ? '' : error.message);
    if (error instanceof api.Unauthorized) throw error;
  } finally {
    if (!wasNew) turn.events.abort(); // a new session's title may still come
    state.turn = null;
    busy(false);
  }
  if (sessionId) await afterTurn(sessionId, wasNew, text, reply.el.isConnected, titled);
  turn.events.abort();
  // Shown again from the server after a branch; else the new messages get their controls.
  if (sessionId && reply.el.isConnected) await (earlier ? openSession : attachControls)(sessionId);
}

// Resolves once the server has subscribed us (its first comment); events go to `handle`.
function listen(rid, signal, handle) {
  return new Promise((resolve) => {
    (async () => {
      const resp = await api.call(`/api/events?channel=${rid}`, { signal });
      if (!resp.ok) return;
      for await (const event of api.events(resp)) {
        if (event.type === 'comment') resolve();
        else handle(event);
      }
    })().catch(() => {}).finally(resolve); // no events: the reply still comes, without a badge
  });
}

async function stop() {
  const turn = state.turn;
  if (!turn || turn.stopped) return;
  turn.stopped = true;
  const cancel = () => api.call(`/api/queue/${turn.rid}`, { method: 'DELETE' }).catch(() => null);
  // Not admitted yet: ask once more. Hanging up alone would not do, as the reply is
  // resumable: the server would keep it going for its grace period.
  let resp = await cancel();
  if (!resp?.ok) resp = await sleep(500).then(cancel);
  setTimeout(() => turn.chat.abort(), resp?.ok ? 5000 : 0);
}

async function afterTurn(sessionId, wasNew, text, shown, titled) {
  // A new session: the server names it (AUTO_TITLES) within a few seconds, else it is named
  // after its first message.
  const named = wasNew && AUTO_TITLES && await Promise.race([titled, sleep(TITLE_WAIT_MS)]);
  if (wasNew && !named && !(await api.json(`/api/sessions/${sessionId}?per_page=1`)).title) {
    const title = text.replace(/\s+/g, ' ').trim();
    await api.json(`/api/sessions/${sessionId}`, { method: 'PATCH',
      body: { title: title.length > 60 ? `${title.slice(0, 59)}…` : title } }).catch(() => {});
  }
  if (!shown) return loadSessions();
  const info = await api.json(`/api/sessions/${sessionId}?per_page=1`);
  els.sessionTitle.textContent = titleOf(info);
  els.exportMd.disabled = els.exportJson.disabled = false;
  const truncations = info.meta?.truncations || 0;
  if (truncations > state.truncations) {
    const dropped = info.meta.last_truncation?.dropped;
    notify(`The conversation no longer fits the model's context window: ${dropped ?? 'some'} ` +
      'earlier messages were not sent with this one (they are still stored).', 'truncated');
    scrollDown(true);
  }
  state.truncations = truncations;
  await loadSessions();
}

function busy(on) {
  els.stop.hidden = !on;
  els.send.disabled = on;
}

async function exportAs(format) {
  const resp = await api.call(`/api/sessions/${state.sessionId}/export?format=${format}`);
  if (!resp.ok) throw new Error((await resp.json().catch(() => ({}))).error || resp.statusText);
  const link = document.createElement('a');
  link.href = URL.createObjectURL(await resp.blob());
  link.download = `chat-${state.sessionId.slice(0, 8)}.${format === 'json' ? 'json' : 'md'}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// --- wiring --------------------------------------------------------------------------------

els.composer.addEventListener('submit', guard(async (e) => {
  e.preventDefault();
  const text = els.prompt.value;
  if (!text.trim() || state.turn) return;
  els.prompt.value = '';
  await send(text);
}));
els.prompt.addEventListener('keydown', (e) => { // Enter sends, Shift+Enter is a new line
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.composer.requestSubmit();
  }
});
els.stop.addEventListener('click', guard(stop));
els.newChat.addEventListener('click', newChat);
els.moreSessions.addEventListener('click', guard(() => loadSessions(true)));
els.showArchived.addEventListener('change', guard(() => loadSessions()));
let searching;
els.search.addEventListener('input', () => {
  clearTimeout(searching);
  searching = setTimeout(guard(() => loadSessions()), 250);
});
els.exportMd.addEventListener('click', guard(() => exportAs('markdown')));
els.exportJson.addEventListener('click', guard(() => exportAs('json')));
els.noticeClose.addEventListener('click', () => { els.notice.hidden = true; });
els.openSidebar.addEventListener('click', () => document.body.classList.add('sidebar-open'));
els.closeSidebar.addEventListener('click', () => document.body.classList.remove('sidebar-open'));
els.forgetKey.addEventListener('click', () => {
  api.key.clear();
  newChat();
  els.sessions.replaceChildren();
  els.keyBox.hidden = true;
  askKey();
});
els.keyDialog.addEventListener('cancel', (e) => e.preventDefault()); // a key is needed
els.keyForm.addEventListener('submit', guard(async (e) => {
  e.preventDefault();
  api.key.set(els.key.value.trim());
  els.keyDialog.close();
  await boot();
}));
window.addEventListener('hashchange', guard(() => {
  const id = location.hash.slice(1);
  if (id && id !== state.sessionId) return openSession(id);
}));
els.options.value = localStorage.getItem('chatbot.options') || '';
guard(boot)();

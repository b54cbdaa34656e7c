// The chat page: logs in with the JS client, lists conversations (direct
// and rooms) with unread counts, shows each sent message as sending until
// the server answers OK SENT, and the connection state at the top.
import { Client } from '/switchboard.js';

const $ = (id) => document.getElementById(id);
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
const wsUrl = `${scheme}://${location.host}/ws`;

/** @type {Client|null} */
let client = null;
let me = '';
/** conversation key ('@user' or '#room') -> { li, box, unread } */
const conversations = new Map();
let active = null;
const seenIds = new Set();

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function setStatus(state) {
  const s = $('status');
  s.textContent = state;
  s.className = `status ${state}`;
}

function conversation(key) {
  let c = conversations.get(key);
  if (c) return c;
  const li = el('li', { 'data-testid': 'conversation', 'data-key': key });
  li.append(el('span', {}, key), el('span', { class: 'unread', 'data-testid': 'unread' }, ''));
  li.addEventListener('click', () => select(key));
  $('conversations').append(li);
  const box = el('div', { class: 'conv', 'data-key': key });
  box.hidden = true;
  $('messages').append(box);
  c = { li, box, unread: 0 };
  conversations.set(key, c);
  if (!active) select(key);
  return c;
}

function select(key) {
  active = key;
  for (const [k, c] of conversations) {
    const on = k === key;
    c.li.classList.toggle('active', on);
    c.box.hidden = !on;
    if (on) {
      c.unread = 0;
      c.li.querySelector('.unread').textContent = '';
    }
  }
  $('title').textContent = key.startsWith('#') ? `Room ${key}` : `With ${key.slice(1)}`;
  $('peer').value = key.startsWith('#') ? key : key.slice(1);
  $('text').focus();
}

function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** Renders a message into its conversation; returns the element. */
function render(key, { from, text, ts, seq, id, state }) {
  const c = conversation(key);
  const mine = from === me;
  const m = el('div', {
    class: mine ? 'msg mine' : 'msg',
    'data-testid': 'message',
    'data-from': from,
    'data-seq': seq ?? '',
    'data-id': id ?? '',
    'data-state': state,
  });
  const meta = el('span', { class: 'meta' }, `${from} · ${time(ts)}${seq ? ` · #${seq}` : ''}`);
  if (mine) meta.append(el('span', { class: 'state', 'data-testid': 'message-state' }, state ?? ''));
  m.append(meta, el('span', { class: 'body' }, text));
  c.box.append(m);
  if (key !== active) {
    c.unread += 1;
    c.li.querySelector('.unread').textContent = String(c.unread);
  } else {
    $('messages').scrollTop = $('messages').scrollHeight;
  }
  return m;
}

function onMessage(m) {
  if (m.id && seenIds.has(m.id)) return;
  if (m.id) seenIds.add(m.id);
  let key;
  if (m.kind === 'room') key = `#${m.room}`;
  else if (m.kind === 'all') key = '#everyone';
  else key = `@${m.from === me ? m.to : m.from}`;
  render(key, { ...m, state: m.from === me ? 'stored' : 'received' });
}

function roomsKey() {
  return `switchboard.rooms.${me}`;
}

function savedRooms() {
  try {
    return JSON.parse(localStorage.getItem(roomsKey()) ?? '[]').filter((r) => typeof r === 'string');
  } catch {
    return [];
  }
}

async function joinRoom(room) {
  await client.join(room);
  const rooms = new Set(savedRooms());
  rooms.add(room);
  localStorage.setItem(roomsKey(), JSON.stringify([...rooms]));
  conversation(`#${room}`);
  for (const m of await client.history(room)) onMessage(m);
}

async function login(ev) {
  ev.preventDefault();
  const user = $('login-user').value.trim();
  const token = $('login-token').value.trim() || undefined;
  $('login-error').textContent = '';
  $('login-submit').disabled = true;
  client = new Client({ url: wsUrl, user, token, history: true });
  client.on('state', setStatus);
  client.on('server', (url) => ($('server').textContent = `server ${url}`));
  client.on('message', onMessage);
  client.on('gap', (g) => ($('compose-error').textContent = `messages ${g.from}-${g.to} cannot be replayed: ${g.reason}`));
  client.on('error', (e) => ($('compose-error').textContent = e.message));
  try {
    await client.connect();
  } catch (e) {
    if (e.code === 'auth' || e.code === 'syntax') {
      client.close();
      $('login-error').textContent = e.message;
      $('login-submit').disabled = false;
      return;
    }
    // Not reachable yet: the client keeps trying (the status says so).
  }
  me = user;
  $('me').textContent = user;
  $('login').hidden = true;
  $('chat').hidden = false;
  for (const room of savedRooms()) joinRoom(room).catch((e) => ($('compose-error').textContent = e.message));
}

async function send(ev) {
  ev.preventDefault();
  const to = $('peer').value.trim();
  const text = $('text').value;
  if (!to || !text.trim()) return;
  $('text').value = '';
  $('compose-error').textContent = '';
  const room = to.startsWith('#') ? to.slice(1) : null;
  const key = room ? `#${room}` : `@${to}`;
  conversation(key);
  select(key);
  const m = render(key, { from: me, text, ts: Date.now(), seq: null, id: null, state: 'sending' });
  const state = m.querySelector('.state');
  try {
    if (room) {
      if (!client.rooms.has(room)) await joinRoom(room);
      const r = await client.publish(room, text);
      seenIds.add(r.id);
      m.dataset.id = r.id;
    } else {
      const r = await client.send(to, text);
      seenIds.add(r.id);
      m.dataset.id = r.id;
      m.dataset.seq = String(r.seq);
    }
    m.dataset.state = 'stored';
    state.textContent = 'stored';
  } catch (e) {
    m.dataset.state = 'failed';
    state.textContent = `failed: ${e.message}`;
  }
}

$('login').addEventListener('submit', login);
$('compose').addEventListener('submit', send);
$('join').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const room = $('join-room').value.trim();
  $('join-room').value = '';
  if (room) joinRoom(room).then(() => select(`#${room}`)).catch((e) => ($('compose-error').textContent = e.message));
});

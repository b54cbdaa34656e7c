// The relay dashboard: polls /servers, /metrics and /purges every second and
// redraws. Rates are the change of the relay's counters between two polls.
const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
let previous = null;

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Sums every sample of an OpenMetrics counter family (all label sets). */
function counter(text, name) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = line.match(/^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$/);
    if (m && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

function ago(ms) {
  if (ms === null || ms === undefined) return '-';
  return ms < 1000 ? `${ms} ms ago` : `${(ms / 1000).toFixed(1)} s ago`;
}

function drawServers(servers) {
  const body = $('servers');
  body.replaceChildren();
  for (const s of servers) {
    const tr = el('tr', { 'data-testid': 'dashboard-server', 'data-id': s.id, 'data-link': s.link });
    const conns = el('td', {}, `${s.connections ?? '-'} / ${s.cap ?? '-'}`);
    if (s.cap) {
      const pct = Math.min(100, Math.round((100 * (s.connections ?? 0)) / s.cap));
      conns.append(el('span', { class: 'bar', style: null, 'data-pct': pct }));
      conns.lastChild.style.width = `${Math.max(2, pct)}px`;
    }
    tr.append(
      el('td', {}, s.id),
      el('td', {}, s.ws ?? '-'),
      el('td', {}, s.tcp ?? '-'),
      conns,
      el('td', { class: s.link === 'up' ? 'up' : 'down' }, s.link),
      el('td', {}, ago(s.seen_ms_ago)),
    );
    body.append(tr);
  }
}

function drawPurges(purges) {
  const body = $('purges');
  body.replaceChildren();
  for (const p of purges) {
    body.append(
      el('tr', { 'data-testid': 'dashboard-purge', 'data-server': p.server }, undefined),
    );
    body.lastChild.append(
      el('td', {}, new Date(p.at_ms).toLocaleTimeString()),
      el('td', {}, p.server),
      el('td', {}, p.epoch ?? '-'),
      el('td', {}, p.sessions),
      el('td', {}, p.time_to_purge_ms === null ? '-' : `${(p.time_to_purge_ms / 1000).toFixed(2)} s`),
      el('td', {}, p.cause),
    );
  }
}

async function poll() {
  try {
    const [servers, metrics, purges] = await Promise.all([
      fetch('/servers').then((r) => r.json()),
      fetch('/metrics').then((r) => r.text()),
      fetch('/purges').then((r) => r.json()),
    ]);
    const now = performance.now();
    const routed = counter(metrics, 'relay_frames_forwarded_total');
    const dropped = counter(metrics, 'relay_frames_dropped_total');
    if (previous) {
      const secs = (now - previous.at) / 1000;
      $('routed').textContent = ((routed - previous.routed) / secs).toFixed(1);
      $('dropped').textContent = ((dropped - previous.dropped) / secs).toFixed(1);
    }
    previous = { at: now, routed, dropped };
    $('links').textContent = String(counter(metrics, 'relay_links'));
    $('purges-total').textContent = String(counter(metrics, 'relay_purges_total'));
    drawServers(servers);
    drawPurges(purges);
    $('error').textContent = '';
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $('error').textContent = `relay unreachable: ${e.message}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();

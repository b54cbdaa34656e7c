// What the servers give a browser, over plain HTTP: the chat page and its
// policy, the client module, /servers with CORS, the relay's dashboard and
// /purges.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startCluster, waitFor } from './cluster.mjs';

let cluster;
before(async () => {
  cluster = await startCluster({ servers: ['a', 'b', 'c'] });
});
after(async () => cluster?.stop());

function policy(res) {
  const csp = res.headers.get('content-security-policy') ?? '';
  return Object.fromEntries(csp.split(';').map((d) => d.trim().split(/\s+/)).map(([k, ...v]) => [k, v]));
}

test('the chat page is served with a strict Content-Security-Policy', async () => {
  const res = await fetch(`${cluster.httpUrl('a')}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  const html = await res.text();
  assert.match(html, /data-testid="login-user"/);
  assert.doesNotMatch(html, /<script>(?!<)/, 'no inline script');
  assert.doesNotMatch(html, /https?:\/\/(?!127)/, 'nothing from another site');
  const p = policy(res);
  assert.deepEqual(p['default-src'], ["'none'"]);
  assert.deepEqual(p['script-src'], ["'self'"]);
  assert.deepEqual(p['style-src'], ["'self'"]);
  // This server, and the other servers with room, for the client to move to.
  for (const id of ['a', 'b', 'c']) assert.ok(p['connect-src'].includes(`ws://127.0.0.1:${cluster.servers[id].ws}`), `${id} in ${p['connect-src']}`);
  const js = await fetch(`${cluster.httpUrl('a')}/switchboard.js`);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  assert.match(await js.text(), /export class Client/);
});

test('GET /servers lists the servers with room, this one first, with CORS', async () => {
  const res = await fetch(`${cluster.httpUrl('b')}/servers`);
  assert.equal(res.headers.get('access-control-allow-origin'), '*');
  const body = await res.json();
  assert.equal(body.server, 'b');
  assert.equal(body.servers[0].id, 'b');
  assert.deepEqual(body.servers.map((s) => s.id).sort(), ['a', 'b', 'c']);
  for (const s of body.servers) assert.equal(s.ws, `127.0.0.1:${cluster.servers[s.id].ws}`);
});

test('the relay dashboard is served, and /purges records a killed server with its time to purge', async () => {
  const res = await fetch(`${cluster.adminUrl()}/`);
  assert.equal(res.status, 200);
  assert.match(await res.text(), /dashboard\.js/);
  assert.deepEqual(policy(res)['connect-src'], ["'self'"]);
  await cluster.kill('c');
  const purges = await waitFor('the purge of c', async () => {
    const list = await (await fetch(`${cluster.adminUrl()}/purges`)).json();
    return list.some((p) => p.server === 'c') && list;
  });
  const c = purges.find((p) => p.server === 'c');
  assert.equal(c.cause, 'death');
  assert.ok(c.time_to_purge_ms > 0 && c.time_to_purge_ms < 10000, `time to purge ${c.time_to_purge_ms} ms`);
  const servers = await (await fetch(`${cluster.adminUrl()}/servers`)).json();
  assert.deepEqual(servers.map((s) => s.id), ['a', 'b']);
});

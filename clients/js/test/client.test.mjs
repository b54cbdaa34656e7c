// The JS client against a real cluster (Redis, the relay, two message
// servers as processes). Run: node --experimental-websocket --test (Node 20)
// or node --test (Node 22+), after building the binaries.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client, AuthError, SwitchboardError, Backoff, parseTextPush } from '../switchboard.js';
import { createServer, connect } from 'node:net';

import { startCluster, waitFor, freePort } from './cluster.mjs';

/**
 * A TCP proxy to `port` whose open connections can be frozen: bytes stop
 * flowing both ways without a FIN or RST, as when a network goes silent.
 * New connections still pass.
 */
async function freezableProxy(port) {
  const listen = await freePort();
  const pairs = [];
  const server = createServer((down) => {
    const up = connect(port, '127.0.0.1');
    const pair = { down, up, frozen: false };
    pairs.push(pair);
    down.on('data', (d) => pair.frozen || up.write(d));
    up.on('data', (d) => pair.frozen || down.write(d));
    const end = () => {
      down.destroy();
      up.destroy();
    };
    down.on('error', end).on('close', () => pair.frozen || end());
    up.on('error', end).on('close', () => pair.frozen || end());
  });
  await new Promise((res) => server.listen(listen, '127.0.0.1', res));
  return {
    url: `ws://127.0.0.1:${listen}/ws`,
    freeze: () => pairs.forEach((p) => (p.frozen = true)),
    close: () => {
      server.close();
      for (const p of pairs) {
        p.down.destroy();
        p.up.destroy();
      }
    },
  };
}

let cluster;
const clients = [];

before(async () => {
  cluster = await startCluster({ servers: ['a', 'b'] });
});

after(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

/** A WebSocket that records the ops the client sends. */
class RecordingWebSocket extends WebSocket {
  static sent = [];
  send(data) {
    RecordingWebSocket.sent.push(JSON.parse(data));
    super.send(data);
  }
}

/**
 * A WebSocket that loses the first incoming frame carrying the text
 * `LossyWebSocket.drop`, as a frame lost in transit would be.
 */
class LossyWebSocket extends RecordingWebSocket {
  static drop = null;
  set onmessage(fn) {
    super.onmessage = fn && ((ev) => {
      const drop = LossyWebSocket.drop;
      if (drop !== null && typeof ev.data === 'string' && ev.data.includes(`"text":${JSON.stringify(drop)}`)) {
        LossyWebSocket.drop = null;
        return;
      }
      fn(ev);
    });
  }
  get onmessage() {
    return super.onmessage;
  }
}

function client(opts) {
  const c = new Client({ backoffMs: 100, maxBackoffMs: 1000, ...opts });
  c.received = [];
  c.states = [];
  c.on('message', (m) => c.received.push(m));
  c.on('state', (s) => c.states.push(s));
  clients.push(c);
  return c;
}

const unique = (name) => `${name}${Math.random().toString(36).slice(2, 8)}`;

test('send is resolved at OK SENT with msg-id and seq, and the message reaches the other server', async () => {
  const [a, b] = [unique('alice'), unique('bob')];
  const alice = client({ url: cluster.wsUrl('a'), user: a });
  const bob = client({ url: cluster.wsUrl('b'), user: b });
  await alice.connect();
  await bob.connect();
  const sent = await alice.send(b, 'hello bob');
  assert.match(sent.id, /\S/);
  assert.equal(sent.seq, 1);
  const got = await waitFor('bob to receive', () => bob.received.find((m) => m.id === sent.id));
  assert.deepEqual([got.kind, got.from, got.to, got.seq, got.text], ['direct', a, b, 1, 'hello bob']);
  const reply = await bob.send(a, 'hi alice');
  const back = await waitFor('alice to receive', () => alice.received.find((m) => m.id === reply.id));
  assert.deepEqual([back.from, back.seq, back.text], [b, reply.seq, 'hi alice']);
  // Seq 1 of alice's inbox is her own message: not an event for the client
  // that sent it, but one for her other device.
  assert.equal(back.seq, 2);
  assert.deepEqual(alice.received.map((m) => m.text), ['hi alice']);
  const phone = client({ url: cluster.wsUrl('b'), user: a, device: 'phone', history: true });
  await phone.connect();
  await waitFor('her other device to replay her inbox', () => phone.received.length === 2);
  assert.deepEqual(phone.received.map((m) => [m.seq, m.from, m.text]), [[1, a, 'hello bob'], [2, b, 'hi alice']]);
});

test('rooms: join, publish, history', async () => {
  const room = unique('lobby');
  const [a, b] = [unique('al'), unique('bo')];
  const alice = client({ url: cluster.wsUrl('a'), user: a });
  const bob = client({ url: cluster.wsUrl('b'), user: b });
  await alice.connect();
  await bob.connect();
  await bob.join(room);
  await alice.join(room);
  const { id } = await alice.publish(room, 'hi room');
  const got = await waitFor('bob to get the room message', () => bob.received.find((m) => m.id === id));
  assert.deepEqual([got.kind, got.room, got.from, got.text], ['room', room, a, 'hi room']);
  const history = await bob.history(room);
  assert.deepEqual(history.map((m) => m.text), ['hi room']);
  assert.equal(history[0].from, a);
  const who = await alice.who(b);
  assert.equal(who.online, true);
});

test('a bad command is a typed error and the session lives on', async () => {
  const alice = client({ url: cluster.wsUrl('a'), user: unique('al') });
  await alice.connect();
  await assert.rejects(alice.send('not a name', 'x'), (e) => e instanceof SwitchboardError && e.code === 'syntax');
  const who = await alice.who('nobody-here');
  assert.equal(who.online, false);
  // A name the server refuses: no point retrying.
  const bad = client({ url: cluster.wsUrl('a'), user: 'two words' });
  bad.on('error', () => {});
  await assert.rejects(bad.connect(), (e) => e instanceof SwitchboardError && e.code === 'syntax');
  assert.equal(bad.state, 'closed');
});

test('kill -9 of the recipient\'s server: the client reconnects, resumes, nothing lost or doubled', async () => {
  const [a, b] = [unique('alice'), unique('bob')];
  const alice = client({ url: cluster.wsUrl('a'), user: a });
  const bob = client({ url: cluster.wsUrl('b'), user: b });
  await alice.connect();
  await bob.connect();
  await alice.send(b, 'before 1');
  await alice.send(b, 'before 2');
  await waitFor('bob to get the first two', () => bob.received.length === 2);
  await cluster.kill('b');
  await waitFor('bob to see the connection lost', () => bob.states.includes('reconnecting'));
  const during = [];
  for (let i = 1; i <= 5; i++) during.push(await alice.send(b, `during ${i}`));
  await cluster.start('b');
  await waitFor('bob to be connected again', () => bob.state === 'connected', 30000);
  await waitFor('bob to get all 7', () => bob.received.length >= 7, 20000);
  // A moment for any duplicate to show up.
  await alice.send(b, 'after');
  await waitFor('bob to get the one after', () => bob.received.some((m) => m.text === 'after'));
  const texts = bob.received.map((m) => m.text);
  assert.deepEqual(texts, ['before 1', 'before 2', 'during 1', 'during 2', 'during 3', 'during 4', 'during 5', 'after']);
  assert.deepEqual(bob.received.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(during.map((s) => s.seq), [3, 4, 5, 6, 7]);
});

test('a send while the sender\'s server is down is sent again after the reconnect and stored once', async () => {
  const [a, b] = [unique('alice'), unique('bob')];
  const alice = client({ url: cluster.wsUrl('a'), user: a });
  const bob = client({ url: cluster.wsUrl('b'), user: b });
  await alice.connect();
  await bob.connect();
  await cluster.kill('a');
  await waitFor('alice to see the connection lost', () => alice.state === 'reconnecting');
  const pending = alice.send(b, 'queued while down');
  await cluster.start('a');
  const sent = await pending;
  assert.equal(sent.seq, 1);
  await waitFor('bob to get it', () => bob.received.length === 1);
  await alice.send(b, 'next');
  await waitFor('bob to get the next', () => bob.received.length === 2);
  assert.deepEqual(bob.received.map((m) => [m.seq, m.text]), [[1, 'queued while down'], [2, 'next']]);
});

test('a message stored while the relay is down is pushed once it is back, without the client asking', async () => {
  const [a, b] = [unique('alice'), unique('bob')];
  const alice = client({ url: cluster.wsUrl('a'), user: a });
  const bob = client({ url: cluster.wsUrl('b'), user: b, WebSocket: RecordingWebSocket });
  await alice.connect();
  await bob.connect();
  await alice.send(b, 'one');
  await waitFor('bob to get one', () => bob.received.length === 1);
  RecordingWebSocket.sent = [];
  await cluster.relay.kill('SIGKILL');
  // Stored in bob's inbox; its push has no way to server b yet.
  await alice.send(b, 'two');
  await cluster.startRelay();
  await waitFor('bob to get two', () => bob.received.length === 2, 10000);
  await alice.send(b, 'three');
  await waitFor('bob to get three', () => bob.received.length === 3);
  assert.deepEqual(bob.received.map((m) => [m.seq, m.text]), [[1, 'one'], [2, 'two'], [3, 'three']]);
  const syncs = RecordingWebSocket.sent.filter((op) => op.op === 'sync');
  assert.deepEqual(syncs, [], 'the server pushed it: bob did not have to ask');
});

test('a push lost in transit shows as a gap and is fetched with SYNC, in order', async () => {
  const [a, b] = [unique('alice'), unique('bob')];
  RecordingWebSocket.sent = [];
  const alice = client({ url: cluster.wsUrl('a'), user: a });
  const bob = client({ url: cluster.wsUrl('b'), user: b, WebSocket: LossyWebSocket });
  await alice.connect();
  await bob.connect();
  await alice.send(b, 'one');
  await waitFor('bob to get one', () => bob.received.length === 1);
  LossyWebSocket.drop = 'two';
  await alice.send(b, 'two');
  await alice.send(b, 'three');
  await waitFor('bob to get two and three', () => bob.received.length === 3);
  assert.equal(LossyWebSocket.drop, null, 'the push of two was lost on the way');
  assert.deepEqual(bob.received.map((m) => [m.seq, m.text]), [[1, 'one'], [2, 'two'], [3, 'three']]);
  const syncs = RecordingWebSocket.sent.filter((op) => op.op === 'sync');
  assert.ok(syncs.some((op) => op.after === 1), `a SYNC after seq 1 was sent: ${JSON.stringify(syncs)}`);
});

test('a connection gone silent is found by PING and replaced; nothing is lost', async () => {
  const proxy = await freezableProxy(cluster.servers.b.ws);
  try {
    const [a, b] = [unique('alice'), unique('bob')];
    const alice = client({ url: cluster.wsUrl('a'), user: a });
    const bob = client({ url: proxy.url, user: b, pingIntervalMs: 300, requestTimeoutMs: 1500 });
    await alice.connect();
    await bob.connect();
    await alice.send(b, 'one');
    await waitFor('bob to get one', () => bob.received.length === 1);
    proxy.freeze();
    await alice.send(b, 'two');
    await waitFor('bob to notice the silence and reconnect', () => bob.states.includes('reconnecting'), 10000);
    await waitFor('bob to be connected again', () => bob.state === 'connected', 10000);
    await waitFor('bob to get two', () => bob.received.length === 2);
    assert.deepEqual(bob.received.map((m) => [m.seq, m.text]), [[1, 'one'], [2, 'two']]);
  } finally {
    proxy.close();
  }
});

test('a full server: the client finds a server with room through GET /servers', async () => {
  const full = await startCluster({ servers: ['a', 'b'], serverArgs: { a: ['--max-connections', '1'] } });
  try {
    const first = new Client({ url: full.wsUrl('a'), user: unique('first') });
    await first.connect();
    await waitFor('a to drop out of the list of servers with room', async () => {
      const body = await (await fetch(`${full.httpUrl('a')}/servers`)).json();
      return body.servers.every((s) => s.id !== 'a');
    });
    const second = new Client({ url: full.wsUrl('a'), user: unique('second') });
    await second.connect();
    assert.equal(second.server, full.wsUrl('b'));
    const res = await fetch(`${full.httpUrl('a')}/servers`);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    first.close();
    second.close();
  } finally {
    await full.stop();
  }
});

test('a refused token rejects connect with AuthError and stops retrying', async () => {
  const secured = await startCluster({ servers: ['a'], tokenSecret: 'a-test-secret-of-some-length-0123456789' });
  try {
    const c = new Client({ url: secured.wsUrl('a'), user: 'mallory', token: 'forged.token.value', backoffMs: 50 });
    const states = [];
    c.on('state', (s) => states.push(s));
    c.on('error', () => {});
    await assert.rejects(c.connect(), (e) => e instanceof AuthError && e.code === 'auth');
    assert.equal(c.state, 'closed');
    const noToken = new Client({ url: secured.wsUrl('a'), user: 'mallory' });
    noToken.on('error', () => {});
    await assert.rejects(noToken.connect(), AuthError);
    assert.ok(!states.includes('reconnecting'), `no retry after a refused token: ${states}`);
  } finally {
    await secured.stop();
  }
});

test('backoff doubles with equal jitter up to its maximum', () => {
  const b = new Backoff(100, 400);
  assert.deepEqual([b.next(1), b.next(0), b.next(1), b.next(1)], [100, 100, 400, 400]);
  b.reset();
  assert.equal(b.next(0), 50);
});

test('text pushes parse, including a TELL (seq -)', () => {
  assert.deepEqual(parseTextPush('MSG 9 alice bob m1 1700 hi there'), {
    kind: 'direct', seq: 9, from: 'alice', to: 'bob', room: null, id: 'm1', ts: 1700, text: 'hi there',
  });
  assert.equal(parseTextPush('MSG - alice bob m2 1700 psst').kind, 'tell');
  assert.equal(parseTextPush('MSG - alice bob m2 1700 psst').seq, null);
  assert.equal(parseTextPush('ROOM lobby al r1 5 a\\nb').text, 'a\nb');
  assert.equal(parseTextPush('OK SENT m1 4'), null);
});

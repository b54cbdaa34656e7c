// The chat page and the relay dashboard in headless Chromium against a real
// cluster (Redis, the relay, message servers as processes). Skipped, loudly,
// when there is no Chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startCluster, waitFor } from '../../clients/js/test/cluster.mjs';
import { chromiumPath, launch, chatPage, sendFrom } from './browser.mjs';

const chromium = chromiumPath();
if (!chromium) {
  console.error('\n*** SKIPPING the browser tests: no Chromium (apt-get install chromium, or set SB_CHROMIUM) ***\n');
}
const skip = chromium ? false : 'no Chromium installed';

let cluster;
let browser;

before(async () => {
  if (skip) return;
  cluster = await startCluster({ servers: ['a', 'b'] });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

const unique = (name) => `${name}${Math.random().toString(36).slice(2, 7)}`;

/** The rendered messages of a page: [from, seq, text, state]. */
function messages(page) {
  return page.getByTestId('message').evaluateAll((els) =>
    els.map((e) => [e.dataset.from, e.dataset.seq, e.querySelector('.body').textContent, e.dataset.state]),
  );
}

async function connected(page) {
  await waitFor('the page to show connected', async () => (await page.getByTestId('status').textContent()) === 'connected');
}

test('alice on server a and bob on server b talk through their pages', { skip }, async () => {
  const [a, b] = [unique('alice'), unique('bob')];
  const alice = await chatPage(browser, cluster.httpUrl('a'), a);
  const bob = await chatPage(browser, cluster.httpUrl('b'), b);
  await connected(alice);
  await connected(bob);

  await sendFrom(bob, a, 'hello alice');
  await waitFor('alice to see bob\'s message', async () => (await messages(alice)).length === 1);
  assert.deepEqual(await messages(alice), [[b, '1', 'hello alice', 'received']]);
  await waitFor('bob\'s message to be stored', async () => (await messages(bob))[0]?.[3] === 'stored');
  assert.deepEqual(await messages(bob), [[b, '1', 'hello alice', 'stored']]);

  await sendFrom(alice, b, 'hi bob');
  await waitFor('bob to see the reply', async () => (await messages(bob)).length === 2);
  // Seq 1 of bob's inbox is his own message to alice: her reply is 2.
  assert.deepEqual((await messages(bob))[1], [a, '2', 'hi bob', 'received']);
  await waitFor('alice\'s reply to be stored', async () => (await messages(alice))[1]?.[3] === 'stored');
  // The conversation is listed once on each side.
  assert.equal(await alice.locator(`[data-testid=conversation][data-key="@${b}"]`).count(), 1);
  assert.deepEqual(alice.problems, [], 'no console errors or CSP violations');

  // Alice logs in again elsewhere: the page shows the history of both sides.
  const again = await chatPage(browser, cluster.httpUrl('b'), a);
  await connected(again);
  await waitFor('the history on login', async () => (await messages(again)).length === 2);
  assert.deepEqual(await messages(again), [
    [b, '1', 'hello alice', 'received'],
    [a, '2', 'hi bob', 'stored'],
  ]);
  await again.context().close();
  await alice.context().close();
  await bob.context().close();
});

test('rooms: joined from the page, a message in a room not open shows as unread', { skip }, async () => {
  const [a, b, room] = [unique('alice'), unique('bob'), unique('lobby')];
  const alice = await chatPage(browser, cluster.httpUrl('a'), a);
  const bob = await chatPage(browser, cluster.httpUrl('b'), b);
  await connected(alice);
  await connected(bob);
  for (const p of [alice, bob]) {
    await p.getByTestId('join-room').fill(room);
    await p.getByTestId('join-submit').click();
    await waitFor('the room listed', async () => (await p.locator(`[data-testid=conversation][data-key="#${room}"]`).count()) === 1);
  }
  // Alice looks at another conversation.
  await sendFrom(alice, b, 'psst');
  await waitFor('stored', async () => (await messages(alice)).some((m) => m[3] === 'stored'));
  await sendFrom(bob, `#${room}`, 'hello room');
  const unread = alice.locator(`[data-testid=conversation][data-key="#${room}"] [data-testid=unread]`);
  await waitFor('an unread count on the room', async () => (await unread.textContent()) === '1');
  assert.ok((await messages(alice)).some((m) => m[0] === b && m[2] === 'hello room'));
  await alice.locator(`[data-testid=conversation][data-key="#${room}"]`).click();
  assert.equal(await unread.textContent(), '');
  // Bob's own room message is shown once on his page.
  assert.equal((await messages(bob)).filter((m) => m[2] === 'hello room').length, 1);
  await alice.context().close();
  await bob.context().close();
});

test('kill -9 of alice\'s server: her page shows reconnecting, then connected, and bob\'s messages appear once, in order', { skip }, async () => {
  const [a, b] = [unique('alice'), unique('bob')];
  const alice = await chatPage(browser, cluster.httpUrl('a'), a);
  const bob = await chatPage(browser, cluster.httpUrl('b'), b);
  await connected(alice);
  await connected(bob);
  await sendFrom(bob, a, 'before');
  await waitFor('alice to see the first', async () => (await messages(alice)).length === 1);

  await cluster.kill('a');
  await waitFor('alice\'s page to show reconnecting', async () => (await alice.getByTestId('status').textContent()) === 'reconnecting');
  for (const text of ['while down 1', 'while down 2', 'while down 3']) {
    await sendFrom(bob, a, text);
  }
  await waitFor('bob\'s three to be stored', async () => (await messages(bob)).filter((m) => m[3] === 'stored').length === 4);
  // Alice writes while her server is away: shown as sending until stored.
  await sendFrom(alice, b, 'queued by alice');
  await waitFor('alice\'s message to show sending', async () => (await messages(alice)).some((m) => m[2] === 'queued by alice' && m[3] === 'sending'));
  await cluster.start('a');
  await waitFor('alice\'s page to show connected again', async () => (await alice.getByTestId('status').textContent()) === 'connected', 30000);
  await waitFor('alice to see all four of bob\'s', async () => (await messages(alice)).filter((m) => m[0] === b).length >= 4);
  await waitFor('alice\'s queued message to be stored', async () => (await messages(alice)).some((m) => m[2] === 'queued by alice' && m[3] === 'stored'));
  await sendFrom(bob, a, 'after');
  await waitFor('alice to see the one after', async () => (await messages(alice)).some((m) => m[2] === 'after'));
  await waitFor('bob to get alice\'s queued message', async () => (await messages(bob)).some((m) => m[2] === 'queued by alice'));
  assert.deepEqual((await messages(bob)).filter((m) => m[0] === a), [[a, '5', 'queued by alice', 'received']]);
  assert.deepEqual((await messages(alice)).filter((m) => m[0] === b), [
    [b, '1', 'before', 'received'],
    [b, '2', 'while down 1', 'received'],
    [b, '3', 'while down 2', 'received'],
    [b, '4', 'while down 3', 'received'],
    [b, '6', 'after', 'received'],
  ]);
  await alice.context().close();
  await bob.context().close();
});

test('the dashboard lists both servers, and a killed server leaves the list within 5 s', { skip }, async (t) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  await page.goto(`${cluster.adminUrl()}/`);
  const ids = () => page.getByTestId('dashboard-server').evaluateAll((els) => els.map((e) => e.dataset.id));
  await waitFor('both servers listed', async () => JSON.stringify(await ids()) === '["a","b"]');
  assert.equal(await page.locator('[data-testid=dashboard-server][data-id=a]').getAttribute('data-link'), 'up');
  await waitFor('a rate to be shown', async () => (await page.getByTestId('rate-routed').textContent()) !== '-');

  await cluster.kill('b');
  const killed = Date.now();
  await waitFor('b to leave the list', async () => JSON.stringify(await ids()) === '["a"]', 10000);
  const took = Date.now() - killed;
  t.diagnostic(`b left the dashboard ${took} ms after kill -9`);
  assert.ok(took <= 5000, `b left the dashboard ${took} ms after kill -9 (limit 5000 ms)`);
  await waitFor('the purge of b to be listed', async () => (await page.locator('[data-testid=dashboard-purge][data-server=b]').count()) > 0);
  assert.deepEqual(problems, []);
  await cluster.start('b');
  await waitFor('b back in the list', async () => JSON.stringify(await ids()) === '["a","b"]');
  await context.close();
});

test('a full server: the page connects through a server with room', { skip }, async () => {
  const full = await startCluster({ servers: ['a', 'b'], serverArgs: { a: ['--max-connections', '1'] } });
  try {
    const [first, second] = [unique('first'), unique('second')];
    const p1 = await chatPage(browser, full.httpUrl('a'), first);
    await connected(p1);
    await waitFor('a to drop out of the servers with room', async () => {
      const body = await (await fetch(`${full.httpUrl('a')}/servers`)).json();
      return body.servers.every((s) => s.id !== 'a');
    });
    // The page is served by a (HTTP is not capped) but its WebSocket goes to b.
    const p2 = await chatPage(browser, full.httpUrl('a'), second);
    await connected(p2);
    assert.match(await p2.locator('#server').textContent(), new RegExp(`:${full.servers.b.ws}/ws`));
    await sendFrom(p2, first, 'found room elsewhere');
    await waitFor('the first page to get it', async () => (await messages(p1)).some((m) => m[2] === 'found room elsewhere'));
    assert.deepEqual(p2.problems.filter((p) => !/WebSocket|ERR_|503/.test(p)), [], 'no CSP violations');
    await p1.context().close();
    await p2.context().close();
  } finally {
    await full.stop();
  }
});

test('with tokens: a forged one is refused on the page, a signed one logs in', { skip }, async () => {
  const secured = await startCluster({ servers: ['a'], tokenSecret: 'a-browser-test-secret-0123456789' });
  try {
    const user = unique('tina');
    const forged = await chatPage(browser, secured.httpUrl('a'), user, 'forged.token.value');
    await waitFor('the refusal shown', async () => /auth/.test(await forged.locator('#login-error').textContent()));
    assert.equal(await forged.getByTestId('status').textContent(), 'closed');
    assert.equal(await forged.locator('#chat').isVisible(), false);
    await forged.context().close();

    const page = await chatPage(browser, secured.httpUrl('a'), user, secured.token(user));
    await connected(page);
    await page.context().close();
  } finally {
    await secured.stop();
  }
});

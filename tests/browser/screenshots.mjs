// Saves screenshots of the chat page and the relay dashboard under docs/img/
// (for the README). Not a test: run scripts/screenshots.
import { mkdirSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { startCluster, waitFor, sleep } from '../../clients/js/test/cluster.mjs';
import { launch, chatPage, sendFrom } from './browser.mjs';

const OUT = resolve(dirname(fileURLToPath(import.meta.url)), '../../docs/img');
mkdirSync(OUT, { recursive: true });

const cluster = await startCluster({ servers: ['a', 'b', 'c'] });
const browser = await launch();
try {
  const status = (p) => p.getByTestId('status').textContent();
  const alice = await chatPage(browser, cluster.httpUrl('a'), 'alice');
  const bob = await chatPage(browser, cluster.httpUrl('b'), 'bob');
  const carol = await chatPage(browser, cluster.httpUrl('b'), 'carol');
  for (const p of [alice, bob, carol]) await waitFor('connected', async () => (await status(p)) === 'connected');
  for (const p of [alice, bob]) {
    await p.getByTestId('join-room').fill('lobby');
    await p.getByTestId('join-submit').click();
  }
  await sendFrom(bob, '#lobby', 'standup in 5 minutes');
  await sendFrom(carol, 'alice', 'did the deploy go out?');
  await sendFrom(bob, 'alice', 'hi alice, lunch later?');
  await waitFor('alice to get both', async () => (await alice.getByTestId('message').count()) >= 3);
  await alice.locator('[data-testid=conversation][data-key="@bob"]').click();
  await sendFrom(alice, 'bob', 'sure, 12:30 at the usual place');
  await waitFor('stored', async () => (await alice.locator('[data-state=stored]').count()) >= 1);
  await sendFrom(bob, 'alice', 'great, see you there');
  await sleep(500);
  await alice.screenshot({ path: join(OUT, 'chat.png') });

  const dash = await (await browser.newContext({ viewport: { width: 1100, height: 560 } })).newPage();
  await dash.goto(`${cluster.adminUrl()}/`);
  await waitFor('three servers', async () => (await dash.getByTestId('dashboard-server').count()) === 3);
  await cluster.kill('c');
  await waitFor('the purge of c', async () => (await dash.getByTestId('dashboard-purge').count()) === 1);
  for (let i = 0; i < 20; i++) await sendFrom(bob, 'alice', `message ${i}`);
  await sleep(1500);
  await dash.screenshot({ path: join(OUT, 'dashboard.png') });
  console.log(`saved ${join(OUT, 'chat.png')} and ${join(OUT, 'dashboard.png')}`);
} finally {
  await browser.close();
  await cluster.stop();
}
